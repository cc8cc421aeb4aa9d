"""cli/build.py: train, export and verify through Typer's CliRunner: output, and exactly one `error: ...` line."""

from __future__ import annotations

import json

from conftest import one_error_line

from onnxpack.cli import app

# --- verify -------------------------------------------------------------------------------------------------

def test_verify_json(runner, package_copy, small_cola, tmp_path):
    out = tmp_path / "parity.json"
    result = runner.invoke(app, ["verify", str(package_copy), "--data", str(small_cola), "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["passed"] is True and report["n"] == 64 and report["agreement"] == 1.0
    assert report["max_abs_diff"] <= 1e-4
    assert "passed" in result.stdout and "parity on 64 validation rows" in result.stdout


def test_verify_failure_exits_1_after_the_table(runner, package_copy, small_cola, tmp_path):
    out = tmp_path / "parity.json"
    result = runner.invoke(app, ["verify", str(package_copy), "--data", str(small_cola), "--json", str(out),
                                 "--atol", "0"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [result.stderr.splitlines()[0]]
    assert result.stderr.startswith(f"error: {package_copy} fails verification on 64 rows: max_abs_diff ")
    assert "failed" in result.stdout  # the table and verdict, on stdout, before the error line
    assert json.loads(out.read_text())["passed"] is False


def test_verify_missing_checkpoint_exit_code(runner, package_copy, small_cola, tmp_path):
    result = runner.invoke(app, ["verify", str(package_copy), "--data", str(small_cola),
                                 "--checkpoint", str(tmp_path / "gone.ckpt")])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith("error: the package's source checkpoint ")


def test_verify_missing_checkpoint(runner, package_copy, small_cola, tmp_path):
    result = runner.invoke(app, ["verify", str(package_copy), "--data", str(small_cola),
                                 "--checkpoint", str(tmp_path / "gone.ckpt")])
    assert "is not there" in one_error_line(result)


# --- export / train -----------------------------------------------------------------------------------------

def test_export_unknown_exporter(runner, trained_run, tmp_path):
    result = runner.invoke(app, ["export", str(trained_run / "best.ckpt"), "--out", str(tmp_path / "pkg"),
                                 "--exporter", "nope"])
    assert one_error_line(result) == "error: unknown exporter 'nope'; known: dynamo, lightning, torchscript"
    assert not (tmp_path / "pkg").exists()


def test_export_existing_out(runner, trained_run, tmp_path):
    (tmp_path / "pkg").mkdir()
    result = runner.invoke(app, ["export", str(trained_run / "best.ckpt"), "--out", str(tmp_path / "pkg")])
    assert one_error_line(result).startswith(f"error: {tmp_path / 'pkg'} already exists (hint: ")


def test_export_ok(runner, trained_run, tmp_path):
    out = tmp_path / "pkg"
    result = runner.invoke(app, ["export", str(trained_run / "best.ckpt"), "--out", str(out), "--name", "cli"])
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["name"] == "cli"
    assert f"package: {out}" in result.stdout


def test_train_missing_data(runner, tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "no-data")])
    assert one_error_line(result).startswith(f"error: data path {tmp_path / 'no-data'} is not a directory")
    assert not (tmp_path / "run").exists()


def test_train_bad_limit(runner, tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--limit-train-batches", "lots"])
    assert one_error_line(result) == ("error: --limit-train-batches takes a number of batches (60) or a fraction (0.25), "
                                       "got 'lots'")


def test_train_config_unknown_key(runner, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochz: 1\n", encoding="utf-8")
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--config", str(config)])
    assert "unknown keys ['epochz']" in one_error_line(result)


def test_train_invalid_epochs(runner, tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--epochs", "0"])
    assert one_error_line(result) == "error: --epochs must be at least 1, got 0"
