"""Loops that cannot finish, found by reading the graph: a Loop whose constant trip count is over
MAX_TURNS, or which has no trip count and a condition its body keeps true, in the main graph or any
subgraph (If branches, Loop and Scan bodies, local functions). untrusted.check_file refuses them, so
such a graph costs one line at once instead of the probe's whole time limit.

Only what is provable is refused. A trip count counts when it is a constant: an initializer, a Constant
node, or a short chain of simple ops (Cast, Add, Mul, Reshape, ...) over those, folded here with numpy
the way ONNX Runtime computes them (int64 wraps). A condition counts as kept true when the body's
condition output folds to true given that its condition input is true (a pass-through, Identity,
Not(Not(c)), a constant true): by induction it is then true on every turn. A Loop whose body computes
its condition from data may end early, so its trip count is only a cap and is not refused: torch.onnx
exports every `while` loop that way, with a trip count of 2^63 - 1. Everything else (a trip count from
the input, a condition computed from the iteration number) is left to the probe's time limit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# A Loop may run at most this many turns: 2^20 = 1,048,576. Measured with ONNX Runtime 1.32 on one
# thread (2-core AMD EPYC): a turn of a body that does almost nothing costs 0.7-1.2 us, so 2^20 turns
# cost about a second, well inside the probe's limit, which catches any longer one by its time (a body
# doing real work costs more per turn). The Loops exporters write run over layers, tokens or beam steps:
# hundreds to thousands of turns. A constant count over a million is a bomb, not a model.
MAX_TURNS = 1 << 20
FOLD_MAX_ELEMENTS = 64  # a constant over this many elements is never read or folded (weights are left alone)
FOLD_MAX_DEPTH = 64  # how long a chain of ops is followed back to its constants
_ENDLESS = -1  # "turns" of a Loop that never ends


def endless_loop(proto: onnx.ModelProto, folder: Path | None = None) -> str | None:
    """The first Loop that cannot finish, described in words (`Loop node 'x' runs N turns (...)`), or
    None. `folder` holds the graph's external data, for a trip count stored there (only small tensors
    are read, after untrusted.check_file has vouched for every location)."""
    graphs = [(proto.graph, None)] + [(onnx.helper.make_graph(f.node, f.name, [], []), f.name) for f in proto.functions]
    for graph, function in graphs:
        try:
            found = _walk(graph, _Scope(graph, None, folder), 1, "")
        except RecursionError:  # subgraphs nested deeper than Python's stack: onnx.checker judges those
            return None
        if found:
            return found + (f" in the function {function!r}" if function else "")
    return None


def _walk(graph: onnx.GraphProto, scope: _Scope, outer: int, around: str) -> str | None:
    """Each Loop of `graph` and of its subgraphs. `outer` is how many turns the Loops around `graph`
    provably run (two nested Loops of 2^11 turns are 2^22 turns of the inner body); `around` names them."""
    for node in graph.node:
        body = next((a.g for a in node.attribute if a.name == "body" and a.type == onnx.AttributeProto.GRAPH), None)
        if node.op_type == "Loop" and node.domain in ("", "ai.onnx") and body is not None:
            body_scope = _Scope(body, scope, scope.folder)
            if len(body.input) >= 2:  # a turn runs only when its condition is true: the body sees true
                body_scope.values[body.input[1].name] = np.array(True)
            turns, kept = _turns(node, scope, body, body_scope)
            name, keeps = _name(node), ", and a condition its body keeps true" if kept else ""
            if turns == _ENDLESS:
                why = f"no trip count{keeps}" if kept else "neither a trip count nor a condition"
                return f"Loop node {name} never ends ({why})"
            if turns is not None and turns * outer > MAX_TURNS:
                if outer == 1:
                    return f"Loop node {name} runs {turns} turns (a constant trip count over {MAX_TURNS}{keeps})"
                return (f"Loop node {name} runs {turns * outer} turns in all ({turns} on each of {outer} turns{around}; "
                        f"over {MAX_TURNS})")
            inner = (outer * turns, f" of the Loop node {name}{around}") if turns else (outer, around)
            subgraphs = [(body, body_scope, *inner)]
        else:
            subgraphs = [(g, _Scope(g, scope, scope.folder), outer, around) for a in node.attribute
                         for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))]
        for subgraph, subscope, turns_around, names_around in subgraphs:
            found = _walk(subgraph, subscope, turns_around, names_around)
            if found:
                return found
    return None


def _turns(node: onnx.NodeProto, scope: _Scope, body: onnx.GraphProto, body_scope: _Scope) -> tuple[int | None, bool]:
    """How many turns a Loop provably runs whenever it starts (a count, _ENDLESS, or None when its trip
    count or its condition depends on data), and whether that rests on a condition its body keeps true."""
    trip = node.input[0] if len(node.input) > 0 else ""
    cond = node.input[1] if len(node.input) > 1 else ""
    turns = _ENDLESS
    if trip:
        value = scope.value(trip)
        if value is None or value.size != 1 or value.dtype.kind not in "iu":
            return None, False
        turns = max(int(value.reshape(-1)[0]), 0)
    if not cond:  # no condition: the trip count alone decides (with neither, the Loop is endless)
        return turns, False
    start = scope.value(cond)
    if start is not None and start.size == 1 and not start.reshape(-1)[0]:
        return 0, False  # it never starts
    kept = body_scope.value(body.output[0].name) if len(body.output) else None
    if kept is None or kept.size != 1 or kept.dtype.kind != "b" or not kept.reshape(-1)[0]:
        return None, False  # the body computes its condition: it may end early, the trip count is only a cap
    return turns, True


def _name(node: onnx.NodeProto) -> str:
    return repr(node.name) if node.name else f"(unnamed, output {node.output[0]!r})" if node.output else "(unnamed)"


class _Scope:
    """The values of one graph that are constant, found on demand; names not defined here are looked up
    in the graph around it (a subgraph may read its outer graph's values)."""

    def __init__(self, graph: onnx.GraphProto, parent: _Scope | None, folder: Path | None) -> None:
        self.parent, self.folder = parent, folder
        self.producers = {out: node for node in graph.node for out in node.output if out}
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = {i.name for i in graph.input}
        self.values: dict[str, np.ndarray | None] = {}

    def value(self, name: str, depth: int = 0) -> np.ndarray | None:
        """The constant `name` holds, or None when it is not one (or not found within FOLD_MAX_DEPTH steps)."""
        if name in self.values:
            return self.values[name]
        if depth >= FOLD_MAX_DEPTH:
            return None
        if name not in self.initializers and name not in self.producers and name not in self.inputs:
            return self.parent.value(name, depth + 1) if self.parent is not None else None
        self.values[name] = None  # while it is being found: a cycle (onnx.checker refuses those) reads None
        if name in self.initializers:  # (an initializer that is also an input is its default: what onnxpack runs)
            self.values[name] = self._tensor(self.initializers[name])
        elif name in self.producers:
            self.values[name] = self._fold(self.producers[name], name, depth)
        return self.values[name]

    def _tensor(self, tensor: onnx.TensorProto) -> np.ndarray | None:
        count = 1
        for d in tensor.dims:
            count *= d
        if count > FOLD_MAX_ELEMENTS or tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            return None
        try:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                if self.folder is None:
                    return None
                copy = onnx.TensorProto()
                copy.CopyFrom(tensor)
                onnx.external_data_helper.load_external_data_for_tensor(copy, str(self.folder))
                copy.data_location = onnx.TensorProto.DEFAULT
                tensor = copy
            return np.asarray(numpy_helper.to_array(tensor))
        except Exception:  # noqa: BLE001 -- unreadable here: not a constant (check_file judges the tensor)
            return None

    def _fold(self, node: onnx.NodeProto, output: str, depth: int) -> np.ndarray | None:
        if node.domain not in ("", "ai.onnx") or list(node.output).index(output) != 0:
            return None
        attributes = {a.name: a for a in node.attribute}
        if node.op_type == "Constant":
            return self._constant(attributes)
        op = _OPS.get(node.op_type)
        if op is None:
            return None
        inputs = [self.value(i, depth + 1) if i else None for i in node.input]
        if any(v is None for v, name in zip(inputs, node.input) if name) or any(
                v.size > FOLD_MAX_ELEMENTS for v in inputs if v is not None):
            return None
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = np.asarray(op(inputs, attributes))
        except Exception:  # noqa: BLE001 -- not foldable here (ONNX Runtime judges it when it runs)
            return None
        return result if result.size <= FOLD_MAX_ELEMENTS else None

    def _constant(self, attributes: dict[str, onnx.AttributeProto]) -> np.ndarray | None:
        if any(a.ref_attr_name for a in attributes.values()):
            return None  # a function's attribute: known only where it is called
        if "value" in attributes:
            return self._tensor(attributes["value"].t)
        for key, make in (("value_int", lambda a: np.array(a.i, np.int64)),
                          ("value_ints", lambda a: np.array(a.ints, np.int64)),
                          ("value_float", lambda a: np.array(a.f, np.float32)),
                          ("value_floats", lambda a: np.array(a.floats, np.float32))):
            if key in attributes:
                value = make(attributes[key])
                return value if value.size <= FOLD_MAX_ELEMENTS else None
        return None


def _int_attr(attributes: dict[str, onnx.AttributeProto], name: str, default: int) -> int:
    return attributes[name].i if name in attributes else default


def _axes(inputs: list, attributes: dict[str, onnx.AttributeProto], rank: int) -> list[int] | None:
    """Squeeze's and Unsqueeze's axes: an input since opset 13, an attribute before."""
    if len(inputs) > 1 and inputs[1] is not None:
        axes = [int(a) for a in inputs[1].reshape(-1)]
    elif "axes" in attributes:
        axes = list(attributes["axes"].ints)
    else:
        return None
    return sorted(a + rank if a < 0 else a for a in axes)


def _reshape(inputs: list, attributes: dict[str, onnx.AttributeProto]) -> np.ndarray:
    data, shape = inputs[0], [int(d) for d in inputs[1].reshape(-1)]
    if not _int_attr(attributes, "allowzero", 0):
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return data.reshape(shape)


def _unsqueeze(inputs: list, attributes: dict[str, onnx.AttributeProto]) -> np.ndarray:
    data = inputs[0]
    count = len(_axes(inputs, attributes, 0) or [])
    for axis in _axes(inputs, attributes, data.ndim + count) or []:
        data = np.expand_dims(data, axis)
    return data


def _squeeze(inputs: list, attributes: dict[str, onnx.AttributeProto]) -> np.ndarray:
    axes = _axes(inputs, attributes, inputs[0].ndim)
    return np.squeeze(inputs[0]) if axes is None else np.squeeze(inputs[0], axis=tuple(axes))


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":  # C's integer division: toward zero
        if not np.all(b):
            raise ZeroDivisionError
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(np.result_type(a, b))
    return a / b


def _bitshift(inputs: list, attributes: dict[str, onnx.AttributeProto]) -> np.ndarray:
    direction = attributes["direction"].s.decode() if "direction" in attributes else ""
    shift = np.left_shift if direction == "LEFT" else np.right_shift if direction == "RIGHT" else None
    if shift is None:
        raise ValueError(direction)
    return shift(inputs[0], inputs[1])


def _binary(f: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[list, dict], np.ndarray]:
    return lambda inputs, attributes: f(inputs[0], inputs[1])


def _unary(f: Callable[[np.ndarray], np.ndarray]) -> Callable[[list, dict], np.ndarray]:
    return lambda inputs, attributes: f(inputs[0])


def _variadic(f: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[list, dict], np.ndarray]:
    def fold(inputs: list, attributes: dict) -> np.ndarray:
        result = inputs[0]
        for other in inputs[1:]:
            result = f(result, other)
        return result
    return fold


def _cast(inputs: list, attributes: dict[str, onnx.AttributeProto]) -> np.ndarray:
    return inputs[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attributes["to"].i))


# The ops folded: shape-free arithmetic, logic and reshaping of small tensors. Nothing that makes a
# tensor bigger than its inputs (Expand, Tile, Range, ConstantOfShape), so folding costs nothing.
_OPS: dict[str, Callable[[list, dict], np.ndarray]] = {
    "Identity": _unary(lambda x: x), "Cast": _cast, "Neg": _unary(np.negative), "Abs": _unary(np.abs),
    "Not": _unary(np.logical_not), "Add": _binary(np.add), "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply), "Div": _binary(_div), "Pow": _binary(np.power), "BitShift": _bitshift,
    "Max": _variadic(np.maximum), "Min": _variadic(np.minimum), "Sum": _variadic(np.add),
    "And": _binary(np.logical_and), "Or": _binary(np.logical_or), "Xor": _binary(np.logical_xor),
    "Equal": _binary(np.equal), "Greater": _binary(np.greater), "Less": _binary(np.less),
    "GreaterOrEqual": _binary(np.greater_equal), "LessOrEqual": _binary(np.less_equal),
    "Where": lambda inputs, attributes: np.where(inputs[0], inputs[1], inputs[2]),
    "Reshape": _reshape, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
}

