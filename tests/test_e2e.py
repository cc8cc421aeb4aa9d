"""End to end through the real CLI, each stage in its own process, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def _onnxpack(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-m", "onnxpack", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"onnxpack {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    return result


def test_train_export_verify_predict(tmp_path, tiny_model_dir, small_cola):
    run, package, report_path = tmp_path / "run", tmp_path / "package", tmp_path / "parity.json"

    _onnxpack("train", "--out", str(run), "--model", str(tiny_model_dir), "--data", str(small_cola),
              "--epochs", "1", "--limit-train-batches", "4", "--max-length", "64", cwd=tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert isinstance(metrics["val_mcc"], float) and metrics["n_validation"] == 64
    assert (run / "best.ckpt").is_file() and (run / "hf" / "config.json").is_file()

    _onnxpack("export", str(run / "best.ckpt"), "--out", str(package), cwd=tmp_path)
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["max_length"] == 64 and manifest["labels"] == ["unacceptable", "acceptable"]
    assert manifest["source"]["path"] == str((run / "best.ckpt").resolve())

    _onnxpack("verify", str(package), "--data", str(small_cola), "--json", str(report_path), cwd=tmp_path)
    report = json.loads(report_path.read_text())
    assert report["passed"] is True and report["failures"] == []
    assert report["n"] == 64 and report["agreement"] == 1.0 and report["max_abs_diff"] <= 1e-4
    assert report["torch"]["mcc"] == report["onnx"]["mcc"]
    assert json.loads((package / "manifest.json").read_text())["parity"]["n"] == 64

    texts = ["the cat sat on the mat", "mat the on sat cat the"]
    result = _onnxpack("predict", str(package), *texts, cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    rows = [json.loads(line) for line in lines]
    assert [r["text"] for r in rows] == texts
    assert all(r["label"] in manifest["labels"] and abs(sum(r["scores"].values()) - 1) < 1e-6 for r in rows)

    # nothing but the three outputs was written (no temp dirs, no stray lightning_logs in cwd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["package", "parity.json", "run"]
