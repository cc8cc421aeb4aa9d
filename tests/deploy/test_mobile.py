"""mobile.py: a package whose graph is in ONNX Runtime's ORT format (model.ort) with its operators config,
run by predict as its source variant is, refused in one line by the commands that read ONNX protobufs,
and held to the ORT format versions a target release reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import one_error_line
from typer.testing import CliRunner

import onnxpack
from onnxpack.cli import app
from onnxpack.core import ortformat
from onnxpack.core.config import OptimizeConfig
from onnxpack.core.data import BUNDLED_COLA, load_splits
from onnxpack.core.errors import OnnxpackError, PackageError
from onnxpack.core.package import FP32, MANIFEST, ORT_MODEL, TOKENIZER, Package, sha256_file
from onnxpack.deploy import compat, mobile
from onnxpack.inspection.inspect import summarize
from onnxpack.runtime.optimize import optimize


@pytest.fixture(scope="module")
def source(tmp_path_factory, package_dir, small_cola) -> Package:
    """The tiny package with an `optimized` variant beside fp32."""
    root = Path(shutil.copytree(package_dir, tmp_path_factory.mktemp("mobile-src") / package_dir.name))
    optimize(root, OptimizeConfig(data=str(small_cola), variants=("optimized",), max_mcc_drop=1.0, min_agreement=0.0))
    package = Package.open(root)
    assert package.variant_names() == [FP32, "optimized"]
    return package


@pytest.fixture(scope="module")
def mobile_dir(tmp_path_factory, source) -> Path:
    out = tmp_path_factory.mktemp("mobile") / "A" / "mobile"
    mobile.export_mobile(source, out)
    return out


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(load_splits(str(BUNDLED_COLA), need_train=False).validation.texts[:300])  # real CoLA rows


def test_the_ort_package_answers_as_its_source_variant(source, mobile_dir, texts):
    assert sorted(p.name for p in mobile_dir.iterdir()) == sorted(
        [MANIFEST, ORT_MODEL, mobile.OPERATORS_CONFIG, TOKENIZER, "tokenizer_config.json"])
    assert list(mobile_dir.glob("*.ort")) == [mobile_dir / ORT_MODEL]
    variant = source.default_variant()
    got, want = onnxpack.load(mobile_dir).predict(texts), onnxpack.load(source, variant=variant).predict(texts)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert max(abs(g["score"] - w["score"]) for g, w in zip(got, want)) <= 1e-4
    logits = onnxpack.load(mobile_dir).predict_logits(texts)
    assert np.abs(logits - onnxpack.load(source, variant=variant).predict_logits(texts)).max() <= 1e-4
    assert not [p for p in mobile_dir.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_the_manifest_says_what_was_converted_and_by_what(source, mobile_dir):
    package = Package.open(mobile_dir)  # every file hashed
    variant = source.default_variant()
    assert package.is_ort_format and package.variant_names() == [variant] and package.default_variant() == variant
    assert package.default_variant(["CUDAExecutionProvider"], batch_invariant=True) == variant
    assert package.variant_path() == package.variant_path(variant) == mobile_dir / ORT_MODEL
    with pytest.raises(PackageError, match="has no variant 'int8'"):
        package.variant_path("int8")
    fmt = package.manifest.graph_format
    # The version as the file says it, read back by ONNX Runtime's own FlatBuffers bindings too.
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

    session = InferenceSession.GetRootAs((mobile_dir / ORT_MODEL).read_bytes(), 0)
    assert fmt["ort_format_version"] == int(session.OrtVersion()) == ortformat.format_version(mobile_dir / ORT_MODEL)
    assert fmt["format"] == "ort" and fmt["source_variant"] == variant
    assert fmt["converted_by"] == f"onnxruntime {ort.__version__}"
    assert fmt["source_package"]["sha256"] == sha256_file(source.variant_path(variant))
    assert fmt["optimization"] == {"style": "Fixed", "level": "all", "target_platform": "arm"}
    assert fmt["parity"]["max_abs_diff"] <= 1e-4 and fmt["parity"]["agreement"] == 1.0
    entry = package.manifest.variants[variant]
    assert entry["file"] == ORT_MODEL and entry["mcc"] == source.manifest.variants[variant]["mcc"]
    assert package.manifest.history[-1]["step"] == "export-mobile"
    assert ortformat.graph_inputs(mobile_dir / ORT_MODEL) == [(t.name, t.dtype) for t in package.manifest.inputs]
    # The converter's own config: "domain;opset;op,op,...", the ops the optimized graph runs.
    lines = [line for line in (mobile_dir / fmt["operators_config"]).read_text().splitlines()
             if not line.startswith("#")]
    ops: dict[str, set[str]] = {}
    for line in lines:
        domain, opset, names = line.split(";")
        assert int(opset) > 0
        ops.setdefault(domain, set()).update(names.split(","))
    assert {"Gather", "MatMul", "LayerNormalization"} <= ops["ai.onnx"] and ops["com.microsoft"]
    raw = json.loads((mobile_dir / MANIFEST).read_text())
    assert raw["graph_format"]["operators_config"] == "required_operators.config"


def test_variant_picks_another(source, tmp_path, texts):
    other = next(v for v in source.variant_names() if v != source.default_variant())
    package = mobile.export_mobile(source, tmp_path / "m", variant=other)
    assert package.variant_names() == [other] and package.manifest.graph_format["source_variant"] == other
    got = onnxpack.load(tmp_path / "m").predict_logits(texts[:50])
    assert np.abs(got - onnxpack.load(source, variant=other).predict_logits(texts[:50])).max() <= 1e-4
    with pytest.raises(PackageError, match="has no variant 'int9'"):
        mobile.export_mobile(source, tmp_path / "n", variant="int9")
    assert not (tmp_path / "n").exists()


def test_an_existing_folder_is_refused_and_left_as_it_was(source, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OnnxpackError, match="already exists"):
        mobile.export_mobile(source, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temp sibling either
    with pytest.raises(OnnxpackError, match="is the source package or holds it"):
        mobile.export_mobile(source, source.root.parent, force=True)


@pytest.mark.parametrize("args", [["inspect", "{pkg}"], ["graph", "{pkg}", "--out", "{tmp}/g.html"],
                                  ["optimize", "{pkg}", "--variants", "optimized"], ["profile", "{pkg}", "--out", "{tmp}/p.html"],
                                  ["export-serving", "{pkg}", "--triton", "{tmp}/triton"],
                                  ["diff", "{pkg}", "{pkg}", "--json", "{tmp}/d.json"]])
def test_commands_that_read_onnx_graphs_refuse_it_in_one_line(mobile_dir, tmp_path, args):
    manifest = (mobile_dir / MANIFEST).read_bytes()
    result = CliRunner().invoke(app, [a.format(pkg=mobile_dir, tmp=tmp_path) for a in args])
    line = one_error_line(result)
    assert f"{mobile_dir} is an ORT-format package (model.ort)" in line and "reads ONNX graphs" in line
    assert list(tmp_path.iterdir()) == [] and (mobile_dir / MANIFEST).read_bytes() == manifest


def test_library_refusals_name_the_command(mobile_dir):
    package = Package.open(mobile_dir)
    with pytest.raises(PackageError, match=r"export-mobile reads ONNX graphs.*hint: export-mobile its source package"):
        mobile.export_mobile(package, mobile_dir.parent / "again")
    with pytest.raises(PackageError, match="inspect reads ONNX graphs"):
        summarize(mobile_dir)
    with pytest.raises(PackageError, match=r"model.ort is an ORT-format model: inspect reads ONNX graphs"):
        summarize(mobile_dir / ORT_MODEL)


def test_check_target_refuses_a_format_newer_than_the_target_reads(mobile_dir):
    package = Package.open(mobile_dir)
    version = package.manifest.graph_format["ort_format_version"]
    assert version == 6  # ONNX Runtime 1.16 to 1.32 write v6 (compat.json)
    finding, = compat.check(package, compat.parse_target("onnxruntime==1.15"))
    assert finding.file == ORT_MODEL and len(finding.problems) == 1
    assert "ORT format v6 > v5, the newest ONNX Runtime 1.15 reads" in finding.problems[0]
    assert "update the target" in finding.problems[0] and "onnxruntime==1.15" in finding.problems[0]
    for target in ("onnxruntime==1.16", "onnxruntime==1.32", "triton==24.09"):  # ai.onnx.ml 5 in the header counts not
        assert compat.check(package, compat.parse_target(target))[0].ok, target
    assert not compat.check(package, compat.parse_target("onnxruntime==1.10"))[0].ok  # opset 18 too, and v4 only
    with pytest.raises(OnnxpackError, match="ORT format v6 > v5"):
        compat.require(package, compat.parse_target("onnxruntime==1.15"), package.default_variant())


def test_the_format_table_covers_every_release():
    releases = compat.table()["onnxruntime"]
    rows = compat.table()["ort_format"]["onnxruntime"]
    assert list(rows) == list(releases)
    assert compat.ort_formats(ort.__version__)["writes"] == 6
    writes = [r["writes"] for r in rows.values()]
    assert writes == sorted(writes) and all(r["writes"] in r["reads"] for r in rows.values())


def test_ort_format_compare(source, texts):
    variant = source.default_variant()
    result = mobile.compare(source, variant, texts[:64])
    assert result.error is None and result.runtime == f"ort-format v6 (onnxruntime {ort.__version__})"
    assert result.rows == 64 and result.max_abs_diff <= 1e-4 and result.agreement == 1.0 and result.ms_per_row > 0


def test_a_graph_the_converter_cannot_convert_is_one_line(source, tmp_path, monkeypatch):
    monkeypatch.setattr(mobile, "_RUN_CONVERTER", "import sys; print('Error converting x: boom', file=sys.stderr); "
                        "sys.exit(1)")
    with pytest.raises(OnnxpackError, match="could not convert .*: Error converting x: boom"):
        mobile.export_mobile(source, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
    result = mobile.compare(source, FP32, ["a text"])
    assert result.error and "boom" in result.error
