"""localize.py: a model whose export is broken on purpose in one layer; export and verify say where."""

from __future__ import annotations

import json

import pytest
import torch

import onnxpack.pytorch.export
from onnxpack.core.config import ExportConfig, VerifyConfig
from onnxpack.core.errors import ParityError
from onnxpack.pytorch.export import export
from onnxpack.pytorch.model import load_checkpoint
from onnxpack.pytorch.verify import verify

BROKEN = "model.bert.encoder.layer.1.output.dense"


class _BrokenInExport(torch.nn.Module):
    """Computes the layer as it is, except while being exported: then its output is scaled."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out * 1.5 if torch.onnx.is_in_onnx_export() else out


@pytest.fixture()
def broken_export(monkeypatch):
    """load_checkpoint as export sees it: layer 1's output projection exports wrong."""
    def load(path, *args):
        model, tokenizer, source = load_checkpoint(path, *args)
        layer = model.bert.encoder.layer[1].output
        layer.dense = _BrokenInExport(layer.dense)
        return model, tokenizer, source

    monkeypatch.setattr(onnxpack.pytorch.export, "load_checkpoint", load)


def test_export_self_check_names_the_broken_layer(broken_export, trained_run, tmp_path):
    with pytest.raises(ParityError) as info:
        export(trained_run / "best.ckpt", tmp_path / "pkg")
    message = str(info.value)
    assert f"first diverging module: {BROKEN}.inner" in message or f"first diverging module: {BROKEN}" in message
    assert "layer.0" not in message.split("first diverging module:")[1]
    assert list(tmp_path.iterdir()) == []


def test_verify_names_the_broken_layer(broken_export, trained_run, small_cola, tmp_path):
    # Let the broken graph through export's own check, then verify against the unbroken checkpoint.
    package = export(trained_run / "best.ckpt", tmp_path / "pkg", ExportConfig(atol=1e3))
    with pytest.raises(ParityError) as info:
        verify(package.root, str(small_cola), json_out=tmp_path / "v.json")
    report = json.loads((tmp_path / "v.json").read_text())
    first = report["localization"]["first"]
    assert first["module"] in (BROKEN, f"{BROKEN}.inner") and first["max_abs_diff"] > 1e-4
    assert first["onnx_value"].startswith("/model/bert/encoder/layer.1/output/dense")
    assert "first diverging module: model.bert.encoder.layer.1.output.dense" in str(info.value)


def test_verify_localize_on_demand_when_parity_holds(package_copy, small_cola):
    report = verify(package_copy, str(small_cola), config=VerifyConfig(localize=True))
    assert report.passed and report.localization["first"] is None
    assert report.localization["summary"].startswith("no module differs beyond 0.0001 over ")

