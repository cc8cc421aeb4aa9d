"""onnxfile.py and models over 2 GiB: with the external-data threshold forced down to a few KB, a
package keeps its weights in model.onnx.data, and every stage reads, hashes and writes it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from live import HTTP_ONLY, post, running
from typer.testing import CliRunner

import onnxpack.core.package
from onnxpack.cli import app
from onnxpack.core.config import OptimizeConfig, VerifyConfig
from onnxpack.core.package import Package
from onnxpack.pytorch.export import export
from onnxpack.pytorch.verify import verify
from onnxpack.runtime.optimize import optimize
from onnxpack.runtime.predictor import Predictor
from onnxpack.serve import create_app

TEXTS = ["the book was written by john", "him saw she", "go"]


@pytest.fixture()
def external_package(monkeypatch, trained_run, tmp_path):
    monkeypatch.setattr(onnxpack.core.package, "EXTERNAL_DATA_BYTES", 4096)
    return export(trained_run / "best.ckpt", tmp_path / "pkg")


def test_export_writes_external_data_and_hashes_it(external_package, package_dir):
    root = external_package.root
    assert (root / "model.onnx.data").is_file() and not (root / ".export").exists()
    assert "model.onnx.data" in external_package.manifest.files
    assert (root / "model.onnx").stat().st_size < 100_000 < (root / "model.onnx.data").stat().st_size
    proto = onnx.load(str(root / "model.onnx"), load_external_data=False)
    assert {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"} == {
        "model.onnx.data"}
    with Predictor(root) as external, Predictor(package_dir) as inline:
        np.testing.assert_allclose(external.predict_logits(TEXTS), inline.predict_logits(TEXTS), atol=1e-6)


def test_altered_external_data_is_caught(external_package):
    data = external_package.root / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(onnxpack.core.errors.PackageError, match="model.onnx.data was altered"):
        Package.open(external_package.root)


def test_every_stage_handles_external_data(external_package, small_cola, tmp_path):
    root = external_package.root
    report = verify(root, str(small_cola), config=VerifyConfig(localize=True))  # localize re-saves the graph
    assert report.passed and report.localization["first"] is None
    results = {r.variant: r for r in optimize(root, OptimizeConfig(data=str(small_cola), variants=("optimized", "int8")))}
    assert results["optimized"].accepted and results["int8"].accepted
    package = Package.open(root)  # every file, data files included, matches its hash
    assert {"model.optimized.onnx.data", "model.int8.onnx.data"} <= set(package.manifest.files)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp leftovers
    for variant in ("optimized", "int8"):
        with Predictor(root, variant=variant) as predictor:
            assert predictor.predict_logits(TEXTS).shape == (3, 2)
    runner = CliRunner()
    for args in (["inspect", str(root), "--json", str(tmp_path / "i.json")],
                 ["graph", str(root), "--out", str(tmp_path / "g.html")],
                 ["profile", str(root), "--runs", "1", "--out", str(tmp_path / "p.html")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    assert json.loads((tmp_path / "i.json").read_text())["weights"]["parameters"] > 10_000  # the weights were read
    with running(create_app(root, HTTP_ONLY)) as url:
        assert post(url, "/predict", {"texts": TEXTS}).status_code == 200
