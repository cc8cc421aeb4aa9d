"""Malformed and hostile ONNX files, each written into a folder of its own as `model.onnx` (with
whatever files beside it the case needs). Every one looks like a classifier from outside
(input_ids and attention_mask in, logits out) where a graph is involved, so it gets as far as a
user's file would."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUTSIDE = "/etc/hostname"  # a file outside every package folder


def _io() -> tuple[list, list]:
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
              for n in ("input_ids", "attention_mask")]
    return inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])]


def _classifier(nodes: list, initializers: list | None = None, opset: int = 18, ir: int = 8,
                functions: list | None = None, domains: tuple[str, ...] = ()) -> onnx.ModelProto:
    inputs, outputs = _io()
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]
                              + [helper.make_opsetid(d, 1) for d in domains], functions=functions or [])
    model.ir_version = ir
    return model


def _logits_from(value: str) -> list:
    """Nodes turning any float tensor `value` into [batch, 2] logits that depend on it."""
    return [helper.make_node("ReduceSum", [value], ["total"], keepdims=0),
            helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["ids_f", "axis1"], ["row"], keepdims=1),
            helper.make_node("Concat", ["row", "row"], ["pair"], axis=1),
            helper.make_node("Add", ["pair", "total"], ["logits"])]


def _axis1() -> onnx.TensorProto:
    return numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")


def _save(model: onnx.ModelProto, folder: Path) -> Path:
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _external(folder: Path, location: str, extra: dict[str, str] | None = None, offset: int = 0,
              length: int = 8) -> Path:
    weight = numpy_helper.from_array(np.ones(2, dtype=np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": str(offset), "length": str(length), **(extra or {})}.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return _save(_classifier(_logits_from("w") , [weight, _axis1()]), folder)


def empty(folder: Path) -> Path:
    (folder / "model.onnx").write_bytes(b"")
    return folder / "model.onnx"


def truncated(folder: Path) -> Path:
    data = _classifier(_logits_from("w"), [numpy_helper.from_array(np.ones(4096, np.float32), "w"), _axis1()])
    raw = data.SerializeToString()
    (folder / "model.onnx").write_bytes(raw[: len(raw) // 2])
    return folder / "model.onnx"


def random_bytes(folder: Path) -> Path:
    (folder / "model.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    return folder / "model.onnx"


def text_file(folder: Path) -> Path:
    (folder / "model.onnx").write_text("<html><body>404 Not Found</body></html>\n")
    return folder / "model.onnx"


def external_parent(folder: Path) -> Path:
    return _external(folder, "../../x")


def external_absolute(folder: Path) -> Path:
    return _external(folder, OUTSIDE)


def external_symlink(folder: Path) -> Path:
    os.symlink(OUTSIDE, folder / "w.bin")
    return _external(folder, "w.bin")


def external_parent_symlink(folder: Path) -> Path:
    os.symlink("/etc", folder / "sub")
    return _external(folder, "sub/hostname")


def external_offset_past_end(folder: Path) -> Path:
    (folder / "w.bin").write_bytes(b"\0" * 8)
    return _external(folder, "w.bin", offset=1 << 20)


def external_extra_keys(folder: Path) -> Path:
    (folder / "w.bin").write_bytes(b"\0" * 8)
    return _external(folder, "w.bin", extra={"__class__": "x", "basepath": "/"})


def huge_declared_dims(folder: Path) -> Path:
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 31, 1 << 31], raw_data=b"\0" * 8)
    return _save(_classifier(_logits_from("w"), [weight, _axis1()]), folder)


def constant_of_shape_bomb(folder: Path) -> Path:
    shape = numpy_helper.from_array(np.array([1_000_000, 1_000_000], dtype=np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=numpy_helper.from_array(np.ones(1, np.float32)))] + _logits_from("big")
    return _save(_classifier(nodes, [shape, _axis1()]), folder)


def loop_bomb(folder: Path) -> Path:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    inits = [numpy_helper.from_array(np.array(1 << 62, dtype=np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "cond"),
             numpy_helper.from_array(np.zeros(1, np.float32), "acc0"), _axis1()]
    nodes = [helper.make_node("Loop", ["trips", "cond", "acc0"], ["acc"], body=body)] + _logits_from("acc")
    return _save(_classifier(nodes, inits), folder)


def _scalar(name: str, dtype: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, [])


def _body(prefix: str = "", cond: list | None = None, inner: list | None = None, adds: str = "acc_in") -> onnx.GraphProto:
    """A Loop body that adds one to a float accumulator (`{prefix}acc`), after the nodes `inner` (which
    may read `{prefix}acc_in` and write what `adds` names). Its condition output passes its input on
    (an Identity) unless `cond` computes `{prefix}cond_out`. Names are prefixed so bodies can nest."""
    p = prefix
    nodes = (cond or [helper.make_node("Identity", [f"{p}cond_in"], [f"{p}cond_out"])]) + (inner or []) + [
        helper.make_node("Add", [f"{p}{adds}", f"{p}one"], [f"{p}acc_out"])]
    return helper.make_graph(
        nodes, f"{p}body",
        [_scalar(f"{p}i", TensorProto.INT64), _scalar(f"{p}cond_in", TensorProto.BOOL),
         helper.make_tensor_value_info(f"{p}acc_in", TensorProto.FLOAT, [1])],
        [_scalar(f"{p}cond_out", TensorProto.BOOL), helper.make_tensor_value_info(f"{p}acc_out", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.ones(1, np.float32), f"{p}one")])


def _loop_model(nodes: list, inits: dict[str, np.ndarray], opset: int = 18) -> onnx.ModelProto:
    """A classifier whose logits depend on `acc`, with `acc0` (a float [1]) and the named constants."""
    tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in {"acc0": np.zeros(1, np.float32), **inits}.items()]
    return _classifier(nodes + _logits_from("acc"), tensors + [_axis1()], opset=opset)


def loop_bomb_in_if(folder: Path) -> Path:
    """The Loop bomb in an If's branch, its trip count (2^40) an initializer of the outer graph."""
    then = helper.make_graph([helper.make_node("Loop", ["trips", "", "acc0"], ["then_acc"], name="hidden",
                                               body=_body("t_"))], "then", [],
                             [helper.make_tensor_value_info("then_acc", TensorProto.FLOAT, [1])])
    other = helper.make_graph([helper.make_node("Identity", ["acc0"], ["else_acc"])], "else", [],
                              [helper.make_tensor_value_info("else_acc", TensorProto.FLOAT, [1])])
    nodes = [helper.make_node("ReduceSum", ["input_ids"], ["ids_sum"], keepdims=0),
             helper.make_node("Greater", ["ids_sum", "zero"], ["positive"]),
             helper.make_node("If", ["positive"], ["acc"], then_branch=then, else_branch=other)]
    return _save(_loop_model(nodes, {"trips": np.array(1 << 40, np.int64), "zero": np.array(0, np.int64)}), folder)


def loop_bomb_folded(folder: Path) -> Path:
    """A trip count of 2^62 made by Constant nodes and arithmetic, and a condition kept as Not(Not(c))."""
    cond = [helper.make_node("Not", ["cond_in"], ["flipped"]), helper.make_node("Not", ["flipped"], ["cond_out"])]
    nodes = [helper.make_node("Constant", [], ["half"], value_int=1 << 31),
             helper.make_node("Mul", ["half", "half"], ["product"]),
             helper.make_node("Cast", ["product"], ["trips"], to=TensorProto.INT64),
             helper.make_node("Loop", ["trips", "cond", "acc0"], ["acc"], name="folded", body=_body(cond=cond))]
    return _save(_loop_model(nodes, {"cond": np.array(True)}), folder)


def endless_loop(folder: Path) -> Path:
    """No trip count, and a condition that starts true and that the body passes on unchanged."""
    nodes = [helper.make_node("Loop", ["", "cond", "acc0"], ["acc"], name="forever", body=_body())]
    return _save(_loop_model(nodes, {"cond": np.array(True)}), folder)


def nested_loop_bomb(folder: Path) -> Path:
    """A Loop of 2^11 turns inside a Loop of 2^11 turns: each under the bound, 2^22 turns in all."""
    inner = [helper.make_node("Constant", [], ["o_inner_trips"], value_int=1 << 11),
             helper.make_node("Loop", ["o_inner_trips", "", "o_acc_in"], ["o_inner_acc"], name="inner",
                              body=_body("n_"))]
    nodes = [helper.make_node("Loop", ["trips", "cond", "acc0"], ["acc"], name="outer",
                              body=_body("o_", inner=inner, adds="inner_acc"))]
    return _save(_loop_model(nodes, {"trips": np.array(1 << 11, np.int64), "cond": np.array(True)}), folder)


def probe_loop_bomb(folder: Path) -> Path:
    """A Loop of 2^62 turns on the probe's feed whose trip count comes from the input's size (8 x 2^59):
    nothing the static checks can prove, so the probe's time limit refuses it."""
    nodes = [helper.make_node("Size", ["input_ids"], ["count"]), helper.make_node("Mul", ["count", "scale"], ["trips"]),
             helper.make_node("Loop", ["trips", "cond", "acc0"], ["acc"], name="sized", body=_body())]
    return _save(_loop_model(nodes, {"scale": np.array(1 << 59, np.int64), "cond": np.array(True)}), folder)


def small_loop(folder: Path) -> Path:
    """Well-behaved: a constant trip count of 10, the condition passed on. Not in CASES."""
    nodes = [helper.make_node("Loop", ["trips", "cond", "acc0"], ["acc"], name="ten", body=_body())]
    return _save(_loop_model(nodes, {"trips": np.array(10, np.int64), "cond": np.array(True)}), folder)


def while_loop(folder: Path) -> Path:
    """Well-behaved: torch.onnx's `while` loop, a trip count of 2^63 - 1 as a cap and a condition the body
    computes (i < 3), so it ends after 4 turns. Not in CASES."""
    cond = [helper.make_node("Less", ["i", "three"], ["cond_out"])]
    body = _body(cond=cond)
    body.initializer.append(numpy_helper.from_array(np.array(3, np.int64), "three"))
    nodes = [helper.make_node("Loop", ["trips", "cond", "acc0"], ["acc"], name="while", body=body)]
    return _save(_loop_model(nodes, {"trips": np.array(np.iinfo(np.int64).max, np.int64), "cond": np.array(True)}),
                 folder)


def acceptance_loop_bomb(folder: Path) -> Path:
    """The Loop bomb of ../shared/acceptance/operations, node for node: 2^62 turns of a body that passes
    its condition and value on, opset 13. Not in CASES (loop_bomb is its twin there)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Identity", ["v"], ["v_out"])], "body",
        [_scalar("i", TensorProto.INT64), _scalar("c", TensorProto.BOOL),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [1])],
        [_scalar("c_out", TensorProto.BOOL), helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])])
    nodes = [helper.make_node("Loop", ["M", "C", "V0"], ["vf"], body=body),
             helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["f"], ["s"], keepdims=0),
             helper.make_node("Add", ["s", "vf"], ["t"]), helper.make_node("Unsqueeze", ["t", "ax"], ["t2"]),
             helper.make_node("Concat", ["t2", "t2"], ["logits"], axis=1)]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"]) for n in ("input_ids", "attention_mask")]
    graph = helper.make_graph(nodes, "loop", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(2**62, np.int64), "M"),
                               numpy_helper.from_array(np.array(True), "C"),
                               numpy_helper.from_array(np.zeros(1, np.float32), "V0"),
                               numpy_helper.from_array(np.array([1], np.int64), "ax")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return _save(model, folder)


def nested_if(folder: Path) -> Path:
    """An If whose then-branch is an If ... 5,000 deep, built in place (copies would be quadratic)."""
    out = helper.make_tensor_value_info("v", TensorProto.FLOAT, [1])
    leaf = helper.make_graph([helper.make_node("Constant", [], ["v"], value=numpy_helper.from_array(
        np.ones(1, np.float32)))], "leaf", [], [out])
    model = _classifier(_logits_from("v"), [numpy_helper.from_array(np.array(True), "c"), _axis1()])
    graph = model.graph
    for depth in range(5000):
        node = graph.node.add() if depth else model.graph.node.add()
        node.op_type, node.name = "If", f"if{depth}"
        node.input.append("c")
        node.output.append("v")
        then_branch, else_branch = node.attribute.add(), node.attribute.add()
        then_branch.name, then_branch.type = "then_branch", onnx.AttributeProto.GRAPH
        else_branch.name, else_branch.type = "else_branch", onnx.AttributeProto.GRAPH
        else_branch.g.CopyFrom(leaf)
        graph = then_branch.g
        graph.name = f"level{depth}"
        graph.output.append(out)
    graph.node.extend(leaf.node)
    return _save(model, folder)


def cycle(folder: Path) -> Path:
    nodes = [helper.make_node("Add", ["b", "w"], ["a"]), helper.make_node("Add", ["a", "w"], ["b"])] + _logits_from("a")
    return _save(_classifier(nodes, [numpy_helper.from_array(np.ones(1, np.float32), "w"), _axis1()]), folder)


def recursive_function(folder: Path) -> Path:
    function = helper.make_function("local", "Recurse", ["x"], ["y"], [helper.make_node("Recurse", ["x"], ["y"],
                                                                                       domain="local")],
                                    [helper.make_opsetid("", 18), helper.make_opsetid("local", 1)])
    nodes = [helper.make_node("Recurse", ["w"], ["r"], domain="local")] + _logits_from("r")
    return _save(_classifier(nodes, [numpy_helper.from_array(np.ones(1, np.float32), "w"), _axis1()],
                             functions=[function], domains=("local",)), folder)


def custom_domain(folder: Path) -> Path:
    nodes = [helper.make_node("Steal", ["w"], ["r"], domain="com.evil.ops")] + _logits_from("r")
    return _save(_classifier(nodes, [numpy_helper.from_array(np.ones(1, np.float32), "w"), _axis1()],
                             domains=("com.evil.ops",)), folder)


def ir_version_99(folder: Path) -> Path:
    nodes = _logits_from("w")
    return _save(_classifier(nodes, [numpy_helper.from_array(np.ones(1, np.float32), "w"), _axis1()], ir=99), folder)


def negative_dims(folder: Path) -> Path:
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-4], raw_data=b"")
    return _save(_classifier(_logits_from("w"), [weight, _axis1()]), folder)


def renamed_inputs(folder: Path) -> Path:
    model = _classifier(_logits_from("w"), [numpy_helper.from_array(np.ones(1, np.float32), "w"), _axis1()])
    for node in model.graph.node:
        node.input[:] = ["ids" if i == "input_ids" else i for i in node.input]
    model.graph.input[0].name = "ids"
    return _save(model, folder)


def float_inputs(folder: Path) -> Path:
    model = _classifier(_logits_from("w"), [numpy_helper.from_array(np.ones(1, np.float32), "w"), _axis1()])
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    return _save(model, folder)


def input_dependent_loop(folder: Path) -> Path:
    """Well-behaved on the probe's feed (8 tokens of id 5: 0 iterations), a Loop of over 2^40 iterations on
    any other: what a first run cannot catch. Not in CASES; serve's time limits must handle it."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    inits = [numpy_helper.from_array(np.array(40, dtype=np.int64), "forty"),
             numpy_helper.from_array(np.array(1 << 40, dtype=np.int64), "scale"),
             numpy_helper.from_array(np.array(True), "cond"), numpy_helper.from_array(np.zeros(1, np.float32), "acc0"),
             _axis1()]
    nodes = [helper.make_node("ReduceSum", ["input_ids"], ["sum"], keepdims=0),
             helper.make_node("Sub", ["sum", "forty"], ["delta"]), helper.make_node("Abs", ["delta"], ["far"]),
             helper.make_node("Mul", ["far", "scale"], ["trips"]),
             helper.make_node("Loop", ["trips", "cond", "acc0"], ["acc"], body=body)] + _logits_from("acc")
    return _save(_classifier(nodes, inits), folder)


def swapped_graph(folder: Path) -> Path:
    """A well-formed graph put in place of a package's model.onnx, the manifest's hashes left as they were."""
    return _save(_classifier(_logits_from("w"), [numpy_helper.from_array(np.ones(1, np.float32), "w"), _axis1()]),
                 folder)


# name -> writer. Each is refused (the last three as a package's graph: as files they are well formed).
CASES: dict[str, Callable[[Path], Path]] = {f.__name__: f for f in (
    empty, truncated, random_bytes, text_file, external_parent, external_absolute, external_symlink,
    external_parent_symlink, external_offset_past_end, external_extra_keys, huge_declared_dims,
    constant_of_shape_bomb, loop_bomb, loop_bomb_in_if, loop_bomb_folded, endless_loop, nested_loop_bomb,
    probe_loop_bomb, nested_if, cycle, recursive_function, custom_domain, ir_version_99, negative_dims,
    renamed_inputs, float_inputs, swapped_graph)}
PACKAGE_ONLY = {"renamed_inputs", "float_inputs", "swapped_graph"}
