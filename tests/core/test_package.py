"""package.py: the on-disk contract (manifest, file hashes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxpack.core.errors import PackageError
from onnxpack.core.package import (
    FORMAT_VERSION,
    MANIFEST,
    MODEL,
    TOKENIZER,
    Manifest,
    Package,
    TensorSpec,
    hash_files,
    sha256_file,
)


def _rewrite_manifest(root: Path, **changes) -> None:
    path = root / MANIFEST
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw.update(changes)
    path.write_text(json.dumps(raw), encoding="utf-8")


def _sample_manifest() -> Manifest:
    return Manifest(
        name="m", labels=["no", "yes"], max_length=16,
        inputs=[TensorSpec("input_ids", "int64", ["batch", "sequence"]),
                TensorSpec("attention_mask", "int64", ["batch", "sequence"])],
        outputs=[TensorSpec("logits", "float32", ["batch", 2])],
        opset=18, ir_version=10, exporter="torchscript", model_type="bert", pad_token_id=0,
        source={"path": "/x/best.ckpt", "kind": "lightning-checkpoint", "sha256": "ab" * 32},
        libraries={"onnxpack": "0.1.0"}, files={"model.onnx": "cd" * 32},
        history=[{"step": "export", "exporter": "torchscript", "opset": 18, "at": "2025-01-01T00:00:00+00:00"}],
        parity={"max_abs_diff": 1e-6, "atol": 1e-4}, onnxpack_version="0.1.0",
    )


# --- Package.open -------------------------------------------------------------------------------------------

def test_open_good_package(package_dir):
    package = Package.open(package_dir)
    m = package.manifest
    assert package.root == package_dir
    assert package.name == m.name == package_dir.name
    assert m.format_version == FORMAT_VERSION
    assert package.model_path == package_dir / MODEL and package.model_path.is_file()
    assert package.tokenizer_path == package_dir / TOKENIZER and package.tokenizer_path.is_file()
    # Every file but the manifest is listed with its hash, and the hashes are right.
    assert MANIFEST not in m.files
    assert {MODEL, TOKENIZER} <= set(m.files)
    assert m.files == hash_files(package_dir)
    assert all(isinstance(t, TensorSpec) for t in m.inputs + m.outputs)


def test_open_accepts_str_path(package_dir):
    assert Package.open(str(package_dir)).manifest.name == package_dir.name


def test_missing_manifest_is_not_a_package(tmp_path):
    (tmp_path / MODEL).write_bytes(b"onnx")
    with pytest.raises(PackageError, match="is not a package: it has no manifest.json"):
        Package.open(tmp_path)


def test_not_a_directory(tmp_path):
    with pytest.raises(PackageError, match="is not a directory"):
        Package.open(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PackageError, match="is not a directory"):
        Package.open(tmp_path / "file")


def test_altered_file_is_detected(package_copy):
    with open(package_copy / TOKENIZER, "ab") as f:
        f.write(b" ")
    with pytest.raises(PackageError, match=r"tokenizer\.json was altered: its sha256 does not match"):
        Package.open(package_copy)
    # check_files=False reads the manifest without hashing.
    assert Package.open(package_copy, check_files=False).manifest.name == package_copy.name


def test_altered_model_is_detected(package_copy):
    with open(package_copy / MODEL, "ab") as f:
        f.write(b"\0")
    with pytest.raises(PackageError, match=r"model\.onnx was altered"):
        Package.open(package_copy)


def test_missing_file(package_copy):
    (package_copy / TOKENIZER).unlink()
    with pytest.raises(PackageError, match=r"is missing tokenizer\.json"):
        Package.open(package_copy)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, "1", None])
def test_wrong_format_version(package_copy, version):
    _rewrite_manifest(package_copy, format_version=version)
    with pytest.raises(PackageError, match=rf"package format version {version!r}; this onnxpack reads {FORMAT_VERSION}"):
        Package.open(package_copy)


@pytest.mark.parametrize(("content", "message"), [
    (b'{"format_version": 1, ', "is not valid JSON"),
    (b"\xff\xfe{}", "is not valid JSON"),
    (b"[1, 2]", "is not a JSON object"),
])
def test_unreadable_manifest(package_copy, content, message):
    (package_copy / MANIFEST).write_bytes(content)
    with pytest.raises(PackageError, match=message):
        Package.open(package_copy)


def test_manifest_missing_fields(package_copy):
    raw = json.loads((package_copy / MANIFEST).read_text(encoding="utf-8"))
    del raw["labels"], raw["opset"]
    (package_copy / MANIFEST).write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(PackageError, match="manifest.json lacks labels, opset"):
        Package.open(package_copy)


def test_update_manifest_rewrites_and_reopens(package_copy):
    package = Package.open(package_copy)
    package.update_manifest(parity={"max_abs_diff": 0.5, "atol": 1.0})
    assert package.manifest.parity == {"max_abs_diff": 0.5, "atol": 1.0}
    reopened = Package.open(package_copy)  # the manifest is not in `files`, so rewriting it keeps hashes valid
    assert reopened.manifest.parity == {"max_abs_diff": 0.5, "atol": 1.0}
    assert reopened.manifest.name == package.manifest.name
    assert [p.name for p in package_copy.iterdir() if ".tmp-" in p.name] == []


# --- Manifest -----------------------------------------------------------------------------------------------

def test_default_variant_is_the_fastest_and_a_server_can_ask_for_batch_invariance(package_copy):
    package = Package.open(package_copy)
    package.update_manifest(variants={
        "fp32": {"file": "model.onnx", "items_per_s": 100, "provider": "CPUExecutionProvider"},
        "optimized": {"file": "model.optimized.onnx", "items_per_s": 150, "provider": "CPUExecutionProvider",
                      "batch_invariant": True},
        "int8": {"file": "model.int8.onnx", "items_per_s": 300, "provider": "CPUExecutionProvider",
                 "batch_invariant": False},
        "fp16": {"file": "model.fp16.onnx", "items_per_s": 900, "provider": "CUDAExecutionProvider",
                 "batch_invariant": True}})
    assert package.default_variant() == "fp16"
    assert package.default_variant(["CPUExecutionProvider"]) == "int8"
    assert package.default_variant(["CPUExecutionProvider"], batch_invariant=True) == "optimized"
    package.update_manifest(variants={"fp32": {"file": "model.onnx", "items_per_s": 100},
                                      "int8": {"file": "model.int8.onnx", "items_per_s": 300}})
    # a variant never measured counts as batch-dependent, except the exported float graph
    assert package.default_variant(batch_invariant=True) == "fp32"


def test_manifest_round_trip():
    m = _sample_manifest()
    d = m.to_dict()
    assert d["inputs"][0] == {"name": "input_ids", "dtype": "int64", "dims": ["batch", "sequence"]}
    assert Manifest.from_dict(d) == m
    # and through JSON text, as it lives on disk
    assert Manifest.from_dict(json.loads(json.dumps(d))) == m
    # from_dict does not change its argument
    assert d == m.to_dict()


def test_manifest_from_dict_ignores_unknown_keys_and_fills_defaults():
    d = _sample_manifest().to_dict()
    for key in ("files", "history", "parity", "task", "format_version", "onnxpack_version"):
        del d[key]
    d["from_the_future"] = 1
    m = Manifest.from_dict(d)
    assert m.files == {} and m.history == [] and m.parity is None
    assert m.task == "text-classification" and m.format_version == FORMAT_VERSION


def test_manifest_round_trip_of_real_package(package_dir):
    raw = json.loads((package_dir / MANIFEST).read_text(encoding="utf-8"))
    assert Manifest.from_dict(raw).to_dict() == raw


def test_hash_files_skips_manifest(tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / MANIFEST).write_text("{}")
    (tmp_path / "sub").mkdir()
    assert hash_files(tmp_path) == {"a": sha256_file(tmp_path / "a")}
    assert sha256_file(tmp_path / "a") == "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"


def test_an_ort_format_package_has_one_variant_and_refuses_onnx_commands(tmp_path):
    """export-mobile's package (tests/deploy/test_mobile.py makes real ones): its one graph is model.ort, the
    variant it was converted from, whatever a caller asks for; protobuf commands get one line."""
    manifest = _sample_manifest()
    manifest.files = {"model.ort": "cd" * 32}
    manifest.variants = {"fp32": {"file": "model.ort", "items_per_s": 10, "provider": "CPUExecutionProvider"}}
    manifest.graph_format = {"format": "ort", "ort_format_version": 6, "source_variant": "fp32",
                             "source_package": {"name": "m", "path": "/pkgs/m"}}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest.to_dict()))
    package = Package.open(tmp_path, check_files=False)
    assert package.is_ort_format and package.variant_names() == ["fp32"]
    assert package.default_variant(["CUDAExecutionProvider"], batch_invariant=True) == "fp32"
    assert package.variant_path() == package.variant_path("fp32") == tmp_path / "model.ort"
    with pytest.raises(PackageError, match=f"^{tmp_path} is an ORT-format package \\(model.ort\\): bench reads ONNX "
                       r"graphs \(hint: bench its source package \(/pkgs/m\)"):
        package.require_onnx("bench")
    assert Manifest.from_dict(json.loads((tmp_path / MANIFEST).read_text())).graph_format["ort_format_version"] == 6
    plain = _sample_manifest()
    assert plain.graph_format is None and not Package(tmp_path, plain).is_ort_format
    Package(tmp_path, plain).require_onnx("bench")  # an ONNX package passes
