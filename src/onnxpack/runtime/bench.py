"""ONNX Runtime against PyTorch, side by side in one process, with this machine's ceilings.

Every engine runs in its own block (pause, warm-up, repeats) and blocks come in rounds:
PyTorch's and ONNX Runtime's thread pools keep spinning for a while after a call and
would slow whichever engine ran next if calls were interleaved.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort

from onnxpack.core import cpu, untrusted
from onnxpack.core.atomic import atomic_save_png
from onnxpack.core.config import BenchConfig
from onnxpack.core.data import load_splits
from onnxpack.core.errors import DataError
from onnxpack.core.onnxfile import node_flops
from onnxpack.core.package import FP32, MULTI_LABEL, Package, now

from .feed import encode, synthetic_feed, vocab_size
from .optimize import quiet_quantizer
from .predictor import Predictor

SEED_MAX_LENGTH = 128  # the seed project padded every sentence to this


Runner = Callable[[], Any]


def time_blocks(engines: dict[str, Runner], config: BenchConfig) -> dict[str, list[float]]:
    """Seconds per call for each engine, from `rounds` rounds of one block per engine."""
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(config.rounds):
        for name, run in engines.items():
            time.sleep(config.pause_seconds)
            run()
            run()  # warm-up: first calls allocate and pick kernels
            block: list[float] = []
            started = time.perf_counter()
            while len(block) < config.min_repeats or time.perf_counter() - started < config.block_seconds:
                t = time.perf_counter()
                run()
                block.append(time.perf_counter() - t)
            samples[name] += block
    return samples


def latency_row(engine: str, variant: str, batch: int, seq: int, seconds: list[float],
                flops: int | None) -> dict[str, Any]:
    ms = np.array(seconds) * 1000
    p50 = float(np.percentile(ms, 50))
    row = {"engine": engine, "variant": variant, "batch_size": batch, "seq_len": seq,
           "p50_ms": round(p50, 4), "p90_ms": round(float(np.percentile(ms, 90)), 4),
           "p99_ms": round(float(np.percentile(ms, 99)), 4), "items_per_s": round(batch / p50 * 1000, 1),
           "repeats": len(ms)}
    if flops:
        row["gflops"] = _sig(flops / p50 / 1e6)
    return row


def _sig(x: float) -> float:
    """Four significant digits: enough for a ratio, readable in JSON."""
    return float(f"{x:.4g}")


CEILING_SHAPE = (2048, 384, 1536)  # tokens x hidden x FFN width of a small BERT
CEILING_FLOPS = 2 * CEILING_SHAPE[0] * CEILING_SHAPE[1] * CEILING_SHAPE[2]
CEILINGS = {"fp32": "fp32_matmul_gflops", "int8": "int8_matmul_gops"}


def matmul_ceiling_engines(threads: int) -> dict[str, Runner]:
    """This machine's fp32 and dynamic-int8 MatMul through ONNX Runtime (CEILING_SHAPE), as runners
    to time beside the models: the machine's speed drifts, so a ceiling is only good for its own rounds."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    m, k, n = CEILING_SHAPE
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.standard_normal((k, n)) * 0.05).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((m, k)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(fp32))
        with quiet_quantizer():
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
        sessions = {name: ort.InferenceSession(path.read_bytes(), _session_options(threads),
                                               providers=["CPUExecutionProvider"])
                    for name, path in (("fp32", fp32), ("int8", int8))}
    return {name: (lambda s=s: s.run(None, {"x": x})) for name, s in sessions.items()}


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def machine_info(threads: int) -> dict[str, Any]:
    info = {"platform": platform.platform(), "cpu": cpu.record(), "cpu_count": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "onnxruntime": ort.__version__,
            "providers": ort.get_available_providers()}
    try:  # without importing torch: the runtime side never does
        info["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        pass
    return info


# A baseline outside ONNX Runtime (pytorch.bench's PyTorch): given the package, the config and
# the notes to add to, the engines it times, each a function of a feed that returns its runner.
Baseline = Callable[[Package, BenchConfig, list[str]], dict[str, Callable[[dict[str, np.ndarray]], Runner]]]


def bench(package_dir: str | Path, config: BenchConfig | None = None,
          progress: Callable[[str], None] | None = None, baseline: Baseline | None = None) -> dict[str, Any]:
    """Latency and throughput per (engine, variant, batch, sequence), ceilings, speed-ups, end-to-end rows.

    `baseline` adds engines beside ONNX Runtime's (the CLI passes pytorch.bench's PyTorch rows)."""
    config = config or BenchConfig()
    config.validate()
    step = progress or (lambda message: None)
    package = Package.open(package_dir)
    package.require_onnx("bench")
    variants = list(config.variants or package.variant_names())
    for name in variants:
        package.variant_path(name)  # an unknown variant fails here, before any timing
    for name in variants:
        untrusted.trust(package.variant_path(name), package)
    notes: list[str] = []
    baseline_engines = baseline(package, config, notes) if baseline and config.torch else {}
    if config.torch and baseline is None:
        notes.append("PyTorch rows skipped: the baseline needs the torch side (pip install 'onnxpack[train]')")
    fp32_graph = onnx.load(str(package.model_path), load_external_data=False)
    results, ceilings = _latency_rows(package, variants, fp32_graph, baseline_engines, config, step)
    machine = machine_info(config.threads) | {"matmul_shape": list(CEILING_SHAPE)}
    for name, key in CEILINGS.items():  # medians over the shapes' rounds, and how far they drifted
        machine[key] = round(statistics.median(ceilings[name]), 1)
        machine[f"{key}_range"] = [round(min(ceilings[name]), 1), round(max(ceilings[name]), 1)]

    step("tokenizer")
    tokenizer_rows = _tokenizer_rows(package, config)
    step("end-to-end on the validation set")
    dataset = _dataset_rows(package, variants, config, machine, fp32_graph, notes)
    return {"package": str(package.root), "at": now(), "machine": machine,
            "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("checkpoint", "data")},
            "results": results, "tokenizer": tokenizer_rows, "dataset": dataset,
            "speedups": speedups(results), "notes": notes}


def _latency_rows(package: Package, variants: list[str], fp32_graph: onnx.ModelProto,
                  baseline_engines: dict[str, Callable[[dict[str, np.ndarray]], Runner]], config: BenchConfig,
                  step: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """A row per engine and (batch, sequence), each shape's engines timed in the same rounds as this
    machine's MatMul ceilings; the rows, and each ceiling as measured at each shape (GFLOP/s)."""
    sessions = {name: ort.InferenceSession(str(package.variant_path(name)), _session_options(config.threads),
                                           providers=["CPUExecutionProvider"]) for name in variants}
    input_names = {name: {i.name for i in s.get_inputs()} for name, s in sessions.items()}
    vocab = vocab_size(package)
    ceiling_engines = {f"ceiling/{name}": run for name, run in matmul_ceiling_engines(config.threads).items()}
    graphs = {name: fp32_graph if name == FP32 else onnx.load(str(package.variant_path(name)), load_external_data=False)
              for name in variants}
    results, ceilings = [], {name: [] for name in CEILINGS}
    for seq in config.seq_lens:
        for batch in config.batch_sizes:
            step(f"batch {batch} x {seq} tokens")
            model_flops = sum(node_flops(fp32_graph, batch, seq).values())
            # What each graph's kernels do: a variant may skip work (the first-token rewrite).
            graph_flops = {name: model_flops if name == FP32 else sum(node_flops(graph, batch, seq).values())
                           for name, graph in graphs.items()}
            feed = synthetic_feed(batch, seq, vocab)
            engines: dict[str, Runner] = {}
            for name, runner in baseline_engines.items():
                engines[f"{name}/{FP32}"] = runner(feed)
            for name, session in sessions.items():
                engines[f"onnxruntime/{name}"] = (lambda s=session, f={k: v for k, v in feed.items()
                                                                       if k in input_names[name]}: s.run(None, f))
            samples = time_blocks(engines | ceiling_engines, config)  # the ceilings in the same rounds
            here = {name: CEILING_FLOPS / statistics.median(samples.pop(f"ceiling/{name}")) / 1e9 for name in CEILINGS}
            for name, value in here.items():
                ceilings[name].append(value)
            for key, seconds in samples.items():
                engine, variant = key.split("/")
                row = latency_row(engine, variant, batch, seq, seconds, model_flops)
                done = graph_flops[variant] if engine == "onnxruntime" else model_flops
                row["graph_gflops"] = _sig(done / (row["p50_ms"] / 1000) / 1e9)
                row["ceiling_fraction"] = _sig(row["graph_gflops"] / here["int8" if "int8" in variant else "fp32"])
                results.append(row)
    return results, ceilings


def _tokenizer_rows(package: Package, config: BenchConfig) -> list[dict[str, Any]]:
    """Tokenization alone, per batch size, on CoLA-like sentences."""
    with Predictor(package, variant=FP32, threads=config.threads) as predictor:
        sentence = "The ideas that the professor proposed were rejected by the committee."
        text = (sentence, sentence) if predictor.pairs else sentence
        rows = []
        for batch in config.batch_sizes:
            texts = [text] * batch
            run = lambda t=texts: encode(predictor.tokenizer, t, predictor.input_names)  # noqa: E731
            seconds = time_blocks({"tokenizer": run}, config)["tokenizer"]
            rows.append(latency_row("tokenizer", "-", batch, run(texts[:1])["input_ids"].shape[1], seconds, None))
    return rows


def _dataset_rows(package: Package, variants: list[str], config: BenchConfig, machine: dict[str, Any],
                  fp32_graph: onnx.ModelProto, notes: list[str]) -> dict[str, Any] | None:
    """The whole validation set, text in to label out: the seed's way against ours."""
    try:
        texts = load_splits(config.data, need_train=False, labels=package.manifest.labels,
                            multi_label=package.manifest.problem_type == MULTI_LABEL).validation.texts
    except DataError as e:
        notes.append(f"end-to-end rows skipped: {e}")
        return None
    seed = Predictor(package, variant=FP32, threads=config.threads)
    # The seed project: one sentence per call, every one padded to 128 tokens (or the model's limit).
    seed.tokenizer.enable_padding(pad_id=package.manifest.pad_token_id,
                                  length=min(SEED_MAX_LENGTH, package.manifest.max_length),
                                  pad_token=seed.tokenizer.id_to_token(package.manifest.pad_token_id))
    sample = texts[:50]  # 128-token calls are slow; 50 of them give a stable rate
    lengths = [sum(e.attention_mask) for e in seed.tokenizer.encode_batch(texts)]  # real tokens, not padding
    passes = {"seed_fp32_one_by_one_pad128": (seed, sample, 1)}
    for name in variants:
        passes[f"{name}_batched_sorted_dynamic"] = (Predictor(package, variant=name, threads=config.threads), texts, 32)
    for predictor, batch_texts, batch_size in passes.values():  # warm-up: allocations, kernels
        predictor.predict(batch_texts[:2 * batch_size], batch_size=batch_size)
    # Rounds of whole passes, medians over rounds: this machine's speed drifts over a minute.
    rates: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(config.rounds):
        for name, (predictor, batch_texts, batch_size) in passes.items():
            time.sleep(config.pause_seconds)
            started = time.perf_counter()
            predictor.predict(batch_texts, batch_size=batch_size)
            rates[name].append(len(batch_texts) / (time.perf_counter() - started))
    for predictor, _, _ in passes.values():
        predictor.close()
    rows = {name: statistics.median(values) for name, values in rates.items()}
    total_flops = sum(_flops_for_lengths(fp32_graph, lengths).values())
    best = max((k for k in rows if k.endswith("_dynamic")), key=rows.get)
    ideal_seconds = total_flops / (machine["int8_matmul_gops"] * 1e9)
    return {"n": len(texts), "tokens": sum(lengths), "model_gflop": round(total_flops / 1e9, 1),
            "items_per_s": {k: round(v, 1) for k, v in rows.items()}, "best": best,
            "best_vs_seed": round(rows[best] / rows["seed_fp32_one_by_one_pad128"], 1),
            "best_fraction_of_int8_limit": round(ideal_seconds / (len(texts) / rows[best]), 3)}


def _flops_for_lengths(graph: onnx.ModelProto, lengths: list[int]) -> dict[int, int]:
    """Total FLOPs of one sentence per length, times how many sentences have it."""
    counts: dict[int, int] = {}
    for n in lengths:
        counts[n] = counts.get(n, 0) + 1
    return {n: sum(node_flops(graph, 1, n).values()) * c for n, c in counts.items()}


def speedups(results: list[dict[str, Any]]) -> dict[str, float]:
    """p50 of PyTorch eager ÷ p50 of each ONNX Runtime variant, per batch x sequence; plus the best."""
    out: dict[str, float] = {}
    by_shape: dict[tuple[int, int], dict[str, float]] = {}
    for r in results:
        by_shape.setdefault((r["batch_size"], r["seq_len"]), {})[f"{r['engine']}/{r['variant']}"] = r["p50_ms"]
    for (batch, seq), p50 in sorted(by_shape.items()):
        base = p50.get(f"torch/{FP32}")
        if not base:
            continue
        ort_rows = {k.split("/")[1]: v for k, v in p50.items() if k.startswith("onnxruntime/")}
        for variant, ms in ort_rows.items():
            out[f"{variant}_vs_torch@b{batch}s{seq}"] = round(base / ms, 2)
        best = min(ort_rows, key=ort_rows.get)
        out[f"best_vs_torch@b{batch}s{seq}"] = round(base / ort_rows[best], 2)
    return out


def plot(report: dict[str, Any], path: str | Path) -> None:
    """Latency, speed-up over PyTorch, and share of the MatMul ceiling; one PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    seqs = sorted({r["seq_len"] for r in results})
    batches = sorted({r["batch_size"] for r in results})
    engines = sorted({f"{r['engine']}/{r['variant']}" for r in results}, key=lambda k: (not k.startswith("torch"), k))
    fig, axes = plt.subplots(len(seqs), 3, figsize=(16, 4.2 * len(seqs)), squeeze=False)
    width = 0.8 / len(engines)
    for row, seq in enumerate(seqs):
        p50 = {(f"{r['engine']}/{r['variant']}", r["batch_size"]): r for r in results if r["seq_len"] == seq}
        x = np.arange(len(batches))
        for i, engine in enumerate(engines):
            cells = [p50.get((engine, b)) for b in batches]
            base = [p50.get((f"torch/{FP32}", b)) for b in batches]
            offset = x + (i - (len(engines) - 1) / 2) * width
            axes[row][0].bar(offset, [c["p50_ms"] if c else 0 for c in cells], width, label=engine)
            axes[row][1].bar(offset, [b["p50_ms"] / c["p50_ms"] if c and b else 0 for c, b in zip(cells, base)], width,
                             label=engine)
            axes[row][2].bar(offset, [c.get("ceiling_fraction", 0) * 100 if c else 0 for c in cells], width,
                             label=engine)
        for col, (title, ylabel) in enumerate((("p50 latency", "ms (log)"), ("speed-up over PyTorch eager", "×"),
                                               ("share of this machine's MatMul ceiling", "%"))):
            ax = axes[row][col]
            ax.set_title(f"{title}, {seq} tokens")
            ax.set_xticks(x, [f"batch {b}" for b in batches])
            ax.set_ylabel(ylabel)
            ax.grid(axis="y", alpha=0.3)
        axes[row][0].set_yscale("log")
        axes[row][1].axhline(1, color="black", linewidth=0.8)
        axes[row][2].axhline(100, color="black", linewidth=0.8)
    axes[0][0].legend(fontsize=8)
    machine = report["machine"]
    fig.suptitle(f"{Path(report['package']).name}: {cpu.summary(machine['cpu'])}\n{machine['threads']} threads; "
                 f"ceilings fp32 {machine['fp32_matmul_gflops']} GFLOP/s, int8 {machine['int8_matmul_gops']} GOP/s")
    fig.tight_layout()
    atomic_save_png(fig, path, dpi=110)
