"""Look inside an ONNX model: what it computes, measured from the graph alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

MATMUL_OPS = ("MatMul", "Gemm")


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


def node_flops(model: onnx.ModelProto | str | Path, batch: int, seq: int) -> dict[str, int]:
    """FLOPs of every MatMul/Gemm node (2·M·K·N, attention's batched products included) for one input size.

    Other ops (softmax, layer norm, GELU) are linear in the tensor size and a rounding error beside these.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    # ONNX Runtime's symbolic inference follows the Shape -> Reshape arithmetic of exported
    # attention heads (onnx.shape_inference loses it) and knows the contrib ops of fused graphs.
    inferred = SymbolicShapeInference.infer_shapes(fix_input_dims(model, batch, seq), auto_merge=True)
    shapes: dict[str, list[int]] = {t.name: list(t.dims) for t in model.graph.initializer}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    flops = {}
    for node in inferred.graph.node:
        if node.op_type not in MATMUL_OPS:
            continue
        a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not a or not out or not all(out) or not a[-1]:
            raise ValueError(f"cannot size {node.op_type} {node.name}: shape inference left it unknown")
        transposed = node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)
        k = a[0] if transposed else a[-1]
        flops[node.name] = 2 * int(np.prod(out)) * int(k)
    return flops
