"""scripts/explain_quality.py: a short run on the tiny package, in a subprocess as people run it (the
figures in docs/performance.md and docs/inspect.md come from a full run on the default package)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "explain_quality.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_figures(package_dir, small_cola, tmp_path):
    out = tmp_path / "q.json"
    result = run(str(package_dir), "--data", str(small_cola), "--rows", "20", "--runs", "3", "--json", str(out))
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    speed, faithful = figures["speed"], figures["faithfulness"]
    assert speed["words"] == 20 and speed["runs"] == 3 and 0 < speed["min_ms"] <= speed["p50_ms"] <= speed["p90_ms"]
    assert faithful["rows"] == 20 and 0 <= faithful["top2_beats_random"] <= 1
    assert figures["cpu"]["int8_path"] and f"{faithful['top2_beats_random']:.1%}" in result.stdout


def test_not_a_package_is_one_line(tmp_path):
    result = run(str(tmp_path))
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: {tmp_path} is not a package: it has no manifest.json (hint: pass the folder `onnxpack export` wrote)"]
