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


def test_deberta_three_string_labels_through_the_cli(tmp_path, tiny_model_dir):
    """A family with no ONNX Runtime fusions, on a 3-class TSV with string labels: the optimized
    variant says why it is not built, and int8 is still built (from fp32) and gated."""
    from conftest import tiny_family_folder

    labels = ["negative", "neutral", "positive"]
    tiny_family_folder("deberta-v2", tiny_model_dir, tmp_path / "deberta", labels)
    data = tmp_path / "three"
    data.mkdir()
    words = {"negative": "bad awful", "neutral": "table door", "positive": "good lovely"}
    for split, n in (("train", 60), ("validation", 30)):
        rows = [f"the day was {words[labels[i % 3]].split()[i % 2]}\t{labels[i % 3]}" for i in range(n)]
        (data / f"{split}.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")

    _onnxpack("train", "--data", str(data), "--model", str(tmp_path / "deberta"), "--epochs", "1",
              "--max-length", "32", "--out", str(tmp_path / "run"), cwd=tmp_path)
    _onnxpack("export", str(tmp_path / "run" / "best.ckpt"), "--out", str(tmp_path / "pkg"), cwd=tmp_path)
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    assert manifest["labels"] == labels and manifest["model_type"] == "deberta-v2"
    _onnxpack("verify", str(tmp_path / "pkg"), "--data", str(data), "--json", str(tmp_path / "v.json"), cwd=tmp_path)
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["n"] == 30 and report["agreement"] == 1.0 and report["max_abs_diff"] <= 1e-4

    result = _onnxpack("optimize", str(tmp_path / "pkg"), "--data", str(data), cwd=tmp_path)
    assert "optimized: not built: ONNX Runtime has no transformer fusions for deberta-v2" in " ".join(result.stdout.split())
    variants = json.loads((tmp_path / "pkg" / "manifest.json").read_text())["variants"]
    assert "optimized" not in variants
    int8 = variants["int8"]
    assert int8["built_from"] == "fp32" and int8["metric"] == "mcc" and int8["mcc_drop"] <= 0.01
    assert 0.0 <= int8["agreement"] <= 1.0 and int8["n"] == 30

    rows = [json.loads(line) for line in
            _onnxpack("predict", str(tmp_path / "pkg"), "the day was lovely", "a door", cwd=tmp_path).stdout.splitlines()]
    assert [set(r["scores"]) for r in rows] == [set(labels)] * 2


@pytest.mark.parametrize(("args", "message"), [
    (["--labels", "a,b,c"], "has a classification head of 2 labels, but 3 labels are given"),
    (["--labels", "x,,y"], "--labels has an empty item in 'x,,y'"),
    (["--labels", "only"], "labels must name at least two classes"),
    (["--text-columns", "nope"], "--text-columns names ['nope']"),
])
def test_train_mistakes_are_one_line_and_write_nothing(tmp_path, tiny_model_dir, small_cola, args, message):
    from typer.testing import CliRunner

    from onnxpack.cli import app

    result = CliRunner().invoke(app, ["train", "--data", str(small_cola), "--model", str(tiny_model_dir),
                                      "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 1 and message in result.output, result.output[-2000:]
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    assert list(tmp_path.iterdir()) == []
