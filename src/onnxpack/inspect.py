"""Look inside an ONNX model or package: identity, contract, structure, weights, compute, validity.

`summarize(path)` returns a JSON-ready dict; `node_flops` sizes the matrix products for `bench`.
Everything here is read from the graph alone (plus one trial load in ONNX Runtime). No torch.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib.util
import json
import logging
import math
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from . import untrusted
from .errors import OnnxpackError
from .package import FP32, Package, sha256_file

log = logging.getLogger(__name__)

LARGEST = 10  # how many of the biggest weight tensors the report lists
DEFAULT_SEQ = 128  # sequence length for compute when neither --seq nor the model states a max length

# Ops whose multiply-accumulates we count: index of the activation input whose last dim is K.
MATMUL_OPS = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "DynamicQuantizeMatMul",
              "MatMulIntegerToFloat", "QLinearMatMul")
CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "FusedConv": 1, "QLinearConv": 3}  # op -> index of the weight input
ATTENTION_OPS = ("Attention", "QAttention")  # com.microsoft fused self-attention (projection + scores + context)


@dataclasses.dataclass
class Source:
    """Where a model came from: a bare .onnx file, or one variant of a package."""

    path: Path  # the .onnx file
    package: Package | None = None
    variant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "package": str(self.package.root) if self.package else None,
                "variant": self.variant}

    @property
    def title(self) -> str:
        return f"{self.package.name} · {self.variant} ({self.path.name})" if self.package else self.path.name


def resolve(path: str | Path, variant: str | None = None) -> Source:
    """A package directory (one of its variants; default fp32, the exported graph) or an .onnx file."""
    path = Path(path)
    if path.is_dir():
        package = Package.open(path)
        variant = variant or FP32
        untrusted.trust(package.variant_path(variant), package)
        return Source(package.variant_path(variant), package, variant)
    if not path.is_file():
        raise OnnxpackError(f"{path} does not exist", hint="pass a package folder or an .onnx file")
    if variant:
        raise OnnxpackError(f"--variant needs a package folder; {path} is a single file")
    return Source(path)


def load_model(path: Path, load_weights: bool = True) -> onnx.ModelProto:
    """Parse an .onnx file, turning a file that is not one (or is cut short) into a one-line user error."""
    untrusted.trust(path)
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except DecodeError as e:
        raise OnnxpackError(f"{path} is not a readable ONNX model ({e})",
                            hint="a truncated copy or download fails this way too; copy or export it again") from None
    except OSError as e:  # external data files that are missing
        raise OnnxpackError(f"cannot read {path}: {e}") from None
    # An empty or nearly empty file parses as an empty ModelProto; a real model has both of these.
    if not model.ir_version or not model.HasField("graph"):
        raise OnnxpackError(f"{path} is not an ONNX model (no IR version or graph in it)",
                            hint="pass a package folder or an .onnx file")
    return model


def node_key(index: int, node: onnx.NodeProto) -> str:
    """A node's name, or a stand-in for the unnamed nodes some exporters write."""
    return node.name or f"{node.op_type}_{index}"


def dtype_name(elem_type: int) -> str:
    """numpy-style name of an ONNX element type ("float32", "int64"), as the manifest writes them."""
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "?"


Dims = list[int | str | None]  # an int is a fixed size, a str a named dynamic axis, None unknown


def _dims(value_type: onnx.TypeProto) -> Dims | None:
    if not value_type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value_type.tensor_type.shape.dim]


def value_spec(value: onnx.ValueInfoProto) -> dict[str, Any]:
    return {"name": value.name, "dtype": dtype_name(value.type.tensor_type.elem_type), "dims": _dims(value.type)}


@functools.cache
def _symbolic_shape_inference() -> Any:
    """ONNX Runtime's SymbolicShapeInference, loaded from its file: importing it as
    `onnxruntime.tools.symbolic_shape_infer` runs `onnxruntime/tools/__init__.py`, which imports torch."""
    path = Path(ort.__file__).parent / "tools" / "symbolic_shape_infer.py"
    spec = importlib.util.spec_from_file_location("onnxpack._symbolic_shape_infer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SymbolicShapeInference


def _infer_symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """SymbolicShapeInference.infer_shapes without its last step, which raises and writes
    sym_shape_infer_temp.onnx into the working directory when some op's shape stays unknown
    (FusedMatMul, for one); the shapes it did infer are still worth having."""
    engine = _symbolic_shape_inference()(int_max=2**31 - 1, auto_merge=True, guess_output_rank=False, verbose=0)
    # The int8 forms of the fused ops (from `optimize`) have the shapes of the float ops they replace.
    for quantized, float_op in (("QEmbedLayerNormalization", "EmbedLayerNormalization"), ("QAttention", "Attention")):
        engine.dispatcher_.setdefault(quantized, engine.dispatcher_[float_op])
    engine._preprocess(model)
    while engine.run_:
        engine._infer_impl()
    engine._update_output_from_vi()
    return engine.out_mp_


def fix_input_dims(model: onnx.ModelProto, batch: int, seq: int) -> onnx.ModelProto:
    """A copy whose [batch, sequence] inputs have concrete sizes, so shape inference can size every tensor."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, (batch, seq)):
            if not dim.HasField("dim_value"):
                dim.dim_value = size
    return fixed


def tensor_types(model: onnx.ModelProto, batch: int | None = None, seq: int | None = None,
                 ) -> dict[str, tuple[str, Dims | None]]:
    """(dtype, dims) of every tensor the graph names, after shape inference.

    With `batch` and `seq` the [batch, sequence] inputs get those sizes so every dim is a number;
    without, dims stay symbolic ("batch", "sequence", or what inference derived from them).
    """
    if batch is not None and seq is not None:
        model = fix_input_dims(model, batch, seq)
    # ONNX Runtime's symbolic inference follows the Shape -> Reshape arithmetic of exported
    # attention heads (onnx.shape_inference loses it) and knows most contrib ops of fused graphs.
    try:
        inferred = _infer_symbolic(model)
    except Exception as e:  # noqa: BLE001 - it fails on graphs it cannot follow; fall back to onnx's own
        log.debug("symbolic shape inference failed (%s); using onnx.shape_inference", e)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except (onnx.shape_inference.InferenceError, ValueError):
            inferred = model
    types: dict[str, tuple[str, Dims | None]] = {}
    for t in model.graph.initializer:
        types[t.name] = (dtype_name(t.data_type), list(t.dims))
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            t = node.attribute[0].t
            types[node.output[0]] = (dtype_name(t.data_type), list(t.dims))
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.type.HasField("tensor_type"):
            types.setdefault(value.name, (dtype_name(value.type.tensor_type.elem_type), _dims(value.type)))
    return types


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _known(dims: Dims | None) -> bool:
    return bool(dims) and all(isinstance(d, int) and d > 0 for d in dims)


def _node_macs(node: onnx.NodeProto, dims: dict[str, Dims | None]) -> int | None:
    """Multiply-accumulates of one contraction node, or None when its shapes are unknown."""
    def shape(i: int) -> Dims | None:
        return dims.get(node.input[i]) if i < len(node.input) else None

    out = dims.get(node.output[0])
    if node.op_type in MATMUL_OPS:
        a = shape(0)
        if not _known(a):
            return None
        if _known(out):
            return math.prod(out) * (a[-2] if _attr(node, "transA", 0) and len(a) >= 2 else a[-1])
        # Output left unknown (inference stops at some contrib ops): every element of A meets N columns of B.
        b = shape(3 if node.op_type == "QLinearMatMul" else 1)
        if not _known(b) or len(b) < 2:
            return None
        return math.prod(a) * (b[-2] if _attr(node, "transB", 0) else b[-1])
    if node.op_type in CONV_WEIGHT:
        w = shape(CONV_WEIGHT[node.op_type])
        if not _known(w) or not _known(out):
            return None
        return math.prod(out) * math.prod(w[1:])  # each output element: C_in/group * kernel taps
    # ATTENTION_OPS: input [B, S, H_in] x weight [H_in, Hq+Hk+Hv], then per head Q.K^T and softmax.V
    a, w = shape(0), shape(1)
    if not _known(a) or not _known(w) or len(a) != 3:
        return None
    batch, seq, _ = a
    hq, _, hv = _attr(node, "qkv_hidden_sizes", None) or [w[-1] // 3] * 3
    return math.prod(a) * w[-1] + batch * seq * seq * (hq + hv)


def count_macs(model: onnx.ModelProto, batch: int, seq: int) -> tuple[dict[str, int], list[str]]:
    """MACs of every matrix-product node (MatMul/Gemm, quantized and fused forms, Conv, fused
    attention) for one input size, and the names of such nodes whose shapes stayed unknown.

    Other ops (softmax, layer norm, GELU, adds) are linear in the tensor size and a rounding error beside these.
    """
    counted = MATMUL_OPS + tuple(CONV_WEIGHT) + ATTENTION_OPS
    nodes = [(node_key(i, n), n) for i, n in enumerate(model.graph.node) if n.op_type in counted]
    if not nodes:
        return {}, []
    dims = {name: d for name, (_, d) in tensor_types(model, batch, seq).items()}
    macs, unsized = {}, []
    for name, node in nodes:
        n = _node_macs(node, dims)
        if n is None:
            unsized.append(name)
        else:
            macs[name] = int(n)
    return macs, unsized


def node_flops(model: onnx.ModelProto | str | Path, batch: int, seq: int) -> dict[str, int]:
    """FLOPs (2 x MACs) of every matrix-product node, attention's batched products included, for one input size."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    macs, unsized = count_macs(model, batch, seq)
    if unsized:
        raise ValueError(f"cannot size {', '.join(unsized[:3])}: shape inference left it unknown")
    return {name: 2 * n for name, n in macs.items()}


# --- the report ---------------------------------------------------------------------------------------------

def summarize(path: str | Path, variant: str | None = None, batch: int = 1, seq: int | None = None) -> dict[str, Any]:
    """Everything `onnxpack inspect` shows, as a JSON-ready dict."""
    if batch < 1 or (seq is not None and seq < 1):
        raise OnnxpackError(f"--batch and --seq must be positive, got {batch} and {seq}")
    source = resolve(path, variant)
    model = load_model(source.path, load_weights=False)  # sizes come from dims; no need for the bytes
    contract = _contract(model, source.package)
    seq = seq or contract["max_length"] or DEFAULT_SEQ
    return {
        "source": source.to_dict(),
        "identity": _identity(model, source.path),
        "contract": contract,
        "structure": _structure(model),
        "weights": _weights(model),
        "compute": _compute(model, batch, seq),
        "validity": _validity(source),
    }


def _identity(model: onnx.ModelProto, path: Path) -> dict[str, Any]:
    return {
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p),
        "model_version": model.model_version,
        "doc_string": model.doc_string,
        "metadata_props": {p.key: p.value for p in model.metadata_props},
    }


def _contract(model: onnx.ModelProto, package: Package | None) -> dict[str, Any]:
    initializers = {t.name for t in model.graph.initializer}  # IR < 4 lists weights as inputs too
    contract: dict[str, Any] = {
        "inputs": [value_spec(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [value_spec(v) for v in model.graph.output],
        "labels": None, "max_length": None, "from": None,
    }
    if package:
        contract.update(labels=package.manifest.labels, max_length=package.manifest.max_length, **{"from": "manifest"})
        return contract
    # A bare .onnx file that onnxpack wrote still says what it is (see docs/package-format.md).
    props = {p.key: p.value for p in model.metadata_props}
    try:
        if "onnxpack.labels" in props:
            contract.update(labels=json.loads(props["onnxpack.labels"]), **{"from": "metadata_props"})
        if "onnxpack.max_length" in props:
            contract.update(max_length=int(props["onnxpack.max_length"]), **{"from": "metadata_props"})
    except ValueError:
        log.warning("ignoring malformed onnxpack.* metadata_props")
    return contract


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes of the graph and of the subgraphs inside If/Loop/Scan bodies."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                nodes.extend(_all_nodes(sub))
    return nodes


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type of the main graph, most frequent first."""
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())


def _structure(model: onnx.ModelProto) -> dict[str, Any]:
    nested = _all_nodes(model.graph)
    custom = collections.Counter(n.domain for n in nested if n.domain not in ("", "ai.onnx"))
    return {
        "nodes": len(model.graph.node),
        "nodes_in_subgraphs": len(nested) - len(model.graph.node),
        "op_types": op_histogram(model),
        "custom_domains": dict(custom.most_common()),
        "functions": [f"{f.domain}.{f.name}" for f in model.functions],
    }


def _tensor_bytes(t: onnx.TensorProto) -> int:
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return len(t.raw_data)
    return math.prod(t.dims) * itemsize


def _weights(model: onnx.ModelProto) -> dict[str, Any]:
    """Initializers by name: a tensor that several nodes read (tied weights) is counted once."""
    uses = collections.Counter(name for n in _all_nodes(model.graph) for name in n.input)
    by_dtype: dict[str, dict[str, int]] = {}
    tensors = []
    for t in model.graph.initializer:
        dtype = dtype_name(t.data_type)
        row = {"name": t.name, "dtype": dtype, "shape": list(t.dims), "parameters": math.prod(t.dims),
               "bytes": _tensor_bytes(t), "uses": uses[t.name]}
        tensors.append(row)
        totals = by_dtype.setdefault(dtype, {"tensors": 0, "parameters": 0, "bytes": 0})
        for key in ("parameters", "bytes"):
            totals[key] += row[key]
        totals["tensors"] += 1
    constants = [n.attribute[0].t for n in model.graph.node
                 if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR]
    return {
        "parameters": sum(r["parameters"] for r in tensors),
        "bytes": sum(r["bytes"] for r in tensors),
        "initializers": len(tensors),
        "shared": sorted(({"name": r["name"], "uses": r["uses"]} for r in tensors if r["uses"] > 1),
                         key=lambda r: -r["uses"]),
        "unused": [r["name"] for r in tensors if not r["uses"]],
        "by_dtype": dict(sorted(by_dtype.items(), key=lambda kv: -kv[1]["bytes"])),
        "largest": sorted(tensors, key=lambda r: -r["bytes"])[:LARGEST],
        # Constant nodes hold shapes and scalars in exported graphs: listed apart, not counted as parameters.
        "constant_nodes": {"count": len(constants), "parameters": sum(math.prod(t.dims) for t in constants),
                           "bytes": sum(_tensor_bytes(t) for t in constants)},
    }


def _compute(model: onnx.ModelProto, batch: int, seq: int) -> dict[str, Any]:
    macs, unsized = count_macs(model, batch, seq)
    ops = {node_key(i, n): n.op_type for i, n in enumerate(model.graph.node)}
    by_op: collections.Counter[str] = collections.Counter()
    for name, n in macs.items():
        by_op[ops[name]] += n
    total = sum(macs.values())
    return {
        "batch": batch, "seq": seq, "macs": total, "flops": 2 * total,
        "by_op": dict(by_op.most_common()),
        "nodes": [{"name": name, "op": ops[name], "macs": n, "flops": 2 * n}
                  for name, n in sorted(macs.items(), key=lambda kv: -kv[1])],
        "unsized": unsized,
        "counted_ops": "matrix products (MatMul, Gemm and their fused/quantized forms, Conv, Attention); "
                       "elementwise ops are linear in tensor size and left out",
    }


def _validity(source: Source) -> dict[str, Any]:
    validity: dict[str, Any] = {"checker": {"ok": True, "error": None}}
    try:
        # By path, so models with external data (or over 2 GB) are checked too.
        onnx.checker.check_model(str(source.path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        validity["checker"] = {"ok": False, "error": _first_line(e)}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # loading is the question
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(source.path), options, providers=["CPUExecutionProvider"])
        validity["onnxruntime"] = {"version": ort.__version__, "loads": True, "error": None}
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises several pybind types; any failure is the finding
        validity["onnxruntime"] = {"version": ort.__version__, "loads": False, "error": _first_line(e)}
    package = source.package
    validity["parity"] = package.manifest.parity if package else None
    if package and source.variant in package.manifest.variants:
        figures = package.manifest.variants[source.variant]
        validity["variant_gate"] = {k: figures[k] for k in ("n", "mcc", "mcc_drop", "agreement", "max_abs_diff", "at")
                                    if k in figures}
    return validity


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
