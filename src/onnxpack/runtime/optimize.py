"""The optimization ladder: faster variants of model.onnx, each gated on the whole validation set.

    fp32       the exported graph (always there)
    optimized  ONNX Runtime's transformer fusions (Attention, EmbedLayerNormalization, BiasGelu, ...)
               and rewrites that suit its CPU kernels (see _build_optimized)
    int8         dynamic int8 quantization of the optimized graph: each call's activations get one
                 scale for the whole batch, so a text's logits depend on its batch neighbours
    int8-static  int8 of the optimized graph with activation scales calibrated once on training
                 rows: a text's logits do not depend on its neighbours, so `serve` may run it
    int8-cascade int8-static for every row, and the optimized graph again for the rows int8 is least
                 sure of, in one file (runtime/cascade.py): fp32's labels at nearly int8's speed
    fp16         half precision of the optimized graph, on a GPU only

A candidate is built in a temp folder, run on every validation row, and joins the package
only if its MCC is within `max_mcc_drop` of fp32's and its labels agree with fp32's on at
least `min_agreement` of the rows; a variant that promises batch invariance must also keep
it. No torch here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnxpack.core import cpu, onnxfile, untrusted
from onnxpack.core.atomic import move_file
from onnxpack.core.config import MIN_CALIBRATION_ROWS, OptimizeConfig
from onnxpack.core.data import Split, load_splits
from onnxpack.core.errors import DataError, OnnxpackError
from onnxpack.core.families import FAMILIES
from onnxpack.core.metrics import METRIC_NAMES, predictions, scores, task_metric
from onnxpack.core.package import (
    FP32,
    MODEL,
    MULTI_LABEL,
    Package,
    graph_files,
    needs_external_data,
    now,
    sha256_file,
    variant_file,
)
from onnxpack.core.registry import Registry

from . import cascade
from .feed import Text, check_row_kind, encode, package_tokenizer
from .monitor import reference_profile
from .predictor import Predictor, available_providers, serving_variant

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
GATE_EXACT_LOGITS = 1e-3  # fusions and rewrites only reorder float sums: MiniLM's logits moved by 2e-6
# Float graphs: 1e-6 between alone and batched; int8-static: 0 on MiniLM (docs/performance.md); dynamic int8: 1e-2
BATCH_INVARIANT_LOGITS = 1e-4
# Passes over the validation set a variant's items_per_s is the best of: serve and predict pick the
# fastest variant by it, and one pass on a shared 2-core machine once timed `optimized` below fp32.
TIMED_PASSES = 3


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """How a variant is built: from which graph, with which recipes, and whether it needs a GPU."""

    # (package, base, out, recipe, training texts) -> info; the texts are empty unless `calibrated`
    build: Callable[[Package, Path, Path, dict[str, Any], Sequence[Text]], dict[str, Any]]
    base: str  # the variant whose graph it starts from
    needs_gpu: bool = False
    calibrated: bool = False  # built with training rows
    # Promised: a text's logits do not depend on the other texts in its batch; the gate holds it to that.
    batch_invariant: bool = False
    # For rewrites meant to keep the model as it is: the most any logit may move from fp32's.
    exact_within: float | None = None
    # Recipes to try in order (the fastest first); the first one the gate accepts is kept.
    recipes: Callable[[OptimizeConfig], list[dict[str, Any]]] = lambda config: [{}]
    # Why the variant does not apply to a package, or None when it does. A variant built from
    # one that does not apply starts from that one's own base instead.
    skip_reason: Callable[[Package], str | None] = lambda package: None


VARIANTS: Registry[VariantSpec] = Registry("variant")


def _transformer_optimizer(package: Package, path: Path, skip_layer_norm: bool = True) -> Any:
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    m = package.manifest
    model_type = _fusion(package)  # RoBERTa, DistilBERT, ELECTRA share BERT's encoder pattern: "bert"
    options = FusionOptions(model_type)
    options.enable_skip_layer_norm = skip_layer_norm
    # opt_level=0: only the fusions, no hardware-specific rewrites, so the file runs on any machine.
    return optimizer.optimize_model(str(path), model_type=model_type, num_heads=m.architecture.get("num_heads", 0),
                                    hidden_size=m.architecture.get("hidden_size", 0), opt_level=0,
                                    optimization_options=options)


def _fusion(package: Package) -> str | None:
    """The ORT transformers optimizer model_type for the package's family, None when none applies."""
    model_type = package.manifest.model_type
    return FAMILIES.get(model_type).fusion if model_type in FAMILIES else None


def _no_fusions(package: Package) -> str | None:
    if _fusion(package) is None:
        return f"not built: ONNX Runtime has no transformer fusions for {package.manifest.model_type}"
    return None


def _build_optimized(package: Package, base: Path, out: Path, recipe: dict[str, Any],
                     calibration: Sequence[Text]) -> dict[str, Any]:
    # SkipLayerNormalization stays unfused: see _residual_sums.
    model = _transformer_optimizer(package, base, skip_layer_norm=False)
    fusions = {op: n for op, n in model.get_fused_operator_statistics().items() if n}
    rewrites = {"residual_sums": _residual_sums(model), "token_types_folded": _fold_constant_token_types(model),
                "first_token_only_nodes": _first_token_only(model)}
    model.prune_graph(allow_remove_graph_inputs=False)
    model.topological_sort()
    _save(model, out)
    return {"fusions": fusions, "rewrites": rewrites}


# Rewrites of the fused graph. Each leaves the logits as they were (to float rounding; the
# gate holds "optimized" to GATE_EXACT_LOGITS) and was timed on MiniLM-L6 with 2 threads.

def _residual_sums(model: Any) -> int:
    """Write each residual Add that feeds a LayerNormalization as the equivalent Sum.

    ONNX Runtime's CPU SkipLayerNormalization is a scalar loop: 0.63 ms for 512 x 384 where
    Add + LayerNormalization take 0.14 ms, so unfused the int8 model runs 12% faster at batch
    32. Not fusing it in the optimizer is not enough: ORT fuses Add -> LayerNormalization again
    when it loads the file, and that fusion matches only Add.
    """
    producers = model.output_name_to_node()
    count = 0
    for node in model.nodes():
        add = producers.get(node.input[0]) if node.op_type == "LayerNormalization" else None
        if add is not None and add.op_type == "Add" and not any(_is_constant(model, i) for i in add.input):
            add.op_type = "Sum"
            count += 1
    return count


def _fold_constant_token_types(model: Any) -> int:
    """Add token-type row 0 to the position table when the token types are always 0.

    The export feeds no token_type_ids, so BERT expands its all-zero buffer through some 35
    shape nodes per call: 0.1 ms of a 1.8 ms int8 call at batch 1. With the segment input
    gone, EmbedLayerNormalization adds word + (position + type 0): the same sum.
    """
    embed = next((n for n in model.nodes() if n.op_type == "EmbedLayerNormalization"), None)
    if embed is None or len(embed.input) < 5 or not embed.input[1] or not embed.input[4]:
        return 0
    positions = model.get_initializer(embed.input[3])
    types = model.get_initializer(embed.input[4])
    if positions is None or types is None or not _zero_for_every_length(model, embed.input[1], positions.dims[0]):
        return 0
    folded = onnx.numpy_helper.to_array(positions) + onnx.numpy_helper.to_array(types)[0]
    name = f"{embed.input[3]}_plus_token_type_0"
    model.add_initializer(onnx.numpy_helper.from_array(folded.astype(np.float32), name))
    embed.input[1], embed.input[3], embed.input[4] = "", name, ""
    return 1


def _zero_for_every_length(model: Any, tensor: str, max_length: int) -> bool:
    """Whether `tensor` reads the inputs only through their shapes and is all zeros at every length."""
    import onnxruntime as ort

    graph = model.model.graph
    producers = model.output_name_to_node()
    chosen, wanted = set(), [tensor]
    while wanted:  # the nodes it is computed from
        node = producers.get(wanted.pop())
        if node is not None and id(node) not in chosen:
            chosen.add(id(node))
            wanted += node.input
    nodes = [node for node in graph.node if id(node) in chosen]  # graph order is topological
    reads = {name for node in nodes for name in node.input}
    inputs = [i for i in graph.input if i.name in reads]
    if any(node.op_type != "Shape" and {i.name for i in inputs} & set(node.input) for node in nodes):
        return False  # it depends on the token values, not only on their shape
    output = onnx.helper.make_empty_tensor_value_info(tensor)
    sub = onnx.helper.make_model(
        onnx.helper.make_graph(nodes, "token_types", inputs, [output],
                               [t for t in graph.initializer if t.name in reads]),
        opset_imports=model.model.opset_import, ir_version=model.model.ir_version)
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        for length in range(1, max_length + 1):
            feed = {i.name: np.zeros((batch, length), np.int64) for i in inputs}
            if session.run(None, feed)[0].any():
                return False
    return True


# Element-wise ops and MatMul by a constant act on each token's row alone.
_ROW_WISE = {"MatMul", "Add", "Sum", "Sub", "Mul", "Div", "LayerNormalization", "BiasGelu", "Gelu", "FastGelu",
             "Relu", "Tanh", "Erf"}


def _first_token_only(model: Any) -> int:
    """Run the last layer's row-wise tail on the first ([CLS]) token only; returns how many nodes.

    A classifier that pools the first token reads one row of the last layer. Everything after
    the last attention is row-wise (output projection, residual, LayerNorm, feed-forward), so
    taking that row right after the attention gives the same logits for 1/seq_len of the work:
    at 16 tokens, 12% of the model's FLOPs.
    """
    pick = next((n for n in model.nodes() if n.op_type == "Gather" and onnxfile.attribute(n, "axis", 0) == 1
                 and _scalar_constant(model, n.input[1])), None)
    if pick is None:
        return 0
    producers, consumers = model.output_name_to_node(), model.input_name_to_nodes()
    outputs = {o.name for o in model.model.graph.output}
    tail: list[onnx.NodeProto] = []  # nodes whose every result feeds only the tail or the pick

    def joins(node: onnx.NodeProto | None) -> bool:
        if node is None or node.op_type not in _ROW_WISE or node.output[0] in outputs or node in tail:
            return False
        if node.op_type == "LayerNormalization" and onnxfile.attribute(node, "axis", -1) != -1:
            return False
        constants = [i for i in node.input if _is_constant(model, i)]
        if node.op_type == "MatMul" and constants != node.input[1:]:
            return False  # activation x activation (attention scores) mixes rows
        if node.op_type != "MatMul" and any(np.ndim(model.get_constant_value(i)) > 1 for i in constants):
            return False  # a constant that may vary along the sequence axis
        return all(c is pick or c in tail for c in consumers.get(node.output[0], []))

    frontier = [producers.get(pick.input[0])]
    while frontier:
        node = frontier.pop()
        if joins(node):
            tail.append(node)
            frontier += [producers.get(i) for i in node.input if i and not _is_constant(model, i)]
    if not tail:
        return 0
    # Inputs from outside the tail (the attention output, the residual) get the pick instead.
    made = {o for n in tail for o in n.output}
    picked: dict[str, str] = {}
    for node in tail:
        for k, name in enumerate(node.input):
            if name and name not in made and not _is_constant(model, name):
                if name not in picked:
                    picked[name] = f"{name}_first_token"
                    model.add_node(onnx.helper.make_node("Gather", [name, pick.input[1]], [picked[name]], axis=1,
                                                         name=f"{pick.name}_{len(picked)}"))
                node.input[k] = picked[name]
    # The tail's last node now writes what the pick wrote; rows changed shape, so drop their value_info.
    producers[pick.input[0]].output[0] = pick.output[0]
    model.remove_node(pick)
    stale = [v for v in model.model.graph.value_info if v.name in made]
    for v in stale:
        model.model.graph.value_info.remove(v)
    return len(tail)


def _is_constant(model: Any, name: str) -> bool:
    return model.get_initializer(name) is not None or model.get_constant_value(name) is not None


def _scalar_constant(model: Any, name: str) -> bool:
    value = model.get_constant_value(name)
    return value is not None and np.ndim(value) == 0


def _int8_recipes(config: OptimizeConfig) -> list[dict[str, Any]]:
    # Signed int8 weights per tensor use the fastest kernels (VNNI's u8 x s8); per-channel scales
    # and unsigned weights cost some speed and keep more accuracy. On MiniLM/CoLA per-tensor s8
    # dropped MCC by 0.029, per-channel s8 by 0.012, per-channel u8 by 0.005.
    recipes = [{"weight_type": "QInt8", "per_channel": False}, {"weight_type": "QInt8", "per_channel": True},
               {"weight_type": "QUInt8", "per_channel": True}]
    return [r for r in recipes if r["per_channel"]] if config.per_channel else recipes


def _save(model: Any, out: Path) -> None:
    """ORT's own save (it adds the com.microsoft opset its fused ops need); weights beside the graph,
    as `<file>.data`, when they pass the protobuf limit."""
    model.save_model_to_file(str(out), use_external_data_format=needs_external_data(onnxfile.weights_bytes(model.model)))


def _build_int8(package: Package, base: Path, out: Path, recipe: dict[str, Any],
                calibration: Sequence[Text]) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Weights to int8 once; activations are quantized per call (no calibration data needed).
    # ONNX shape inference cannot type the outputs of the fused contrib ops: they are float.
    with quiet_quantizer():
        quantize_dynamic(base, out, weight_type=QuantType[recipe["weight_type"]], per_channel=recipe["per_channel"],
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
                         # a base whose weights live beside it: the quantized graph keeps them beside it too
                         use_external_data_format=len(graph_files(Path(base))) > 1)
    return dict(recipe)


def _build_int8_static(package: Package, base: Path, out: Path, recipe: dict[str, Any],
                       training: Sequence[Text]) -> dict[str, Any]:
    """The int8 variant's graph (QAttention, MatMulInteger) with fixed activation scales.

    ONNX Runtime's integer-op quantizer takes calibrated ranges as well as dynamic ones: each
    activation then goes through a QuantizeLinear with a constant scale instead of a
    DynamicQuantizeLinear, so every value is rounded on its own and a text's logits do not
    depend on its batch. On MiniLM it ran 1.2-1.5x as fast as the float graph; the QDQ format
    was slower than float (ONNX Runtime 1.32 runs its MatMuls as weight-only MatMulNBits in
    float; docs/performance.md).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantizationMode, QuantType
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        create_calibrator,
    )
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer

    m = package.manifest
    tokenizer = package_tokenizer(package.tokenizer_path, m.max_length, m.pad_token_id)
    names = [t.name for t in m.inputs]
    method = recipe["calibration_method"]
    calibration = spread(training, recipe["calibration_rows"])

    class Rows(CalibrationDataReader):
        """MinMax: one text per call, so no padding enters the ranges. The histogram calibrators
        (Percentile, Entropy) stack their calls' tensors and need one shape: one padded batch."""

        def __init__(self) -> None:
            self.batches = iter([calibration] if method != "MinMax" else [[text] for text in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            texts = next(self.batches, None)
            return None if texts is None else encode(tokenizer, list(texts), names)

    op_types = ["MatMul", "Attention"]
    external = len(graph_files(Path(base))) > 1
    with quiet_quantizer(), tempfile.TemporaryDirectory(prefix="calibration-", dir=out.parent) as tmp:
        # The calibrator measures only tensors whose type it knows, and ONNX's shape inference
        # cannot type the fused contrib ops' outputs; ONNX Runtime's symbolic one can.
        typed = onnxfile.symbolic_shape_inference().infer_shapes(onnx.load(str(base)), auto_merge=True)
        typed_path = Path(tmp) / "typed.onnx"
        onnx.save(typed, str(typed_path), save_as_external_data=external)
        calibrator = create_calibrator(typed_path, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod[method],
                                       use_external_data_format=external)
        calibrator.collect_data(Rows())
        ranges = calibrator.compute_data()
        # reduce_range (7-bit weights) and nodes left in float are recipes scripts/int8_recipes.py tries
        quantizer = ONNXQuantizer(typed, recipe["per_channel"], recipe.get("reduce_range", False),
                                  QuantizationMode.IntegerOps, True, QuantType[recipe["weight_type"]], QuantType.QUInt8,
                                  ranges, None, recipe.get("nodes_to_exclude"), op_types,
                                  {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
        quantizer.quantize_model()
        fused = _fuse_dequantize(quantizer.model.model)
        quantizer.model.save_model_to_file(str(out), use_external_data_format=external)
    return dict(recipe) | {"calibration_rows": len(calibration), "calibration_split": "train",
                           "rewrites": {"dequantize_fused": fused}}


def _fuse_dequantize(model: onnx.ModelProto) -> int:
    """Write each MatMulInteger -> Cast -> Mul(a_scale * b_scale) [-> Add(bias)] of a statically
    quantized graph as one MatMulIntegerToFloat, which scales (and adds the bias) as it writes
    its output. ONNX Runtime fuses this itself only after a DynamicQuantizeLinear; after the
    constant-scale QuantizeLinear the Cast and Mul stayed, 15% of the int8 model's time at
    batch 32 x 16 tokens on an AMX machine (docs/performance.md). Returns how many it fused."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    constants = {t.name for t in graph.initializer}

    def only_consumer(name: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in outputs else None

    removed: set[int] = set()
    fused = 0
    for matmul in [n for n in graph.node if n.op_type == "MatMulInteger"]:
        cast = only_consumer(matmul.output[0])
        scale = only_consumer(cast.output[0]) if cast is not None and cast.op_type == "Cast" else None
        if scale is None or scale.op_type != "Mul":
            continue
        product = producer.get(scale.input[1] if scale.input[0] == cast.output[0] else scale.input[0])
        quantize = producer.get(matmul.input[0])
        if (product is None or product.op_type != "Mul" or quantize is None or quantize.op_type != "QuantizeLinear"
                or quantize.input[1] not in product.input):
            continue
        a_scale = quantize.input[1]
        b_scale = product.input[1] if product.input[0] == a_scale else product.input[0]
        bias_add = only_consumer(scale.output[0])
        bias = None
        if bias_add is not None and bias_add.op_type == "Add":
            bias = next((i for i in bias_add.input if i != scale.output[0] and i in constants), None)
        last = bias_add if bias is not None else scale
        zero_points = list(matmul.input[2:4]) + [""] * (4 - len(matmul.input))
        graph.node.insert(list(graph.node).index(matmul), onnx.helper.make_node(
            "MatMulIntegerToFloat", [matmul.input[0], matmul.input[1], a_scale, b_scale, *zero_points[:2],
                                     *([bias] if bias else [])],
            [last.output[0]], name=f"{matmul.name}_to_float", domain="com.microsoft"))
        removed |= {id(matmul), id(cast), id(scale), id(last)}
        if len(consumers.get(product.output[0], [])) == 1:
            removed.add(id(product))
        fused += 1
    kept = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    if fused and not any(o.domain == "com.microsoft" for o in model.opset_import):  # e.g. a graph with no fusions
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return fused


def _int8_static_recipes(config: OptimizeConfig) -> list[dict[str, Any]]:
    # The int8 ladder with MinMax ranges: on MiniLM/CoLA Percentile and Entropy were no more
    # accurate and no faster (docs/performance.md).
    return [r | {"activation_type": "QUInt8", "calibration_method": "MinMax", "calibration_rows": config.calibration_rows}
            for r in _int8_recipes(config)]


_CASCADE_FIT = ("tau", "target_agreement", "fit_rows")  # the cascade's own recipe keys, beside int8-static's


def _build_int8_cascade(package: Package, base: Path, out: Path, recipe: dict[str, Any],
                        training: Sequence[Text]) -> dict[str, Any]:
    """int8-static's graph with `base` (the float graph it was quantized from) behind it for the
    rows whose int8 margin is under tau; tau fitted on training rows unless the recipe fixes it."""
    int8 = out.with_name("int8-static.onnx")
    info = _build_int8_static(package, base, int8, {k: v for k, v in recipe.items() if k not in _CASCADE_FIT}, training)
    untrusted.remember(int8)
    m = package.manifest
    thresholds = m.thresholds if m.problem_type == MULTI_LABEL else None
    fit = spread(training, recipe["fit_rows"])
    float_logits, int8_logits = (_logits(package, path, fit) for path in (base, int8))
    tau = recipe["tau"] if recipe["tau"] is not None else cascade.fit_tau(float_logits, int8_logits,
                                                                          recipe["target_agreement"], thresholds)
    unsure = cascade.margins(int8_logits, thresholds) < tau
    same = (predictions(float_logits, thresholds) == predictions(int8_logits, thresholds)).reshape(len(fit), -1)
    onnxfile.save(cascade.cascade_graph(onnxfile.load_model(int8), onnxfile.load_model(base), tau, thresholds), out)
    for f in graph_files(int8):
        f.unlink()
    return info | {"cascade": {"tau": tau, "target_agreement": recipe["target_agreement"], "fit_rows": len(fit),
                               "fit_split": "train", "fit_fallback_share": round(float(unsure.mean()), 4),
                               "fit_agreement": round(float((same.all(axis=1) | unsure).mean()), 4),
                               "int8_alone_fit_agreement": round(float(same.all(axis=1).mean()), 4)}}


def _int8_cascade_recipes(config: OptimizeConfig) -> list[dict[str, Any]]:
    # Per-channel weights first: they flip the fewest labels, so the fewest rows go back to float,
    # and with VNNI they ran as fast as per-tensor ones (docs/performance.md).
    fit = dict(zip(_CASCADE_FIT, (config.cascade_tau, config.cascade_agreement, config.cascade_fit_rows)))
    return [{"weight_type": weights, "per_channel": True, "activation_type": "QUInt8", "calibration_method": "MinMax",
             "calibration_rows": config.calibration_rows} | fit for weights in ("QInt8", "QUInt8")]


def _logits(package: Package, model_file: Path, texts: Sequence[Text]) -> np.ndarray:
    with Predictor(package, variant=FP32, model_file=model_file) as predictor:
        return predictor.predict_logits(texts)


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs on the root logger: a line per tensor, and advice to
    pre-process that does not apply to an already fused graph. Errors still show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _build_fp16(package: Package, base: Path, out: Path, recipe: dict[str, Any],
                calibration: Sequence[Text]) -> dict[str, Any]:
    model = _transformer_optimizer(package, base)
    model.convert_float_to_float16(keep_io_types=True)  # inputs stay int64, logits stay float32
    _save(model, out)
    return {"keep_io_types": True}


VARIANTS.register("optimized")(VariantSpec(_build_optimized, base=FP32, exact_within=GATE_EXACT_LOGITS,
                                           skip_reason=_no_fusions))
VARIANTS.register("int8")(VariantSpec(_build_int8, base="optimized", recipes=_int8_recipes))
VARIANTS.register("int8-static")(VariantSpec(_build_int8_static, base="optimized", recipes=_int8_static_recipes,
                                             calibrated=True, batch_invariant=True))
VARIANTS.register("int8-cascade")(VariantSpec(_build_int8_cascade, base="optimized", recipes=_int8_cascade_recipes,
                                              calibrated=True, batch_invariant=True))
VARIANTS.register("fp16")(VariantSpec(_build_fp16, base=FP32, needs_gpu=True))


@dataclasses.dataclass
class GateResult:
    """One variant on the whole validation set, against fp32."""

    variant: str
    accepted: bool
    reason: str  # why it was rejected or skipped; "" when accepted
    figures: dict[str, Any]  # mcc, acc, mcc_drop, agreement, max_abs_diff, items_per_s, ...


@dataclasses.dataclass(frozen=True)
class Gate:
    """A rule every candidate must pass to join the package.

    `reason` is formatted with the candidate's figures and with `spec`, `config`, `metric_name`
    (MCC or micro-F1), `score` (the candidate's) and `drop` (fp32's score minus the candidate's).
    """

    name: str
    passes: Callable[[dict[str, Any], VariantSpec, OptimizeConfig], bool]  # (figures, spec, config)
    reason: str
    # False for a promise of the variant itself (not of a recipe): its reason names no recipe.
    names_recipe: bool = True


def _metric_drop(figures: dict[str, Any]) -> float:
    return figures[f"{figures['metric']}_drop"]


# In order: the first that fails is the reason. The labels' agreement comes before the metric
# because a steady metric can hide flipped labels.
GATES = (
    Gate("exact",
         lambda figures, spec, config: spec.exact_within is None or figures["max_abs_diff"] <= spec.exact_within,
         "logits moved by {max_abs_diff:.2g} from fp32's (> {spec.exact_within}): the rewrite changed the model",
         names_recipe=False),
    Gate("batch invariance", lambda figures, spec, config: not spec.batch_invariant or figures["batch_invariant"],
         "a text's logits moved by {batch_drift:.2g} between running alone and in a batch "
         "(> " + str(BATCH_INVARIANT_LOGITS) + "): not batch invariant"),
    Gate("agreement", lambda figures, spec, config: figures["agreement"] >= config.min_agreement,
         "labels agree with fp32's on {agreement:.2%} of rows (< {config.min_agreement:.0%})"),
    Gate("metric", lambda figures, spec, config: _metric_drop(figures) <= config.max_mcc_drop,
         "{metric_name} {score:.4f} is {drop:.4f} below fp32's (> {config.max_mcc_drop})"),
)


class Ladder:
    """One optimize run: the package, the rows it is gated and calibrated on, fp32's reference
    run (made when the ladder is set up), and every variant built and gated so far.

    A variant is built and gated at most once, also when it is another's base: an accepted graph
    is the starting point of the rungs above it, but only asked-for variants join the package.
    """

    def __init__(self, package: Package, config: OptimizeConfig, validation: Split, training: list[Text],
                 scratch: Path, step: Callable[[str], None]) -> None:
        self.package = package
        self.config = config
        self.texts = validation.texts
        self.labels = np.array(validation.labels)
        self.training = training  # empty unless an asked-for variant is calibrated
        self.scratch = scratch  # where candidates are built, inside the package folder
        self.step = step
        multi_label = package.manifest.problem_type == MULTI_LABEL
        self.metric = task_metric(multi_label)
        self.thresholds = package.manifest.thresholds if multi_label else None
        self.gpu = [p for p in GPU_PROVIDERS if p in available_providers()]
        step("fp32: validation run")
        self.fp32_logits, self.fp32_figures = _gate_run(package, None, self.texts, self.labels, self.thresholds,
                                                        config)
        self.built: dict[str, Path] = {FP32: package.model_path}  # accepted graphs, the bases of later rungs
        self.logits: dict[str, np.ndarray] = {FP32: self.fp32_logits}  # each variant's last validation run
        self.entries: dict[str, dict[str, Any]] = {}  # accepted variants' manifest entries
        self.gated: dict[str, GateResult] = {}

    def result(self, name: str) -> GateResult:
        """An asked-for variant's result; skipped when it needs a GPU and this machine has none."""
        if VARIANTS.get(name).needs_gpu and not self.gpu:
            return GateResult(name, False, "skipped: needs a GPU execution provider "
                              f"({', '.join(GPU_PROVIDERS)}); this machine has none", {})
        return self._gate(name)

    def _gate(self, name: str) -> GateResult:
        """`name` built and gated, once: a base asked for again gets the same result."""
        if name not in self.gated:
            self.gated[name] = self._build_and_gate(name)
        return self.gated[name]

    def add_accepted(self, results: list[GateResult]) -> None:
        """Add the accepted ones of `results` (the asked-for variants) to the package, manifest last."""
        keep = [r.variant for r in results if r.accepted]  # in ladder order
        if keep:
            _add_variants(self.package, {name: self.built[name] for name in keep},
                          {name: self.entries[name] for name in keep}, self.fp32_figures, results, self.config)

    def store_reference(self, data: str) -> None:
        """The reference profile `monitor` and serve's /metrics compare live answers with, once per
        package: the validation run of the variant `serve` now runs (run again only when that one was
        accepted by an earlier optimize and not rebuilt now)."""
        served = serving_variant(self.package, self.config.provider)
        gated = self.gated.get(served)
        logits = self.logits[served] if served == FP32 or (gated and gated.accepted) else None
        if logits is None:
            with Predictor(self.package, provider=self.config.provider, threads=self.config.threads,
                           variant=served) as predictor:
                logits = predictor.predict_logits(self.texts, self.config.batch_size)
        self.package.update_manifest(reference=reference_profile(self.package, self.texts, logits, served, data))

    def _base(self, name: str) -> tuple[str, Path]:
        """The variant `name` is built from, and its graph (built and gated first when need be)."""
        base_variant = VARIANTS.get(name).base
        while base_variant != FP32 and VARIANTS.get(base_variant).skip_reason(self.package):
            base_variant = VARIANTS.get(base_variant).base  # e.g. int8 straight from fp32 when nothing fuses
        if base_variant not in self.built:  # e.g. int8 asked for alone: build its base without adding it
            base = self._gate(base_variant)
            if not base.accepted:
                raise OnnxpackError(f"{name} is built from {base_variant}, which the gate rejected: {base.reason}")
        return base_variant, self.built[base_variant]

    def _build_and_gate(self, name: str) -> GateResult:
        """Build each recipe in turn and keep the first that passes every gate."""
        spec = VARIANTS.get(name)
        if reason := spec.skip_reason(self.package):
            return GateResult(name, False, reason, {})
        base_variant, base = self._base(name)
        result = GateResult(name, False, "no recipe", {})
        for attempt, recipe in enumerate(spec.recipes(self.config)):
            started = time.perf_counter()
            path, info = self._build(name, attempt, recipe, base, base_variant)
            build_seconds = round(time.perf_counter() - started, 1)
            result = self._judge(name, recipe, self._figures(name, path))
            if result.accepted:
                self.built[name] = path
                self.entries[name] = {"file": variant_file(name), "built_from": base_variant, **info,
                                      "build_seconds": build_seconds, **result.figures}
                return result
        return result

    def _build(self, name: str, attempt: int, recipe: dict[str, Any], base: Path,
               base_variant: str) -> tuple[Path, dict[str, Any]]:
        """One candidate graph in the scratch folder, and what its build function says of it."""
        spec = VARIANTS.get(name)
        # A folder per attempt, the file under its final name: a weights file beside it is named after it.
        path = self.scratch / f"{name}-{attempt}" / variant_file(name)
        path.parent.mkdir()
        self.step(f"{name}: building from {base_variant} {recipe or ''}")
        if spec.calibrated:
            self.step(f"{name}: calibrating on {min(len(self.training), self.config.calibration_rows)} training rows")
        info = spec.build(self.package, base, path, recipe, self.training if spec.calibrated else [])
        untrusted.remember(path)  # built here from a checked graph: no need to probe it
        return path, info

    def _figures(self, name: str, path: Path) -> dict[str, Any]:
        """The candidate's validation run, and how far it moved from fp32's."""
        self.step(f"{name}: validation run")
        provider = self.gpu[0] if VARIANTS.get(name).needs_gpu else self.config.provider
        logits, figures = _gate_run(self.package, path, self.texts, self.labels, self.thresholds,
                                    dataclasses.replace(self.config, provider=provider))
        self.logits[name] = logits
        same = predictions(logits, self.thresholds) == predictions(self.fp32_logits, self.thresholds)
        return figures | {"metric": self.metric,
                          f"{self.metric}_drop": self.fp32_figures[self.metric] - figures[self.metric],
                          "agreement": float(same.reshape(len(self.labels), -1).all(axis=1).mean()),
                          "max_abs_diff": float(np.abs(logits - self.fp32_logits).max())}

    def _judge(self, name: str, recipe: dict[str, Any], figures: dict[str, Any]) -> GateResult:
        """Accepted when it passes every gate; else rejected for the first it fails."""
        spec = VARIANTS.get(name)
        failed = next((gate for gate in GATES if not gate.passes(figures, spec, self.config)), None)
        if failed is None:
            return GateResult(name, True, "", figures)
        reason = failed.reason.format(**figures, spec=spec, config=self.config,
                                      metric_name=METRIC_NAMES[self.metric], score=figures[self.metric],
                                      drop=_metric_drop(figures))
        if failed.names_recipe:
            reason += f" with {recipe}" if recipe else ""
            log.info("%s %s rejected: %s", name, recipe, reason)
        else:
            log.info("%s rejected: %s", name, reason)
        return GateResult(name, False, reason, figures)


def optimize(package_dir: str | Path, config: OptimizeConfig | None = None,
             progress: Callable[[str], None] | None = None) -> list[GateResult]:
    """Build, gate and add the asked-for variants; returns every result, accepted or not.

    The package changes only at the end, one file at a time, manifest last; a failure
    before that leaves it exactly as it was.
    """
    config = config or OptimizeConfig()
    config.validate()
    for name in config.variants:
        VARIANTS.get(name)  # an unknown name fails here, naming the known ones, before any work
    package = Package.open(package_dir)
    package.require_onnx("optimize")
    validation, training, source = _gate_rows(package, config)
    with tempfile.TemporaryDirectory(prefix=".optimize-", dir=package.root) as scratch:
        ladder = Ladder(package, config, validation, training, Path(scratch), progress or (lambda message: None))
        results = [ladder.result(name) for name in config.variants]
        ladder.add_accepted(results)
        if any(r.accepted for r in results):  # else the package stays exactly as it was
            ladder.store_reference(source)
    return [GateResult(FP32, True, "", ladder.fp32_figures)] + results


def _gate_rows(package: Package, config: OptimizeConfig) -> tuple[Split, list[Text], str]:
    """The validation rows every variant is gated on, the training texts that calibrated variants
    are built with (none when no asked-for variant is calibrated), and where the rows came from."""
    m = package.manifest
    multi_label = m.problem_type == MULTI_LABEL
    calibrated = [name for name in config.variants if VARIANTS.get(name).calibrated]
    try:
        splits = load_splits(config.data, need_train=bool(calibrated), labels=m.labels, multi_label=multi_label)
    except DataError as e:
        if not calibrated:
            raise
        # the validation's own error, if it has one
        load_splits(config.data, need_train=False, labels=m.labels, multi_label=multi_label)
        names = ", ".join(calibrated)
        raise OnnxpackError(f"{names} calibrates on training rows: {e.message}",
                            hint=f"add a training file to the data, or leave {names} out of --variants") from None
    check_row_kind(m.pairs, splits)
    if not calibrated:
        return splits.validation, [], splits.source
    texts = splits.train.texts
    if len(texts) < MIN_CALIBRATION_ROWS:
        names = ", ".join(calibrated)
        raise OnnxpackError(f"{names} calibrates on training rows, and {splits.source} has {len(texts)}; "
                            f"it needs at least {MIN_CALIBRATION_ROWS}",
                            hint=f"add training rows, or leave {names} out of --variants")
    return splits.validation, texts, splits.source


def spread(texts: Sequence[Text], rows: int) -> list[Text]:
    """`rows` texts spread evenly over `texts` (a file sorted by source or label still gives a
    mix); all of them when there are fewer."""
    picked = np.linspace(0, len(texts) - 1, min(rows, len(texts))).round().astype(int)
    return [texts[i] for i in picked]


def _gate_run(package: Package, model_file: Path | None, texts: list[str], labels: np.ndarray,
              thresholds: list[float] | None, config: OptimizeConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Logits for every row, scores, and the throughput of a length-sorted batched pass."""
    with Predictor(package, provider=config.provider, threads=config.threads, variant=FP32,
                   model_file=model_file) as predictor:
        predictor.predict_logits(texts[:config.batch_size], config.batch_size)  # warm-up: allocations, kernels
        seconds = float("inf")
        for _ in range(TIMED_PASSES):
            started = time.perf_counter()
            logits = predictor.predict_logits(texts, config.batch_size)
            seconds = min(seconds, time.perf_counter() - started)
        provider = predictor.providers[0]
        drift = _batch_drift(predictor, texts[:config.batch_size])
    figures = {"n": len(texts), **scores(predictions(logits, thresholds), labels, len(package.manifest.labels)),
               "items_per_s": round(len(texts) / seconds, 1), "provider": provider,
               "batch_size": config.batch_size, "batch_drift": drift, "batch_invariant": drift <= BATCH_INVARIANT_LOGITS,
               "onnxruntime": ort.__version__,  # whose optimizer built it: its fused ops may be new
               "cpu": cpu.record(),  # int8's speed, and without VNNI its answers, depend on the instruction set
               "at": now()}
    return logits, figures


def _batch_drift(predictor: Predictor, texts: list[str]) -> float:
    """How far a text's logits move between running alone and in a batch with the others.

    Float graphs give the same numbers to rounding. Dynamic int8 does not: it quantizes each
    call's activations with one scale for the whole batch, so a text's scores depend on its
    neighbours. A server, which batches strangers' texts together, should not use such a variant unasked.
    """
    together = predictor.predict_logits(texts, len(texts))
    alone = np.concatenate([predictor.predict_logits([text], 1) for text in texts])
    return float(np.abs(together - alone).max())


def _add_variants(package: Package, files: dict[str, Path], entries: dict[str, dict[str, Any]],
                  fp32_figures: dict[str, Any], results: list[GateResult], config: OptimizeConfig) -> None:
    """Move accepted files in, then rewrite the manifest (it never names a file not yet complete). A
    variant built again first leaves the manifest, so a kill between the two never leaves it naming
    a file whose bytes changed."""
    m = package.manifest
    again = [name for name in files if name in m.variants]
    if again:
        package.update_manifest(
            files={f: h for f, h in m.files.items()
                   if f not in {g.name for name in again for g in graph_files(package.root / variant_file(name))}},
            variants={k: v for k, v in m.variants.items() if k not in again})
    hashes = dict(m.files)
    stale: list[Path] = []  # removed once the manifest no longer names them
    for name, path in files.items():
        moving = graph_files(path)
        entries[name] |= {"bytes": sum(os.path.getsize(f) for f in moving),
                          "ops": onnxfile.op_histogram(onnx.load(str(path), load_external_data=False))}
        for old in graph_files(package.root / variant_file(name)):  # a previous run's files of this variant
            hashes.pop(old.name, None)
            if old.name not in {f.name for f in moving}:
                stale.append(old)
        for f in reversed(moving):  # the weights before the graph that names them
            hashes[f.name] = sha256_file(f)
            move_file(f, package.root / f.name)  # synced, renamed in, the folder synced
    variants = {FP32: {"file": MODEL, **fp32_figures,
                       "bytes": sum(os.path.getsize(f) for f in graph_files(package.model_path))},
                **{k: v for k, v in m.variants.items() if k != FP32}, **entries}
    history = m.history + [{"step": "optimize", "at": now(), "max_mcc_drop": config.max_mcc_drop,
                            "min_agreement": config.min_agreement,
                            "accepted": list(files),
                            "rejected": {r.variant: r.reason for r in results if not r.accepted}}]
    package.update_manifest(files=hashes, variants=variants, history=history)
    for path in stale:
        path.unlink(missing_ok=True)
