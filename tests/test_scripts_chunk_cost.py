"""scripts/chunk_cost.py: a short run of each mode on the tiny package, in a subprocess as people run
it (the figures in docs/performance.md come from full runs on the default package)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "chunk_cost.py"


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_not_a_package_is_one_line(tmp_path):
    result = run(str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path} is not a package (no manifest.json)"]


def test_cost(package_dir, tmp_path):
    out = tmp_path / "cost.json"
    result = run(str(package_dir), "--texts", "4", "--words", "150", "--repeats", "2", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("CPU: ")
    figures = json.loads(out.read_text())
    assert figures["variant"] == "fp32" and figures["max_length"] == 64 and figures["batch_size"] == 32
    assert figures["windows"] > figures["texts"] == 4  # 150 words do not fit in 64 tokens
    assert figures["chunk_tokens_per_window"] <= figures["plain_tokens_per_row"] == 64
    assert [len(figures["seconds"][side]) for side in ("chunk", "plain")] == [2, 2]
    assert figures["ratio_median"] > 0 and figures["pass"] == (figures["ratio_median"] >= 0.9)
    assert figures["cpu"]["summary"] in result.stdout
    assert "chunk/plain" in result.stdout


@pytest.mark.timeout(600)
def test_rss(package_dir, tmp_path):
    out = tmp_path / "rss.json"
    result = run(str(package_dir), "--rss", "--runs", "20x300,40x300,40x5", "--chunk-rows", "10", "--json", str(out))
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["chunk_rows"] == 10
    runs = figures["runs"]
    assert [(r["rows_in"], r["words"]) for r in runs] == [(20, 300), (40, 300), (40, 5)]
    assert [r["rows"] for r in runs] == [20, 40, 40]
    assert runs[0]["windows"] > 20 and runs[1]["windows"] > 40  # 300 words do not fit in 64 tokens
    assert all(r["peak_rss_mb"] > 50 for r in runs)  # the child's own, not this process's


def test_bad_runs_is_one_line(package_dir):
    result = run(str(package_dir), "--rss", "--runs", "1000by2000")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: --runs takes ROWSxWORDS")
