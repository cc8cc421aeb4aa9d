"""Every ONNX-proto helper in one place: reading and writing graphs of any size, element-type
names, node attributes, tensor sizes, Constant nodes, shape inference, and the matrix products' FLOPs.

Over ONNX's 2 GiB protobuf limit the weights go to `<file>.data` beside the graph
(package.EXTERNAL_DATA_BYTES says when); every stage that writes a graph saves through `save`.
ONNX Runtime's symbolic shape inference is loaded by path, never imported: importing
`onnxruntime.tools` imports torch.
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import logging
import math
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from onnxpack.core import package
from onnxpack.core.errors import OnnxpackError

log = logging.getLogger(__name__)

# Ops whose multiply-accumulates we count: index of the activation input whose last dim is K.
MATMUL_OPS = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "DynamicQuantizeMatMul",
              "MatMulIntegerToFloat", "QLinearMatMul")
CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "FusedConv": 1, "QLinearConv": 3}  # op -> index of the weight input
ATTENTION_OPS = ("Attention", "QAttention")  # com.microsoft fused self-attention (projection + scores + context)


# --- reading and writing ---------------------------------------------------------------------------------------

def load_model(path: Path, load_weights: bool = True) -> onnx.ModelProto:
    """Parse an .onnx file, turning a file that is not one (or is cut short) into a one-line user error.
    Callers vouch for the file first (untrusted.trust), as inspect.resolve does."""
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


def weights_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers (and Constant nodes' tensors), wherever they are stored."""
    def stored(t: onnx.TensorProto) -> int:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            return int(next((e.value for e in t.external_data if e.key == "length"), 0))
        return t.ByteSize()

    return sum(stored(t) for t in list(proto.graph.initializer) + constant_tensors(proto.graph))


def save(proto: onnx.ModelProto, path: Path) -> None:
    """Write `proto` to `path`, its weights to `<path>.data` when they are too big to stay inside."""
    path = Path(path)
    data = path.with_name(package.data_file(path))
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if package.needs_external_data(weights_bytes(proto)):
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024, convert_attribute=False)
    else:
        onnx.save_model(proto, str(path))


def check(path: Path) -> None:
    """onnx.checker's full check, by path (the only way it takes a graph over 2 GiB)."""
    onnx.checker.check_model(str(path), full_check=True)


# --- names, sizes and nodes ------------------------------------------------------------------------------------

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
def symbolic_shape_inference() -> Any:
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
    engine = symbolic_shape_inference()(int_max=2**31 - 1, auto_merge=True, guess_output_rank=False, verbose=0)
    # The int8 forms of the fused ops (from `optimize`) have the shapes of the float ops they replace.
    for quantized, float_op in (("QEmbedLayerNormalization", "EmbedLayerNormalization"), ("QAttention", "Attention")):
        engine.dispatcher_.setdefault(quantized, engine.dispatcher_[float_op])
    # a MatMul of integers whose output is float (optimize fuses the dequantization into it)
    engine.dispatcher_.setdefault("MatMulIntegerToFloat",
                                  lambda node: engine._compute_matmul_shape(node, onnx.TensorProto.FLOAT))
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
        if is_constant(node) and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            t = node.attribute[0].t
            types[node.output[0]] = (dtype_name(t.data_type), list(t.dims))
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.type.HasField("tensor_type"):
            types.setdefault(value.name, (dtype_name(value.type.tensor_type.elem_type), _dims(value.type)))
    return types


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """A node attribute's value by name, or `default` when the node does not set it."""
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
            return math.prod(out) * (a[-2] if attribute(node, "transA", 0) and len(a) >= 2 else a[-1])
        # Output left unknown (inference stops at some contrib ops): every element of A meets N columns of B.
        b = shape(3 if node.op_type == "QLinearMatMul" else 1)
        if not _known(b) or len(b) < 2:
            return None
        return math.prod(a) * (b[-2] if attribute(node, "transB", 0) else b[-1])
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
    hq, _, hv = attribute(node, "qkv_hidden_sizes", None) or [w[-1] // 3] * 3
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


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes of the graph and of the subgraphs inside If/Loop/Scan bodies."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                nodes.extend(all_nodes(sub))
    return nodes


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type of the main graph, most frequent first."""
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())


def tensor_bytes(t: onnx.TensorProto) -> int:
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return len(t.raw_data)
    return math.prod(t.dims) * itemsize




def constant_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """The tensors that Constant nodes of the main graph hold (shapes and scalars, in exported graphs)."""
    return [n.attribute[0].t for n in graph.node if is_constant(n) and n.attribute[0].type == onnx.AttributeProto.TENSOR]


def is_constant(node: onnx.NodeProto) -> bool:
    """A standard-domain Constant node with its one value attribute."""
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1
