"""Every int8 recipe tried for a batch-invariant variant, measured the way `optimize` gates them.

    python scripts/int8_recipes.py PACKAGE [--calibration-rows 256] [--threads 2] [--only SUBSTRING,...]

PACKAGE is copied to a temp folder (left as it is); its `optimized` variant is built there if it
has none. Each recipe is built from the optimized graph (or fp32 where the row says so), then run
on the whole validation set at batch 32, length-sorted, as `optimize._gate_run` does. The
machine's speed drifts, so the optimized graph and the recipe are timed in turn, `--rounds` times
each, and "× optimized" is the median of the rounds' ratios. `drift` is `_gate_run`'s (the first 32 texts alone vs together);
`drift, all rows` runs every validation text alone and compares with the batched pass.

Every batch-invariant integer graph also gets its int8 cascade (runtime/cascade.py), as `optimize`
builds int8-cascade: tau fitted on `--fit-rows` training rows to `--cascade-agreement`, the
optimized graph behind it, and the same measures plus the share of rows that go back to float
(on the training rows it was fitted on, and on validation).
Prints a Markdown table (docs/performance.md, "Batch-invariant int8").
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from onnxpack.core.config import OptimizeConfig
from onnxpack.core.data import load_splits
from onnxpack.core.metrics import predictions
from onnxpack.core.package import FP32, Package, variant_file
from onnxpack.runtime.feed import encode, package_tokenizer
from onnxpack.runtime.optimize import (
    _build_int8,
    _build_int8_static,
    _gate_run,
    _int8_static_recipes,
    _logits,
    optimize,
    quiet_quantizer,
    spread,
)
from onnxpack.runtime import cascade
from onnxpack.runtime.predictor import Predictor


class Batch(CalibrationDataReader):
    """The calibration texts as feeds: one per text, or (for the histogram calibrators, which need
    equal shapes) all of them in one batch padded to the longest."""

    def __init__(self, package: Package, texts: list, one_batch: bool) -> None:
        m = package.manifest
        tokenizer = package_tokenizer(package.tokenizer_path, m.max_length, m.pad_token_id)
        names = [t.name for t in m.inputs]
        self.feeds = iter([encode(tokenizer, texts, names)] if one_batch else
                          [encode(tokenizer, [text], names) for text in texts])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def weight_matmuls_only(path: Path) -> list[str]:
    """MatMuls of two activations (attention scores), to leave in float."""
    model = onnx.load(str(path))
    weights = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in weights]


def ffn_output_matmuls(path: Path) -> list[str]:
    """Each layer's second feed-forward MatMul (its input is GELU's long-tailed output): the nodes
    whose float alone helped most, one at a time (about 0.2 of their mean score error each)."""
    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node if n.name.endswith("output/dense/MatMul") and "attention" not in n.name]


def smoothed(base: Path, out: Path, package: Package, calibration: list, alpha: float) -> Path:
    """SmoothQuant's migration, X @ W = (X / s) @ (s W) with s = max|X|^alpha / max|W|^(1 - alpha)
    per input channel, for every weight MatMul and Attention: a Mul before each, weights rescaled."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(base))
    weights = {t.name: t for t in model.graph.initializer}
    targets = [n for n in model.graph.node if n.op_type == "Attention"
               or (n.op_type == "MatMul" and n.input[1] in weights)]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inputs = sorted({n.input[0] for n in targets})
    probe.graph.output.extend(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None) for x in inputs)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    batches = Batch(package, calibration, one_batch=False)
    peak = dict.fromkeys(inputs, 0.0)
    while (feed := batches.get_next()) is not None:
        for x, value in zip(inputs, session.run(inputs, feed)):
            peak[x] = np.maximum(peak[x], np.abs(value).reshape(-1, value.shape[-1]).max(axis=0))
    for node in targets:
        w = numpy_helper.to_array(weights[node.input[1]])
        scale = np.clip(np.maximum(peak[node.input[0]], 1e-5) ** alpha
                        / np.maximum(np.abs(w).max(axis=1), 1e-5) ** (1 - alpha), 1e-2, 1e2).astype(np.float32)
        weights[node.input[1]].CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32), node.input[1]))
        model.graph.initializer.append(numpy_helper.from_array(1 / scale, f"{node.name}/smooth"))
        mul = helper.make_node("Mul", [node.input[0], f"{node.name}/smooth"], [f"{node.name}/smoothed"])
        node.input[0] = mul.output[0]
        model.graph.node.insert(list(model.graph.node).index(node), mul)
    onnx.save(model, str(out))
    return out


def recipes(package: Package, calibration: list) -> dict[str, Callable[[Path], Any]]:
    optimized, fp32 = package.variant_path("optimized"), package.model_path

    def qdq(base: Path, per_channel: bool, activation: str = "QUInt8", weight: str = "QInt8",
            method: str = "MinMax", fmt: QuantFormat = QuantFormat.QDQ, exclude_scores: bool = False) -> Callable:
        def build(out: Path) -> None:
            with quiet_quantizer():
                quantize_static(str(base), str(out), Batch(package, calibration, one_batch=method != "MinMax"),
                                quant_format=fmt, op_types_to_quantize=["MatMul"], per_channel=per_channel,
                                activation_type=QuantType[activation], weight_type=QuantType[weight],
                                calibrate_method=CalibrationMethod[method],
                                nodes_to_exclude=weight_matmuls_only(base) if exclude_scores else None,
                                extra_options={"MatMulConstBOnly": True})
        return build

    def integer_ops(recipe: dict[str, Any], smooth: float | None = None) -> Callable:
        def build(out: Path) -> None:
            base = optimized if smooth is None else smoothed(optimized, out.with_name("smoothed.onnx"), package,
                                                             calibration, smooth)
            _build_int8_static(package, base, out, recipe | {"calibration_rows": len(calibration)}, calibration)
        return build

    per_channel = {"weight_type": "QInt8", "per_channel": True, "calibration_method": "MinMax"}

    def nbits(block: int) -> Callable:
        def build(out: Path) -> None:
            from onnxruntime.quantization.matmul_nbits_quantizer import (
                MatMulNBitsQuantizer,
            )

            with quiet_quantizer():
                quantizer = MatMulNBitsQuantizer(onnx.load(str(optimized)), bits=8, block_size=block,
                                                 is_symmetric=True, accuracy_level=4)
                quantizer.process()
                quantizer.model.save_model_to_file(str(out))
        return build

    table: dict[str, Callable[[Path], Any]] = {
        "int8 (dynamic), s8 per tensor": lambda out: _build_int8(
            package, optimized, out, {"weight_type": "QInt8", "per_channel": False}, []),
        "int8 (dynamic), s8 per channel": lambda out: _build_int8(
            package, optimized, out, {"weight_type": "QInt8", "per_channel": True}, []),
    }
    for recipe in _int8_static_recipes(OptimizeConfig()):
        table[f"int8-static (QAttention + MatMulInteger), {'u8' if recipe['weight_type'] == 'QUInt8' else 's8'} "
              f"per {'channel' if recipe['per_channel'] else 'tensor'}, MinMax"] = integer_ops(recipe)
    table |= {
        "int8-static, s8 per channel, Percentile": integer_ops(
            {"weight_type": "QInt8", "per_channel": True, "calibration_method": "Percentile"}),
        "int8-static, s8 per channel, Entropy": integer_ops(
            {"weight_type": "QInt8", "per_channel": True, "calibration_method": "Entropy"}),
        "int8-static, s8 per channel, reduce_range (7-bit weights)": integer_ops(per_channel | {"reduce_range": True}),
        "int8-static, s8 per channel, FFN output MatMuls in float": integer_ops(
            per_channel | {"nodes_to_exclude": ffn_output_matmuls(optimized)}),
        "int8-static, s8 per channel, after SmoothQuant (alpha 0.5)": integer_ops(per_channel, smooth=0.5),
        "QDQ MatMul (u8/s8), per tensor, MinMax": qdq(optimized, False),
        "QDQ MatMul (u8/s8), per channel, MinMax": qdq(optimized, True),
        "QDQ MatMul (s8/s8), per channel, MinMax": qdq(optimized, True, activation="QInt8"),
        "QDQ MatMul (u8/u8), per channel, MinMax": qdq(optimized, True, weight="QUInt8"),
        "QDQ MatMul (u8/s8), per channel, Percentile": qdq(optimized, True, method="Percentile"),
        "QDQ MatMul (u8/s8), per channel, Entropy": qdq(optimized, True, method="Entropy"),
        "QDQ every MatMul of the fp32 graph (u8/s8), per channel": qdq(fp32, True),
        "QDQ weight MatMuls of the fp32 graph (u8/s8), per channel": qdq(fp32, True, exclude_scores=True),
        "QDQ weight MatMuls of the fp32 graph (u8/s8), per tensor": qdq(fp32, False, exclude_scores=True),
        "QOperator QLinearMatMul, weight MatMuls of the fp32 graph, per channel": qdq(
            fp32, True, fmt=QuantFormat.QOperator, exclude_scores=True),
        "QOperator QLinearMatMul, optimized graph, per channel": qdq(optimized, True, fmt=QuantFormat.QOperator),
        "MatMulNBits 8-bit, block 32, accuracy_level 4": nbits(32),
        "MatMulNBits 8-bit, block 128, accuracy_level 4": nbits(128),
    }
    return table


def timed(package: Package, optimized: Path, candidate: Path, texts: list, labels: np.ndarray,
          config: OptimizeConfig, rounds: int) -> tuple[float, np.ndarray, dict[str, Any]]:
    """The candidate's median speed ratio to the optimized graph, timed in turn, and its last run."""
    ratios = []
    for _ in range(rounds):
        optimized_speed = _gate_run(package, optimized, texts, labels, None, config)[1]["items_per_s"]
        logits, figures = _gate_run(package, candidate, texts, labels, None, config)
        ratios.append(figures["items_per_s"] / optimized_speed)
    return float(np.median(ratios)), logits, figures


def agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    return float((predictions(logits, None) == predictions(reference, None)).mean())


def drift_all_rows(package: Package, path: Path, texts: list, threads: int) -> float:
    with Predictor(package, variant=FP32, model_file=path, threads=threads) as predictor:
        together = predictor.predict_logits(texts, 32)
        alone = np.concatenate([predictor.predict_logits([text], 1) for text in texts])
    return float(np.abs(together - alone).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--calibration-rows", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated substrings of recipe names")
    parser.add_argument("--rounds", type=int, default=3, help="optimized/recipe timing pairs per recipe")
    parser.add_argument("--fit-rows", type=int, default=OptimizeConfig.cascade_fit_rows)
    parser.add_argument("--cascade-agreement", type=float, default=OptimizeConfig.cascade_agreement)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="int8-recipes-"))
    try:
        root = Path(shutil.copytree(args.package, tmp / "package"))
        package = Package.open(root)
        if "optimized" not in package.manifest.variants:
            optimize(root, OptimizeConfig(variants=("optimized",)))
            package = Package.open(root)
        splits = load_splits(None, need_train=True, labels=package.manifest.labels)
        texts, labels = splits.validation.texts, np.array(splits.validation.labels)
        calibration = spread(splits.train.texts, args.calibration_rows)
        fit = spread(splits.train.texts, args.fit_rows)
        config = OptimizeConfig(threads=args.threads)
        fp32_logits, fp32 = _gate_run(package, None, texts, labels, None, config)
        optimized_path = package.variant_path("optimized")
        print(f"{len(texts)} validation rows, {len(calibration)} calibration rows from {splits.source}; "
              f"fp32 MCC {fp32['mcc']:.4f}, {fp32['items_per_s']} items/s\n")
        fit_float = _logits(package, optimized_path, fit)
        print("| recipe | × optimized | MCC | agreement | drift | drift, all rows | build s "
              "| cascade: tau | falls back (train / validation) | × optimized | MCC | agreement |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        only = [s for s in args.only.split(",") if s]
        for i, (name, build) in enumerate(recipes(package, calibration).items()):
            if only and not any(s in name for s in only):
                continue
            out = tmp / f"recipe-{i}" / variant_file("candidate")
            out.parent.mkdir()
            started = time.perf_counter()
            try:
                build(out)
                seconds = time.perf_counter() - started
                ratio, logits, figures = timed(package, optimized_path, out, texts, labels, config, args.rounds)
            except Exception as e:  # a recipe ONNX Runtime cannot build or run is a row of the table too
                print(f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} | | | | | | |")
                continue
            row = (f"| {name} | {ratio:.2f} | {figures['mcc']:.4f} | {agreement(logits, fp32_logits):.2%} "
                   f"| {figures['batch_drift']:.1e} | {drift_all_rows(package, out, texts, args.threads):.1e} "
                   f"| {seconds:.0f} ")
            if figures["batch_drift"] > 1e-4:  # the cascade needs a batch-invariant int8 graph
                print(row + "| | | | | |", flush=True)
                continue
            fit_int8 = _logits(package, out, fit)
            tau = cascade.fit_tau(fit_float, fit_int8, args.cascade_agreement)
            joined = out.with_name("cascade.onnx")
            onnx.save(cascade.cascade_graph(onnx.load(str(out)), onnx.load(str(optimized_path)), tau), str(joined))
            ratio, cascade_logits, cascade_figures = timed(package, optimized_path, joined, texts, labels, config,
                                                           args.rounds)
            back = (cascade.fallback_share(fit_int8, tau), cascade.fallback_share(logits, tau))
            print(row + f"| {tau:.3f} | {back[0]:.1%} / {back[1]:.1%} | {ratio:.2f} | {cascade_figures['mcc']:.4f} "
                  f"| {agreement(cascade_logits, fp32_logits):.2%} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
