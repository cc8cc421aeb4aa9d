"""OpenVINO against onnxpack on one package, like for like, in one run.

    python scripts/peer_openvino.py PACKAGE [--rounds 5] [--threads 2] [--data FOLDER] [--rows N] [--json out.json]

Needs `pip install 'onnxpack[openvino]'` (OpenVINO and NNCF). PACKAGE is only read; it must have an
`optimized` variant (`onnxpack optimize PACKAGE` adds it).

The package's own model.onnx (the fp32 export) runs in OpenVINO three ways:

    OpenVINO f32        INFERENCE_PRECISION_HINT=f32
    OpenVINO default    no precision hint: what OpenVINO picks on this CPU (bf16 where it has
                        AVX512-BF16 or AMX); the table says what it reported
    OpenVINO int8       NNCF post-training quantization, OpenVINO's own recipe
                        (`model_type=TRANSFORMER`, its default preset), calibrated on
                        `--calibration-rows` training rows spread over the split, one text per
                        sample; compiled with OpenVINO's default precision for what stays float

against onnxpack's fp32 (the reference for agreement), `optimized` and the variant `serve` runs on
CPU (`serving_variant(package, "cpu")`), through the Predictor.

Like for like: every engine gets the same feeds, made once by the fp32 Predictor's
`encoded_batches` (the package's tokenizer, length-sorted batches of 32, each padded to its own
longest row), so rows/s is model time only (tokenizing, the same for all, is left out); OpenVINO
compiles the model with dynamic shapes. The same thread count everywhere: ONNX Runtime's
intra-op threads; OpenVINO's INFERENCE_NUM_THREADS with PERFORMANCE_HINT=LATENCY, its setting for
one synchronous request at a time (one stream with every thread on it, as an ONNX Runtime session
runs), read back from each compiled model and printed.

Every engine first runs the whole set once untimed (each batch shape seen once; these logits give
agreement), then `--rounds` interleaved rounds, each running every engine over the whole set once,
the order rotating by one per round. Reported: the median rows/s per engine, its ratio to OpenVINO
f32 and to OpenVINO's fastest form whose label agreement with our fp32 is at least the served
variant's, and each engine's label agreement with our fp32. Targets: `optimized` >= 1.25x
OpenVINO f32; the served variant >= 1.25x that fastest OpenVINO form.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxpack.core import cpu, untrusted
from onnxpack.core.atomic import atomic_write_text
from onnxpack.core.data import load_splits
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.metrics import predictions, scores
from onnxpack.core.package import FP32, Package

BATCH = 32
TARGET = 1.25  # both targets: at least this many times OpenVINO's rows/s
EXTRA = "pip install 'onnxpack[openvino]'"
OPENVINO_MODULES = ("openvino", "nncf")


@dataclass
class Engine:
    name: str
    kind: str  # "onnxpack" or "openvino"
    precision: str  # what it computes in, as its runtime reports it
    run: Callable[[dict[str, np.ndarray]], np.ndarray] = field(repr=False)
    rates: list[float] = field(default_factory=list)  # rows/s, one per round
    logits: np.ndarray | None = field(default=None, repr=False)


def missing_modules() -> list[str]:
    missing = []
    for name in OPENVINO_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def spread(items: Sequence[Any], count: int | None) -> list[Any]:
    """`count` items evenly spread over `items` (a file sorted by source or label still gives a mix); all without a count."""
    if not count or count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def onnxpack_engines(package: Package, variants: list[str], served: str, threads: int):
    """One Predictor per variant (fp32 first: it makes the feeds), each an Engine."""
    from onnxpack.runtime.predictor import Predictor

    predictors, engines = {}, []
    for variant in variants:
        predictor = Predictor(package, provider="cpu", threads=threads, variant=variant)
        predictors[variant] = predictor
        label = f"onnxpack {variant}" + (" (served default)" if variant == served else "")
        precision = {FP32: "f32", "optimized": "f32, fused graph"}.get(variant, variant)
        engines.append(Engine(label, "onnxpack", precision, predictor.run))
    return predictors, engines


def openvino_engines(package: Package, output_name: str, calibration: list[dict[str, np.ndarray]],
                     threads: int) -> tuple[list[Engine], dict[str, Any]]:
    """OpenVINO f32, OpenVINO at its default precision, and NNCF int8, and what OpenVINO reported."""
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)
    core = ov.Core()
    untrusted.trust(package.model_path, package)  # OpenVINO reads the file itself: the Predictor's check first (remembered, so cheap)

    def read() -> Any:
        model = core.read_model(str(package.model_path))
        model.reshape({port.get_any_name(): ov.PartialShape([-1, -1]) for port in model.inputs})  # dynamic batch and length
        return model

    # One synchronous request at a time, as the Predictor runs: the LATENCY hint gives one stream
    # with all INFERENCE_NUM_THREADS on it (read back below).
    base = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    info: dict[str, Any] = {"openvino": ov.__version__, "nncf": nncf.__version__, "config": dict(base),
                            "default_precision": plain(core.get_property("CPU", "INFERENCE_PRECISION_HINT")),
                            "capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
                            "compiled": {}}

    started = time.perf_counter()
    quantized = nncf.quantize(read(), nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(calibration))
    info["calibration_rows"] = len(calibration)
    info["quantize_s"] = round(time.perf_counter() - started, 1)

    engines = []
    for name, model, extra in (("OpenVINO f32", read(), {"INFERENCE_PRECISION_HINT": "f32"}),
                               ("OpenVINO default", read(), {}),
                               ("OpenVINO int8 (NNCF)", quantized, {})):
        compiled = core.compile_model(model, "CPU", base | extra)
        settings = {key: plain(compiled.get_property(key)) for key in
                    ("INFERENCE_PRECISION_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT",
                     "ENABLE_CPU_PINNING")}
        info["compiled"][name] = settings
        if settings["NUM_STREAMS"] != "1" or settings["INFERENCE_NUM_THREADS"] != str(threads):
            raise RuntimeError(f"{name} compiled with {settings}, not one stream of {threads} threads")
        output = next((o for o in compiled.outputs if output_name in o.get_names()), compiled.output(0))
        request = compiled.create_infer_request()
        precision = settings["INFERENCE_PRECISION_HINT"]
        precision = f"int8, the rest {precision}" if model is quantized else precision
        engines.append(Engine(name, "openvino", precision,
                              lambda feed, request=request, output=output: request.infer(feed)[output]))
    return engines, info


def plain(value: Any) -> str:
    """An OpenVINO property as its own short spelling: `bf16`, not `<Type: 'bfloat16'>`; `LATENCY`."""
    if hasattr(value, "to_string"):  # ov.Type
        return value.to_string()
    return getattr(value, "name", None) or str(value)  # enums (PerformanceMode), ints


def one_pass(engine: Engine, batches: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, float]:
    """Logits for every row (in batch order) and the seconds the model calls took."""
    started = time.perf_counter()
    logits = [engine.run(feed) for feed in batches]
    return np.concatenate(logits), time.perf_counter() - started


def measure(package_dir: Path, data: str | None, rows: int | None, calibration_rows: int, rounds: int,
            threads: int, more_variants: list[str], out: Callable[[str], None]) -> dict[str, Any]:
    from onnxpack.runtime.predictor import serving_variant

    package = Package.open(package_dir)
    manifest = package.manifest
    if "optimized" not in manifest.variants:
        raise OnnxpackError(f"package {package.root} has no optimized variant",
                            hint=f"run `onnxpack optimize {package.root}` (on a copy, to leave this one as it is)")
    served = serving_variant(package, "cpu")
    variants = list(dict.fromkeys([FP32, "optimized", served, *more_variants]))
    for variant in variants:
        package.variant_path(variant)  # names the variants it has when one is missing
    splits = load_splits(data, need_train=True, labels=manifest.labels)
    texts = spread(splits.validation.texts, rows)
    gold = np.asarray(spread(splits.validation.labels, rows))

    predictors, engines = onnxpack_engines(package, variants, served, threads)
    reference = predictors[FP32]
    order, batches = [], []
    for indices, feed in reference.encoded_batches(texts, BATCH):
        order += indices
        batches.append(feed)
    calibration = [feed for _, feed in reference.encoded_batches(spread(splits.train.texts, calibration_rows), 1)]
    ov_engines, ov_info = openvino_engines(package, manifest.outputs[0].name, calibration, threads)
    engines += ov_engines

    thresholds = manifest.thresholds if manifest.problem_type == "multi_label_classification" else None
    for engine in engines:  # warm-up: every batch shape once; these logits give agreement
        engine.logits = one_pass(engine, batches)[0]
    for r in range(rounds):
        for engine in engines[r % len(engines):] + engines[:r % len(engines)]:
            engine.rates.append(len(texts) / one_pass(engine, batches)[1])
        out(f"round {r + 1}/{rounds}: " + ", ".join(f"{e.name} {e.rates[-1]:.0f}" for e in engines))

    ours = predictions(engines[0].logits, thresholds)
    rows_out = {}
    for engine in engines:
        labels = predictions(engine.logits, thresholds)
        in_order = np.zeros_like(labels)
        in_order[order] = labels
        rows_out[engine.name] = {
            "kind": engine.kind, "precision": engine.precision,
            "rows_per_s": round(statistics.median(engine.rates), 1), "rounds": engine.rates,
            "agreement": float((labels == ours).all(axis=-1).mean() if labels.ndim == 2 else (labels == ours).mean()),
            "max_abs_logit_diff": float(np.abs(engine.logits - engines[0].logits).max()),
            "mcc": scores(in_order, gold, len(manifest.labels))["mcc"],
        }
    best, targets = compare(rows_out, served)
    return {"package": str(package.root), "data": splits.source, "rows": len(texts), "batch_size": BATCH,
            "rounds": rounds, "threads": threads, "cpu": cpu.summary(), "cpu_features": cpu.record(),
            "served_default": served, "openvino": ov_info, "openvino_best": best, "engines": rows_out, "targets": targets}


def compare(rows: dict[str, dict[str, Any]], served: str) -> tuple[str | None, dict[str, bool]]:
    """Adds each engine's ratios to OpenVINO f32 and to OpenVINO's fastest form whose agreement with
    our fp32 is at least the served variant's (that form, or None where none is); returns it and the
    targets met. A ratio is the median of the rounds' ratios: engines are compared within a round,
    so a machine that speeds up or slows down between rounds moves both sides of each ratio."""
    served_name = f"onnxpack {served} (served default)"
    bar = rows[served_name]["agreement"]
    peers = {n: r for n, r in rows.items() if r["kind"] == "openvino" and r["agreement"] >= bar}
    best = max(peers, key=lambda n: peers[n]["rows_per_s"]) if peers else None

    def ratio(name: str, reference: str) -> float:
        return round(statistics.median(a / b for a, b in zip(rows[name]["rounds"], rows[reference]["rounds"])), 3)

    for name, row in rows.items():
        row["vs_openvino_f32"] = ratio(name, "OpenVINO f32")
        row["vs_openvino_best"] = ratio(name, best) if best else None
    optimized = next(n for n in rows if n.startswith("onnxpack optimized"))
    return best, {
        f"optimized >= {TARGET}x OpenVINO f32": rows[optimized]["vs_openvino_f32"] >= TARGET,
        f"served default ({served}) >= {TARGET}x OpenVINO's fastest form agreeing at least as well"
        f" ({best or 'none does'})": bool(best) and rows[served_name]["vs_openvino_best"] >= TARGET,
    }


def render(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console.width = 200  # a file or a pipe gets the whole table, not 80 columns of wrapped cells
    ov = result["openvino"]
    console.print(f"CPU: {result['cpu']}")
    console.print(f"OpenVINO {ov['openvino']} (NNCF {ov['nncf']}): CPU capabilities {', '.join(ov['capabilities'])}; "
                  f"default INFERENCE_PRECISION_HINT {ov['default_precision']}")
    console.print(f"threads: {result['threads']} everywhere (ONNX Runtime intra-op; OpenVINO "
                  f"INFERENCE_NUM_THREADS with PERFORMANCE_HINT=LATENCY, compiled as: "
                  + "; ".join(f"{name}: {s['NUM_STREAMS']} stream(s), {s['INFERENCE_NUM_THREADS']} threads, "
                              f"precision {s['INFERENCE_PRECISION_HINT']}, pinning {s['ENABLE_CPU_PINNING']}" for name, s in ov["compiled"].items()) + ")")
    console.print(f"NNCF int8: {ov['calibration_rows']} training rows, quantized in {ov['quantize_s']} s")
    best = result["openvino_best"]
    table = Table(title=f"{result['rows']} rows of {result['data']}, batches of {result['batch_size']}; "
                        f"medians of {result['rounds']} interleaved rounds (ratios: of the rounds' ratios)")
    for column in ("engine", "precision", "rows/s", "× OpenVINO f32",
                   f"× {best} (fastest OpenVINO agreeing ≥ served)" if best else "× OpenVINO agreeing ≥ served (none)",
                   "agreement with our fp32", "max |Δ logit|", "MCC", "rows/s per round"):
        table.add_column(column, justify="left" if column in ("engine", "precision") else "right")
    for name, row in result["engines"].items():
        table.add_row(name, row["precision"], f"{row['rows_per_s']:.0f}", f"{row['vs_openvino_f32']:.2f}",
                      "" if row["vs_openvino_best"] is None else f"{row['vs_openvino_best']:.2f}",
                      f"{row['agreement']:.2%}", f"{row['max_abs_logit_diff']:.1e}", f"{row['mcc']:.4f}",
                      " ".join(f"{x:.0f}" for x in row["rounds"]))
    console.print(table)
    for target, met in result["targets"].items():
        console.print(f"{'[green]PASS[/]' if met else '[red]FAIL[/]'}  {target}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is reported)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine")
    parser.add_argument("--data", help="folder of train and validation files (default: onnxpack's usual, CoLA)")
    parser.add_argument("--rows", type=int, help="this many validation rows, spread over the set (default: all)")
    parser.add_argument("--calibration-rows", type=int, default=300, help="training rows NNCF calibrates on")
    parser.add_argument("--variants", default="", help="more onnxpack variants to run, comma-separated")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.rounds < 1 or args.threads < 1 or (args.rows is not None and args.rows < 1) or args.calibration_rows < 1:
        parser.error("--rounds, --threads, --rows and --calibration-rows take positive integers")
    os.environ.setdefault("NNCF_CI", "1")  # NNCF sends usage telemetry unless this is set; it changes nothing else
    if missing := missing_modules():
        print(f"error: this script needs OpenVINO and NNCF ({', '.join(missing)} missing) (hint: {EXTRA})",
              file=sys.stderr)
        return 2
    try:
        result = measure(args.package, args.data, args.rows, args.calibration_rows, args.rounds, args.threads,
                         [v for v in args.variants.split(",") if v], lambda line: print(line, file=sys.stderr, flush=True))
    except OnnxpackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    render(result)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
