"""export.py: checkpoint -> package, with every exporter checked against PyTorch (families: test_families.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import onnxpack.pytorch.export
from onnxpack.core.config import ExportConfig
from onnxpack.core.errors import OnnxpackError, PackageError, ParityError
from onnxpack.core.package import MANIFEST, MODEL, TOKENIZER, Package, sha256_file
from onnxpack.pytorch.export import EXPORTERS, export
from onnxpack.pytorch.model import load_checkpoint

# One test case per registry key; test_registry.py checks this list against the registry,
# so a new exporter cannot land without a test here (families: test_families.py).
EXPORTER_CASES = ("torchscript", "dynamo", "lightning")

# Not among export's own CHECK_SENTENCES: rows of different lengths, padded together.
BATCH = [
    "the book was written by john",
    "him saw she",
    "the professor who the students that the dean hired admired resigned after the long meeting ended",
    "go",
    "what did you wonder whether mary bought",
]


def _ort_logits(package: Package, texts: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """ORT logits for `texts`, tokenized by the package's own tokenizer.json (no Predictor)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(package.tokenizer_path))
    tokenizer.enable_truncation(package.manifest.max_length)
    tokenizer.enable_padding(pad_id=package.manifest.pad_token_id)
    enc = tokenizer.encode_batch(texts)
    feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}
    session = ort.InferenceSession(str(package.model_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], feed)
    return logits, feed


def _torch_logits(model: torch.nn.Module, feed: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()


def _no_leftovers(parent: Path, expected: list[str]) -> None:
    assert sorted(p.name for p in parent.iterdir()) == sorted(expected)


# --- the session's package ----------------------------------------------------------------------------------

def test_package_files(package_dir):
    names = {p.name for p in package_dir.iterdir()}
    assert {MODEL, TOKENIZER, MANIFEST} <= names
    assert "chat_template.jinja" not in names
    assert [p.name for p in package_dir.parent.iterdir()] == [package_dir.name]  # no temp dirs beside it


def test_manifest_io(package_dir):
    m = Package.open(package_dir).manifest
    assert [(t.name, t.dtype, t.dims) for t in m.inputs] == [
        ("input_ids", "int64", ["batch", "sequence"]),
        ("attention_mask", "int64", ["batch", "sequence"]),
    ]
    assert [(t.name, t.dtype) for t in m.outputs] == [("logits", "float32")]
    assert m.outputs[0].dims[0] == "batch" and m.outputs[0].dims[1] == 2


def test_manifest_fields(package_dir, trained_run):
    m = Package.open(package_dir).manifest
    assert m.name == package_dir.name
    assert m.labels == ["unacceptable", "acceptable"]
    assert m.max_length == 64  # from train_config.json
    assert m.exporter == "torchscript" and m.opset == 18 and m.model_type == "bert"
    assert m.pad_token_id == 0
    assert m.source["kind"] == "lightning-checkpoint"
    assert m.source["path"] == str((trained_run / "best.ckpt").resolve())
    assert m.source["sha256"] == sha256_file(trained_run / "best.ckpt")
    assert [h["step"] for h in m.history] == ["export"]
    assert m.parity["max_abs_diff"] <= m.parity["atol"] == 1e-4
    assert m.parity["batch_sizes"] == [1, 3, 17]
    assert {"torch", "onnx", "onnxruntime", "transformers"} <= set(m.libraries)
    assert m.onnxpack_version == onnxpack.__version__


def test_onnx_metadata_props(package_dir):
    proto = onnx.load(str(package_dir / MODEL))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["onnxpack.labels"]) == ["unacceptable", "acceptable"]
    assert props["onnxpack.max_length"] == "64"
    assert props["onnxpack.task"] == "text-classification"
    onnx.checker.check_model(proto)


def test_package_runs_dynamic_shapes(package_dir, trained_run):
    """The graph takes other batch sizes and lengths than the sample it was traced with."""
    package = Package.open(package_dir)
    model, _, _ = load_checkpoint(trained_run / "best.ckpt")
    for texts in (BATCH, BATCH[:1], BATCH * 5):
        got, feed = _ort_logits(package, texts)
        assert got.shape == (len(texts), 2)
        np.testing.assert_allclose(got, _torch_logits(model, feed), atol=1e-4, rtol=0)


# --- every exporter ----------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
@pytest.mark.parametrize("exporter", EXPORTER_CASES)
def test_exporter(exporter, trained_run, tmp_path):
    package = export(trained_run / "best.ckpt", tmp_path / "pkg", ExportConfig(exporter=exporter))
    m = package.manifest
    assert m.exporter == exporter and m.history[0]["exporter"] == exporter
    assert m.parity["max_abs_diff"] <= 1e-4
    assert [t.name for t in m.inputs] == ["input_ids", "attention_mask"]
    assert [t.dims for t in m.inputs] == [["batch", "sequence"]] * 2
    assert [t.name for t in m.outputs] == ["logits"]
    model, _, _ = load_checkpoint(trained_run / "best.ckpt")
    got, feed = _ort_logits(package, BATCH)
    np.testing.assert_allclose(got, _torch_logits(model, feed), atol=1e-4, rtol=0)
    _no_leftovers(tmp_path, ["pkg"])


# --- options and failures ----------------------------------------------------------------------------------

def test_export_options_and_force(trained_run, tmp_path):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(PackageError, match="already exists"):
        export(trained_run / "best.ckpt", out)
    assert [p.name for p in out.iterdir()] == ["stale.txt"]

    package = export(trained_run / "hf", out, ExportConfig(max_length=32, name="custom", opset=17), force=True)
    assert not (out / "stale.txt").exists()
    m = package.manifest
    assert m.name == "custom" and m.max_length == 32 and m.opset == 17
    assert m.source["kind"] == "hf-folder"
    props = {p.key: p.value for p in onnx.load(str(out / MODEL)).metadata_props}
    assert props["onnxpack.max_length"] == "32"
    _no_leftovers(tmp_path, ["pkg"])


def test_unknown_exporter(trained_run, tmp_path):
    with pytest.raises(OnnxpackError) as info:
        export(trained_run / "best.ckpt", tmp_path / "pkg", ExportConfig(exporter="tensorflow"))
    assert str(info.value) == f"unknown exporter 'tensorflow'; known: {', '.join(sorted(EXPORTER_CASES))}"
    assert list(tmp_path.iterdir()) == []


def test_self_check_failure_writes_nothing(trained_run, tmp_path):
    with pytest.raises(ParityError) as info:
        # ONNX Runtime and PyTorch sum in different orders: their logits differ in the last bits (~1e-8)
        export(trained_run / "best.ckpt", tmp_path / "pkg", ExportConfig(atol=0.0))
    message = str(info.value)
    assert "exported model disagrees with PyTorch beyond atol 0:" in message
    # Each disagreeing batch of the self-check is named; one may happen to agree to the last bit (batch 1 did once).
    named = {int(size) for size in re.findall(r"batch (\d+)x", message)}
    assert named and named <= {1, 3, 17}
    assert "nothing was written" in message
    assert list(tmp_path.iterdir()) == []  # no package, no .pkg.tmp-* directory


def test_self_check_failure_keeps_existing_package_under_force(trained_run, tmp_path, monkeypatch):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "keep.txt").write_text("keep")

    def failing_check(*args, **kwargs):
        raise ParityError("simulated parity miss")

    monkeypatch.setattr(onnxpack.pytorch.export, "_self_check", failing_check)
    with pytest.raises(ParityError, match="simulated parity miss"):
        export(trained_run / "best.ckpt", out, force=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    _no_leftovers(tmp_path, ["pkg"])


def test_missing_checkpoint(tmp_path):
    from onnxpack.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        export(tmp_path / "nope.ckpt", tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


def test_registries_hold_callables():
    for key in EXPORTERS.keys():
        assert callable(EXPORTERS.get(key))



def test_max_length_beyond_positions_is_a_user_error(trained_run, tmp_path):
    with pytest.raises(OnnxpackError, match="max_length"):
        export(trained_run / "best.ckpt", tmp_path / "pkg", ExportConfig(max_length=128))
    assert list(tmp_path.iterdir()) == []
