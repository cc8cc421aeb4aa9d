"""The int8 cascade: the int8 graph answers every row, and the float graph answers again the rows
the int8 graph is least sure of. Both graphs live in one ONNX file, so every runtime that runs a
package (predict, batch, serve, Triton, onnxruntime-node) runs the cascade with no code of its own.

    int8 logits -> margin per row -> rows under tau -> If any: Gather those rows, run the float
    graph on them, ScatterND its logits over the int8 ones; else: the int8 logits

A row's margin is how far its int8 answer is from changing: half the gap between the top two
softmax scores (|p - 0.5| for two labels), or for a multi-label model the smallest distance of
any label's sigmoid score from its threshold. On the default MiniLM/CoLA package int8's flipped
labels all had margins under 0.21, most under 0.07 (docs/performance.md), so a small tau sends
a small share of rows back to float and keeps nearly every label fp32 gives.

The int8 graph is batch invariant (constant activation scales), so whether a row falls back never
depends on its neighbours, and the float graph's answer for it does not either: the cascade is
batch invariant as a whole.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from onnxpack.core.metrics import predictions

from .scores import sigmoid, softmax

TAU_MAX = 0.5  # a margin is at most 0.5: tau 0.5 sends every row to float
PREFIX = "fallback/"  # the float graph's names inside the cascade


def margins(logits: np.ndarray, thresholds: list[float] | None = None) -> np.ndarray:
    """Per row, how far its answer is from changing (see the module's docstring); numpy's
    twin of the margin the cascade graph computes."""
    if thresholds is not None:
        return np.abs(sigmoid(logits) - np.asarray(thresholds, dtype=np.float32)).min(axis=1)
    top2 = np.sort(softmax(logits), axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) / 2


def fit_tau(float_logits: np.ndarray, int8_logits: np.ndarray, target_agreement: float,
            thresholds: list[float] | None = None) -> float:
    """The smallest tau at which the cascade's labels agree with the float graph's on at least
    `target_agreement` of these rows, counting a row that falls back as agreeing.

    Fit on training rows, which the model has seen and is surer of than of new text, so the
    agreement on new text comes out lower than on these rows: aim above the gate's min_agreement.
    """
    flipped = (predictions(float_logits, thresholds) != predictions(int8_logits, thresholds)).reshape(
        len(float_logits), -1).any(axis=1)
    margin = margins(int8_logits, thresholds)
    allowed = int(np.floor((1 - target_agreement) * len(margin) + 1e-9))  # flips that may stay
    kept = np.sort(margin[flipped])[::-1]  # a flip is kept (not sent back) while its margin >= tau
    if len(kept) <= allowed:
        return 0.0
    # tau just above the (allowed+1)-th largest flipped margin sends that flip and every smaller one back
    return float(min(np.nextafter(np.float32(kept[allowed]), np.float32(1)), TAU_MAX))


def fallback_share(int8_logits: np.ndarray, tau: float, thresholds: list[float] | None = None) -> float:
    """The share of rows whose margin is under tau: the rows the float graph runs again."""
    return float((margins(int8_logits, thresholds) < tau).mean())


def cascade_graph(int8: onnx.ModelProto, fallback: onnx.ModelProto, tau: float,
                  thresholds: list[float] | None = None) -> onnx.ModelProto:
    """One graph: `int8`, then `fallback` on the rows whose margin is under `tau`. Both take the
    same inputs and give one logits output of the same name."""
    inputs = [i.name for i in int8.graph.input]
    (output,) = [o.name for o in int8.graph.output]
    int8_logits = "cascade/int8_logits"
    main = onnx.ModelProto()
    main.CopyFrom(int8)
    graph = main.graph
    for node in graph.node:  # the int8 graph's logits become an intermediate
        node.output[:] = [int8_logits if name == output else name for name in node.output]
    del graph.output[:]

    opset = next(o.version for o in int8.opset_import if o.domain in ("", "ai.onnx"))
    c = _Constants(graph)
    if thresholds is None:  # half the gap between the top two scores
        graph.node.extend([
            helper.make_node("Softmax", [int8_logits], ["cascade/p"], axis=-1),
            helper.make_node("TopK", ["cascade/p", c.int64("k", [2])], ["cascade/top2", "cascade/top2_idx"], axis=-1),
            helper.make_node("Gather", ["cascade/top2", c.int64("i0", 0)], ["cascade/first"], axis=1),
            helper.make_node("Gather", ["cascade/top2", c.int64("i1", 1)], ["cascade/second"], axis=1),
            helper.make_node("Sub", ["cascade/first", "cascade/second"], ["cascade/gap"]),
            helper.make_node("Mul", ["cascade/gap", c.float("half", 0.5)], ["cascade/margin"]),
        ])
    else:  # the label nearest to its threshold
        graph.node.extend([
            helper.make_node("Sigmoid", [int8_logits], ["cascade/p"]),
            helper.make_node("Sub", ["cascade/p", c.float("thresholds", thresholds)], ["cascade/off"]),
            helper.make_node("Abs", ["cascade/off"], ["cascade/distance"]),
            _reduce_min("cascade/distance", "cascade/margin", c, opset),
        ])
    graph.node.extend([
        helper.make_node("Less", ["cascade/margin", c.float("tau", tau)], ["cascade/unsure"]),
        helper.make_node("NonZero", ["cascade/unsure"], ["cascade/where"]),  # [1, k]
        helper.make_node("Size", ["cascade/where"], ["cascade/count"]),
        helper.make_node("Greater", ["cascade/count", c.int64("zero", 0)], ["cascade/any"]),
        helper.make_node("If", ["cascade/any"], [output], then_branch=_rerun(fallback, inputs, output, int8_logits, c),
                         else_branch=helper.make_graph([helper.make_node("Identity", [int8_logits], ["cascade/kept"])],
                                                       "int8_only", [], [_float_out("cascade/kept")])),
    ])
    graph.output.extend([_float_out(output)])
    main.graph.output[0].type.CopyFrom(int8.graph.output[0].type)
    domains = {(o.domain or "ai.onnx"): o.version for o in int8.opset_import}
    for o in fallback.opset_import:
        domains[o.domain or "ai.onnx"] = max(domains.get(o.domain or "ai.onnx", 0), o.version)
    del main.opset_import[:]
    main.opset_import.extend(helper.make_opsetid("" if d == "ai.onnx" else d, v) for d, v in domains.items())
    main.ir_version = max(int8.ir_version, fallback.ir_version)
    return main


def _rerun(fallback: onnx.ModelProto, inputs: list[str], output: str, int8_logits: str,
           c: _Constants) -> onnx.GraphProto:
    """The If's branch that runs the float graph on the unsure rows and writes its logits over theirs."""
    prefixed = compose.add_prefix(fallback, PREFIX)
    rows = [helper.make_node("Squeeze", ["cascade/where", c.int64("axis0", [0])], ["cascade/rows"]),
            helper.make_node("Transpose", ["cascade/where"], ["cascade/row_index"], perm=[1, 0])]
    picks = [helper.make_node("Gather", [name, "cascade/rows"], [PREFIX + name], axis=0) for name in inputs]
    merge = helper.make_node("ScatterND", [int8_logits, "cascade/row_index", PREFIX + output], ["cascade/merged"])
    graph = prefixed.graph
    return helper.make_graph(rows + picks + list(graph.node) + [merge], "float_for_unsure_rows", [],
                             [_float_out("cascade/merged")], initializer=list(graph.initializer),
                             value_info=list(graph.value_info))


class _Constants:
    """Small constants added to the main graph as initializers."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph

    def _add(self, name: str, value: np.ndarray) -> str:
        full = f"cascade/{name}"
        self.graph.initializer.append(numpy_helper.from_array(value, full))
        return full

    def int64(self, name: str, value: int | list[int]) -> str:
        return self._add(name, np.array(value, dtype=np.int64))

    def float(self, name: str, value: float | list[float]) -> str:
        return self._add(name, np.array(value, dtype=np.float32))


def _reduce_min(source: str, out: str, c: _Constants, opset: int) -> onnx.NodeProto:
    if opset >= 18:  # axes became an input
        return helper.make_node("ReduceMin", [source, c.int64("axes1", [1])], [out], keepdims=0)
    return helper.make_node("ReduceMin", [source], [out], axes=[1], keepdims=0)


def _float_out(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
