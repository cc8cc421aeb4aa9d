"""inspect.py: every figure of the report checked against values worked out by hand on tiny models."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpack.core.config import InspectConfig
from onnxpack.core.errors import OnnxpackError, PackageError
from onnxpack.core.onnxfile import count_macs, load_model, node_flops
from onnxpack.inspection.inspect import summarize

BATCH, SEQ = 2, 5


def _write(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture()
def tiny_onnx(tmp_path) -> str:
    """X[batch, seq, 4] -> MatMul W -> +B -> Relu -> MatMul W (the same W: a shared weight) -> mean over
    seq -> Gemm with W2^T -> x 2.0 (a Constant node) -> logits[batch, 3]."""
    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "W")
    b = numpy_helper.from_array(np.ones(4, dtype=np.float32), "B")
    w2 = numpy_helper.from_array(np.full((3, 4), 0.5, dtype=np.float32), "W2")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["A"], name="mm1"),
        helper.make_node("Add", ["A", "B"], ["C"], name="add"),
        helper.make_node("Relu", ["C"], ["D"], name="relu"),
        helper.make_node("MatMul", ["D", "W"], ["E"], name="mm2"),
        helper.make_node("ReduceMean", ["E", "axes"], ["F"], name="mean", keepdims=0),
        helper.make_node("Gemm", ["F", "W2"], ["G"], name="gemm", transB=1),
        helper.make_node("Constant", [], ["two"], name="two", value=numpy_helper.from_array(np.array(2.0, np.float32))),
        helper.make_node("Mul", ["G", "two"], ["logits"], name="scale"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "seq", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
                              initializer=[w, b, w2, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8,
                              producer_name="onnxpack-tests", producer_version="1")
    helper.set_model_props(model, {"onnxpack.labels": '["a", "b", "c"]', "onnxpack.max_length": "5"})
    return _write(model, tmp_path / "tiny.onnx")


def test_identity_and_contract(tiny_onnx):
    r = summarize(tiny_onnx)
    data = Path(tiny_onnx).read_bytes()
    assert r["identity"] | {"doc_string": ""} == {
        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "ir_version": 8, "opsets": {"ai.onnx": 18},
        "producer": "onnxpack-tests 1", "model_version": 0, "doc_string": "",
        "metadata_props": {"onnxpack.labels": '["a", "b", "c"]', "onnxpack.max_length": "5"}}
    assert r["contract"] == {
        "inputs": [{"name": "X", "dtype": "float32", "dims": ["batch", "seq", 4]}],
        "outputs": [{"name": "logits", "dtype": "float32", "dims": ["batch", 3]}],
        "labels": ["a", "b", "c"], "max_length": 5, "from": "metadata_props"}
    assert r["source"] == {"file": tiny_onnx, "package": None, "variant": None}


def test_structure(tiny_onnx):
    s = summarize(tiny_onnx)["structure"]
    assert s["nodes"] == 8
    assert s["op_types"] == {"MatMul": 2, "Add": 1, "Relu": 1, "ReduceMean": 1, "Gemm": 1, "Constant": 1, "Mul": 1}
    assert s["custom_domains"] == {} and s["nodes_in_subgraphs"] == 0


def test_weights_count_a_shared_tensor_once(tiny_onnx):
    w = summarize(tiny_onnx)["weights"]
    assert w["parameters"] == 16 + 4 + 12 + 1  # W once although two MatMuls read it
    assert w["bytes"] == (16 + 4 + 12) * 4 + 8
    assert w["by_dtype"] == {"float32": {"tensors": 3, "parameters": 32, "bytes": 128},
                             "int64": {"tensors": 1, "parameters": 1, "bytes": 8}}
    assert w["shared"] == [{"name": "W", "uses": 2}] and w["unused"] == []
    assert [t["name"] for t in w["largest"]] == ["W", "W2", "B", "axes"]
    assert w["largest"][0] == {"name": "W", "dtype": "float32", "shape": [4, 4], "parameters": 16, "bytes": 64, "uses": 2}
    assert w["constant_nodes"] == {"count": 1, "parameters": 1, "bytes": 4}


def test_compute_by_hand(tiny_onnx):
    c = summarize(tiny_onnx, InspectConfig(batch=BATCH, seq=SEQ))["compute"]
    # MatMul [2,5,4]x[4,4]: 2*5*4 outputs x K=4 = 160, twice; Gemm [2,4]x[4,3]^T: 2*3 outputs x K=4 = 24
    assert c["macs"] == 160 + 160 + 24 and c["flops"] == 2 * 344
    assert c["by_op"] == {"MatMul": 320, "Gemm": 24}
    assert c["nodes"] == [{"name": "mm1", "op": "MatMul", "macs": 160, "flops": 320},
                          {"name": "mm2", "op": "MatMul", "macs": 160, "flops": 320},
                          {"name": "gemm", "op": "Gemm", "macs": 24, "flops": 48}]
    assert c["unsized"] == [] and (c["batch"], c["seq"]) == (BATCH, SEQ)
    assert summarize(tiny_onnx)["compute"]["seq"] == 5  # default: the max length the model states
    assert node_flops(tiny_onnx, BATCH, SEQ) == {"mm1": 320, "mm2": 320, "gemm": 48}


def test_validity_of_a_good_model(tiny_onnx):
    v = summarize(tiny_onnx)["validity"]
    assert v["checker"] == {"ok": True, "error": None}
    assert v["onnxruntime"]["loads"] is True and v["parity"] is None


def test_a_broken_model_is_refused_naming_the_problem(tmp_path):
    """A node reading a tensor nothing defines: refused before any library loads it (untrusted.py)."""
    graph = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"], name="r")], "broken",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = _write(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8),
                  tmp_path / "broken.onnx")
    with pytest.raises(OnnxpackError, match="is not a valid ONNX graph: .*nowhere"):
        summarize(path)


def test_fused_ops_of_optimized_graphs(tmp_path):
    """com.microsoft FusedMatMul (transposed B) and Attention, as `optimize` writes them."""
    wq = numpy_helper.from_array(np.zeros((8, 24), np.float32), "qkv")
    bias = numpy_helper.from_array(np.zeros(24, np.float32), "qkv_bias")
    w = numpy_helper.from_array(np.zeros((6, 8), np.float32), "w")
    nodes = [helper.make_node("Attention", ["x", "qkv", "qkv_bias"], ["ctx"], name="attn", domain="com.microsoft",
                              num_heads=2),
             helper.make_node("FusedMatMul", ["ctx", "w"], ["y"], name="fmm", domain="com.microsoft", transB=1)]
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 6])],
                              initializer=[wq, bias, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    path = _write(model, tmp_path / "fused.onnx")
    # Attention, batch 1 x 3 tokens: projection 3*8*24 = 576, Q.K^T 3*3*8 = 72, softmax.V 3*3*8 = 72
    # FusedMatMul [1,3,8] x [6,8]^T: 3*6 outputs x K=8 = 144
    assert count_macs(load_model(path), 1, 3) == ({"attn": 720, "fmm": 144}, [])
    r = summarize(path, InspectConfig(seq=3))
    assert r["structure"]["custom_domains"] == {"com.microsoft": 2}
    assert r["identity"]["opsets"] == {"ai.onnx": 18, "com.microsoft": 1}
    assert r["validity"]["onnxruntime"]["loads"] is True


def test_package(package_dir):
    """A package: the contract comes from the manifest, and the figures agree with the model file."""
    r = summarize(package_dir, InspectConfig(batch=1, seq=16))
    model = onnx.load(str(package_dir / "model.onnx"))
    assert r["source"]["variant"] == "fp32" and r["contract"]["from"] == "manifest"
    assert r["contract"]["labels"] == ["unacceptable", "acceptable"]
    assert r["structure"]["nodes"] == len(model.graph.node)
    assert r["weights"]["parameters"] == sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert r["compute"]["flops"] == sum(node_flops(model, 1, 16).values()) > 0
    assert r["validity"]["parity"]["max_abs_diff"] < 1e-4
    assert r["validity"]["checker"]["ok"] and r["validity"]["onnxruntime"]["loads"]
    json.dumps(r)  # all of it serialises


def test_unknown_variant(package_dir):
    with pytest.raises(PackageError, match="has no variant 'nope'; it has fp32"):
        summarize(package_dir, InspectConfig(variant="nope"))


@pytest.mark.parametrize("content, message", [
    (b"", "is empty \\(0 bytes\\), not an ONNX model"),
    (b"hello, I am a text file\n", "is not a readable ONNX model"),
])
def test_not_onnx(tmp_path, content, message):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(OnnxpackError, match=message):
        summarize(path)


def test_truncated(tiny_onnx, tmp_path):
    data = Path(tiny_onnx).read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxpackError, match="is not a readable ONNX model .* truncated"):
        summarize(tmp_path / "cut.onnx")


def test_looking_inside_does_not_import_torch(graphviz, package_dir, tmp_path):
    """inspect, graph and profile run on the runtime side: none of them may pull in torch, not even lazily
    (importing onnxruntime.tools, for its shape inference, imports torch where torch is installed)."""
    code = ("import sys; from onnxpack.inspection.inspect import summarize; from onnxpack.core.onnxfile import load_model; from onnxpack.inspection.graph import render; "
            "from onnxpack.inspection.profile import ProfileConfig, profile, draw; p = sys.argv[1]; summarize(p); "
            "render(load_model(p + '/model.onnx'), 't'); draw(profile(p, ProfileConfig(seq=8, runs=1, warmup=0))); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code, str(package_dir)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []  # and nothing written to the working directory


def test_every_variant_counts_the_same_work(package_copy, small_cola):
    """The fused (Attention, EmbedLayerNormalization) and int8 (QAttention, QEmbedLayerNormalization,
    MatMulInteger) graphs of a package do the fp32 graph's matrix products, less only the last
    layer's rows after [CLS] that the first-token rewrite skips: at one token, exactly the same."""
    from onnxpack.core.config import OptimizeConfig
    from onnxpack.core.package import Package
    from onnxpack.runtime.optimize import optimize

    optimize(package_copy, OptimizeConfig(data=str(small_cola), max_mcc_drop=1.0))
    package = Package.open(package_copy)
    totals = {}
    for name in package.variant_names():
        model = onnx.load(str(package.variant_path(name)))
        for seq in (1, 16):
            macs, unsized = count_macs(model, 4, seq)
            assert not unsized, (name, unsized)
            totals[name, seq] = sum(macs.values())
    assert {name for name, _ in totals} == {"fp32", "optimized", "int8", "int8-static", "int8-cascade"}
    assert totals["fp32", 1] == totals["optimized", 1] == totals["int8", 1] == totals["int8-static", 1]
    # the cascade's int8 pass; its float rerun of unsure rows depends on the data, not on the shape
    assert totals["int8-cascade", 16] == totals["int8-static", 16]
    assert totals["optimized", 16] == totals["int8", 16] == totals["int8-static", 16] < totals["fp32", 16]
