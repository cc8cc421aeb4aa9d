"""compat.py and node_runtime.py: a package's IR version and opsets against what a target runtime loads,
the table checked against the installed ONNX Runtime, and the graph run in onnxruntime-node."""

from __future__ import annotations

import shutil
import subprocess

import onnx
import onnxruntime as ort
import pytest
from conftest import provision
from typer.testing import CliRunner

from onnxpack.cli import app
from onnxpack.core.config import ExportConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import Package, hash_files
from onnxpack.deploy import compat, node_runtime
from onnxpack.pytorch.export import export
from onnxpack.runtime.predictor import Predictor


def test_targets():
    t = compat.parse_target("triton==24.09-py3")
    assert (t.kind, t.version, t.onnxruntime, t.ir, t.opset) == ("triton", "24.09", "1.19.2", 10, 21)
    assert compat.parse_target("onnxruntime==1.20.1") == compat.parse_target(" onnxruntime == 1.20 ").__class__(
        "onnxruntime", "1.20", "1.20.1", 10, 21, 5)
    for spec, message in (("tensorrt==10", "is not onnxruntime==X.Y"), ("triton==19.01", "unknown Triton release"),
                          ("onnxruntime==0.9", "unknown ONNX Runtime release")):
        with pytest.raises(OnnxpackError, match=message):
            compat.parse_target(spec)
    assert compat.newest_triton() == "triton==26.07"  # 26.08 has no release tag yet


def test_table_is_consistent():
    table = compat.table()
    limits = [(v["ir"], v["opset"]) for v in table["onnxruntime"].values()]
    assert limits == sorted(limits)  # a newer release never loads less
    for release, entry in table["triton"].items():
        assert compat.parse_target(f"triton=={release}").onnxruntime == entry["onnxruntime"]


def _stamped(tmp_path, ir: int, opset: int):
    """A one-node graph claiming IR version `ir` and opset `opset`."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = ir
    path = tmp_path / f"ir{ir}-opset{opset}.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def test_the_row_for_the_installed_onnxruntime_is_what_it_loads(tmp_path):
    t = compat.ort_target(ort.__version__)
    ort.InferenceSession(_stamped(tmp_path, t.ir, t.opset), providers=["CPUExecutionProvider"])
    for ir, opset in ((t.ir + 1, t.opset), (t.ir, t.opset + 1)):
        with pytest.raises(Exception, match="(?i)ir version|opset"):
            ort.InferenceSession(_stamped(tmp_path, ir, opset), providers=["CPUExecutionProvider"])


def test_check_and_require(package_copy):
    package = Package.open(package_copy)
    assert all(f.ok for f in compat.check(package, compat.parse_target("triton==24.09")))
    finding, = compat.check(package, compat.parse_target("triton==22.03"))
    assert finding.problems == ["ai.onnx opset 18 > 15"]
    with pytest.raises(OnnxpackError, match="opset 18 > 15.*--opset 15 --target triton==22.03"):
        compat.require(package, compat.parse_target("triton==22.03"))
    proto = onnx.load(str(package.model_path))
    proto.ir_version = 14
    onnx.save(proto, str(package.model_path))
    package.update_manifest(files=hash_files(package.root))
    finding, = compat.check(Package.open(package_copy), compat.parse_target("onnxruntime==1.30"))
    assert finding.problems == ["IR version 14 > 13"]


def test_export_refuses_an_opset_the_target_cannot_load_before_exporting(trained_run, tmp_path):
    target = "onnxruntime==1.10"
    with pytest.raises(OnnxpackError, match="opset 18 is newer than onnxruntime 1.10.*--opset 15"):
        export(trained_run / "best.ckpt", tmp_path / "pkg", ExportConfig(target=target))
    assert not (tmp_path / "pkg").exists()
    package = export(trained_run / "best.ckpt", tmp_path / "pkg", ExportConfig(opset=15, target=target))
    assert package.manifest.opset == 15 and package.manifest.ir_version <= 8


def test_cli_check(package_dir):
    runner = CliRunner()
    result = runner.invoke(app, ["check", str(package_dir), "--target", "triton==22.03", "--rows", "8",
                                 "--runtime", "ort-format"])
    assert result.exit_code == 1 and "ai.onnx opset 18 > 15" in result.output
    result = runner.invoke(app, ["check", str(package_dir), "--target", "onnxruntime==1.14", "--rows", "8",
                                 "--runtime", "ort-format"])
    assert result.exit_code == 0 and "yes" in result.output


@pytest.fixture(scope="session")
def node(pytestconfig):
    """onnxruntime-node, npm-installed into onnxpack's cache (node_runtime.install) by the first run that
    needs it, under a lock beside it so that parallel runs wait instead of installing it twice."""
    if shutil.which("node") is None:
        pytest.skip("needs Node.js for onnxruntime-node: apt-get install nodejs npm")
    home = node_runtime.home()
    try:
        provision(pytestconfig, home.with_name(f"{home.name}.lock"), lambda: node_runtime.available() is None,
                  node_runtime.install,
                  f"setting up {node_runtime.PACKAGE} in {home} for `onnxpack check` (first run only, ~1 min)")
    except (OnnxpackError, OSError, subprocess.TimeoutExpired) as e:
        reason = getattr(e, "message", e)
        pytest.skip(f"could not npm-install {node_runtime.PACKAGE} ({reason}); it needs npm and its registry, or: "
                    f"{node_runtime.INSTALL_HINT}")
    assert node_runtime.version().startswith("1.")


def test_onnxruntime_node_gives_pythons_logits(node, package_dir):
    texts = ["the book was written by john", "him saw she", "go", "what did you wonder whether mary bought"]
    with Predictor(package_dir) as predictor:
        result = node_runtime.compare(predictor, texts)
    assert result.runtime.startswith("onnxruntime-node 1.") and result.rows == 4
    assert result.max_abs_diff < 1e-5 and result.agreement == 1.0
    out = CliRunner().invoke(app, ["check", str(package_dir), "--rows", "8", "--runtime", "node"])
    assert out.exit_code == 0 and "on 8 validation rows" in " ".join(out.stdout.split()), out.output
    row = next(line for line in out.stdout.splitlines() if line.startswith("│ node"))
    assert "fp32" in row and "yes" in row and "100.0%" in row
