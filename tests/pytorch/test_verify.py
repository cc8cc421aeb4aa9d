"""verify.py: PyTorch vs ONNX Runtime on every validation row, report written even on failure."""

from __future__ import annotations

import json

import pytest

from onnxpack.core.config import VerifyConfig
from onnxpack.core.errors import CheckpointError, ParityError
from onnxpack.core.package import MANIFEST, Package
from onnxpack.pytorch.verify import ParityReport, verify


def test_verify_passes(package_copy, small_cola, tmp_path):
    progressed: list[int] = []
    json_out = tmp_path / "reports" / "parity.json"
    report = verify(package_copy, str(small_cola), json_out=json_out, progress=progressed.append)
    assert isinstance(report, ParityReport)
    assert report.n == 64 and sum(progressed) == 64
    assert report.max_abs_diff <= 1e-4
    assert report.agreement == 1.0
    assert report.torch["mcc"] == report.onnx["mcc"] and report.torch["acc"] == report.onnx["acc"]
    assert 0.0 <= report.torch["acc"] <= 1.0
    assert report.tokenizer_mismatches == 0
    assert report.passed and report.failures == []
    assert report.provider == "CPUExecutionProvider"
    assert report.data == str(small_cola.resolve())
    assert report.checkpoint.endswith("best.ckpt")

    assert json.loads(json_out.read_text()) == report.to_dict()
    package = Package.open(package_copy)  # the manifest rewrite keeps the package valid
    parity = package.manifest.parity
    assert parity["n"] == 64 and parity["passed"] is True and parity["max_abs_diff"] == report.max_abs_diff
    assert "failures" not in parity


def test_verify_small_batches_same_result(package_copy, small_cola):
    # Length-sorted batches of 5 give the same numbers as one batch of 64 (results land in row order).
    a = verify(package_copy, str(small_cola), config=VerifyConfig(batch_size=5))
    b = verify(package_copy, str(small_cola), config=VerifyConfig(batch_size=64))
    assert a.torch == b.torch and a.onnx == b.onnx and a.n == b.n == 64
    assert a.max_abs_diff <= 1e-4


def test_verify_with_hf_folder_checkpoint(package_copy, small_cola, trained_run):
    report = verify(package_copy, str(small_cola), checkpoint=trained_run / "hf")
    assert report.passed and report.checkpoint == str(trained_run / "hf")


def _label_swapping_checkpoint(trained_run, out):
    """The trained model with its two classes' head rows swapped: every label is the other one."""
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(trained_run / "hf", out)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    with torch.no_grad():
        for tensor in (model.classifier.weight, model.classifier.bias):
            tensor.copy_(tensor.flip(0))
    model.save_pretrained(out)
    return out


def test_verify_failure_raises_with_report_and_writes_it(package_copy, small_cola, trained_run, tmp_path):
    json_out = tmp_path / "parity.json"
    checkpoint = _label_swapping_checkpoint(trained_run, tmp_path / "swapped")
    with pytest.raises(ParityError) as info:
        verify(package_copy, str(small_cola), checkpoint=checkpoint, config=VerifyConfig(atol=0.0), json_out=json_out)
    report = info.value.report
    assert isinstance(report, ParityReport)
    assert not report.passed and report.n == 64
    # every failed check is named, in one error
    assert len(report.failures) == 2
    message = str(info.value)
    assert "fails verification on 64 rows" in message
    assert "> atol 0;" in message and "agreement 0.0000 < 1" in message
    written = json.loads(json_out.read_text())
    assert written["passed"] is False and written["failures"] == report.failures
    parity = Package.open(package_copy).manifest.parity
    assert parity["passed"] is False and parity["atol"] == 0.0


def test_verify_missing_checkpoint(package_copy, small_cola, tmp_path):
    with pytest.raises(CheckpointError, match="is not there"):
        verify(package_copy, str(small_cola), checkpoint=tmp_path / "gone.ckpt")


def test_verify_manifest_source_moved(package_copy, small_cola, tmp_path):
    manifest = json.loads((package_copy / MANIFEST).read_text())
    manifest["source"]["path"] = str(tmp_path / "moved" / "best.ckpt")
    (package_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"source checkpoint .*moved.*is not there.*--checkpoint"):
        verify(package_copy, str(small_cola))


def test_verify_detects_a_different_checkpoint(package_copy, small_cola, tiny_model_dir):
    # The untrained tiny model is a valid checkpoint, but not the one this package came from.
    with pytest.raises(ParityError) as info:
        verify(package_copy, str(small_cola), checkpoint=tiny_model_dir)
    assert info.value.report.max_abs_diff > 1e-4
