"""bench.py (with pytorch/bench.py's PyTorch rows) and inspection/report.py: blocks not interleaved,
ceilings, rows, speed-ups, plot and model card."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import pytest

from onnxpack.core import cpu
from onnxpack.core.config import BenchConfig, OptimizeConfig
from onnxpack.core.errors import OnnxpackError, PackageError
from onnxpack.core.package import FP32, REPORT, Package
from onnxpack.inspection.report import write_report
from onnxpack.pytorch.bench import torch_engines
from onnxpack.runtime.bench import (
    bench,
    latency_row,
    plot,
    speedups,
    time_blocks,
)
from onnxpack.runtime.optimize import optimize

FAST = dict(rounds=1, block_seconds=0.02, min_repeats=3, pause_seconds=0.0, compile=False)


@pytest.fixture(scope="module")
def optimized_package(tmp_path_factory, package_dir, small_cola):
    root = Path(shutil.copytree(package_dir, tmp_path_factory.mktemp("bench") / package_dir.name))
    optimize(root, OptimizeConfig(data=str(small_cola), max_mcc_drop=1.0))
    return root


@pytest.fixture(scope="module")
def report(optimized_package, small_cola):
    return bench(optimized_package, BenchConfig(batch_sizes=(1, 4), seq_lens=(8, 16), data=str(small_cola), **FAST),
                 baseline=torch_engines)


def test_engines_run_in_blocks_never_interleaved():
    calls = []
    config = BenchConfig(rounds=2, block_seconds=0.0, min_repeats=4, pause_seconds=0.0)
    samples = time_blocks({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, config)
    # per round and engine: 2 warm-up calls, then 4 timed ones, all in one block
    assert "".join(calls) == ("a" * 6 + "b" * 6) * 2
    assert len(samples["a"]) == len(samples["b"]) == 8


def test_latency_row_arithmetic():
    row = latency_row("onnxruntime", "int8", 4, 16, [0.001, 0.002, 0.003, 0.004, 0.100], flops=8_000_000)
    assert row["p50_ms"] == pytest.approx(3.0)
    assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= 100
    assert row["items_per_s"] == pytest.approx(4 / 0.003, rel=1e-3)
    assert row["gflops"] == pytest.approx(8e6 / 0.003 / 1e9, rel=1e-2)


def test_report_rows(report):
    machine = report["machine"]
    assert machine["cpu"] == cpu.record() and machine["cpu"]["int8_path"]  # every figure names its instruction set
    assert machine["fp32_matmul_gflops"] > 0 and machine["int8_matmul_gops"] > 0 and machine["threads"] == 2
    for key in ("fp32_matmul_gflops", "int8_matmul_gops"):  # timed in every shape's rounds: a median and a range
        low, high = machine[f"{key}_range"]
        assert low <= machine[key] <= high
    engines = {(r["engine"], r["variant"]) for r in report["results"]}
    assert engines == {("torch", FP32), ("onnxruntime", FP32), ("onnxruntime", "optimized"), ("onnxruntime", "int8"),
                       ("onnxruntime", "int8-static"), ("onnxruntime", "int8-cascade")}
    shapes = {(r["batch_size"], r["seq_len"]) for r in report["results"]}
    assert shapes == {(1, 8), (4, 8), (1, 16), (4, 16)}
    for r in report["results"]:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["gflops"] > 0 and r["ceiling_fraction"] > 0
        # the kernels' own work: the rewritten graphs skip the last layer's rows after [CLS]
        if r["engine"] == "torch" or r["variant"] == FP32 or r["seq_len"] == 1:
            assert r["graph_gflops"] == pytest.approx(r["gflops"], rel=1e-3)
        else:
            assert r["graph_gflops"] < r["gflops"]
    # the same model work at every engine: gflops / items_per_s is the FLOPs per row
    b4 = [r for r in report["results"] if (r["batch_size"], r["seq_len"]) == (4, 16)]
    per_item = {r["gflops"] / r["items_per_s"] for r in b4}
    assert max(per_item) == pytest.approx(min(per_item), rel=0.05)
    assert {"fp32_vs_torch@b1s8", "int8_vs_torch@b4s16", "best_vs_torch@b4s16"} <= set(report["speedups"])
    assert [r["batch_size"] for r in report["tokenizer"]] == [1, 4]


def test_speedups_are_torch_over_onnxruntime():
    rows = [{"engine": "torch", "variant": FP32, "batch_size": 1, "seq_len": 8, "p50_ms": 10.0},
            {"engine": "onnxruntime", "variant": FP32, "batch_size": 1, "seq_len": 8, "p50_ms": 4.0},
            {"engine": "onnxruntime", "variant": "int8", "batch_size": 1, "seq_len": 8, "p50_ms": 2.0}]
    assert speedups(rows) == {"fp32_vs_torch@b1s8": 2.5, "int8_vs_torch@b1s8": 5.0, "best_vs_torch@b1s8": 5.0}


def test_dataset_rows(report):
    d = report["dataset"]
    assert d["n"] == 64 and d["tokens"] > 64
    assert set(d["items_per_s"]) == {"seed_fp32_one_by_one_pad128", "fp32_batched_sorted_dynamic",
                                     "optimized_batched_sorted_dynamic", "int8_batched_sorted_dynamic",
                                     "int8-static_batched_sorted_dynamic", "int8-cascade_batched_sorted_dynamic"}
    assert d["best_vs_seed"] > 1 and 0 < d["best_fraction_of_int8_limit"]


def test_plot_and_model_card(report, optimized_package, tmp_path):
    png = tmp_path / "plots" / "bench.png"
    plot(report, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not [p for p in png.parent.iterdir() if p.name != "bench.png"]  # no temp file left
    card = write_report(Package.open(optimized_package), report, png)
    text = card.read_text()
    assert "data:image/png;base64," in text and "int8" in text and "Parity" in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert REPORT in Package.open(optimized_package).manifest.files  # hashed like every file


def test_bad_options(optimized_package):
    with pytest.raises(OnnxpackError, match="--batch-sizes must be at least 1, got 0"):
        bench(optimized_package, BenchConfig(batch_sizes=(0,)))
    with pytest.raises(PackageError, match="no variant 'fp8'"):
        bench(optimized_package, BenchConfig(variants=("fp8",), **FAST))
    with pytest.raises(OnnxpackError, match="--no-torch"):
        bench(optimized_package, BenchConfig(checkpoint="/nonexistent.ckpt", **FAST), baseline=torch_engines)


def test_cli_bench(optimized_package, small_cola, tmp_path):
    from typer.testing import CliRunner

    from onnxpack.cli import app

    out = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["bench", str(optimized_package), "--batch-sizes", "2", "--seq-lens", "8",
                                      "--rounds", "1", "--no-compile", "--data", str(small_cola), "--json", str(out),
                                      "--plot", str(tmp_path / "b.png")])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == cpu.summary()  # above the table
    saved = json.loads(out.read_text())
    assert saved["results"] and saved["machine"]["cpu"] == cpu.record() and (tmp_path / "b.png").is_file()
    card = (optimized_package / REPORT).read_text()
    assert html.escape(cpu.summary()) in card
    bad = CliRunner().invoke(app, ["bench", str(optimized_package), "--batch-sizes", "1,x"])
    assert bad.exit_code == 1 and "--batch-sizes takes integers separated by commas, got '1,x'" in bad.output


@pytest.mark.slow
def test_torch_compile_rows(optimized_package):
    report = bench(optimized_package, BenchConfig(batch_sizes=(2,), seq_lens=(8,), **{**FAST, "compile": True}),
                   baseline=torch_engines)
    engines = {r["engine"] for r in report["results"]}
    assert "torch-compile" in engines or any("torch.compile" in n for n in report["notes"])
