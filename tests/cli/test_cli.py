"""The commands through Typer's CliRunner: exit codes, JSON output, and exactly one `error: ...` line on stderr."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from onnxpack.cli import app


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def _one_error_line(result) -> str:
    """The whole of stderr for a user error: one line, `error: ...`, and nothing on stdout."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


# --- help (every command's: test_app.py) -------------------------------------------------------------------

def test_no_args_shows_help(runner):
    result = runner.invoke(app, [])
    assert "Usage: " in result.output and "build: train and package" in result.output
    assert "error:" not in result.output


# --- providers ----------------------------------------------------------------------------------------------

def test_providers_json(runner):
    result = runner.invoke(app, ["providers", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "CPUExecutionProvider" in data["available"]
    assert set(data["available"]) <= set(data["all"])


def test_providers_table(runner):
    result = runner.invoke(app, ["providers"])
    assert result.exit_code == 0 and "CPUExecutionProvider" in result.stdout


# --- predict ------------------------------------------------------------------------------------------------

def test_predict_texts(runner, package_dir):
    texts = ["the cat sat on the mat", "him saw she", "go"]
    result = runner.invoke(app, ["predict", str(package_dir), *texts, "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    rows = [json.loads(line) for line in lines]
    assert [r["text"] for r in rows] == texts
    for r in rows:
        assert r["label"] in ("unacceptable", "acceptable")
        assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-6)


def test_predict_long_text_stays_on_one_line(runner, package_dir):
    text = "the cat sat on the mat and " * 20 + "slept"
    result = runner.invoke(app, ["predict", str(package_dir), text])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["text"] == text


def test_predict_stdin(runner, package_dir):
    result = runner.invoke(app, ["predict", str(package_dir)], input="first text\n\nsecond text\n")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()] == ["first text", "second text"]


def test_predict_file_and_out(runner, package_dir, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("one text\n\n  \nanother one\n", encoding="utf-8")
    out = tmp_path / "out" / "predictions.jsonl"
    result = runner.invoke(app, ["predict", str(package_dir), "--file", str(texts), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == ["one text", "another one"]


@pytest.mark.parametrize("lines", [['{"text": "him saw she", "id": 1}', '{"text": "go"}'], ['"him saw she"', '"go"']],
                         ids=["objects", "strings"])
def test_predict_file_json_lines(runner, package_dir, tmp_path, lines):
    """JSON Lines of objects (read as a table, as batch reads them) or of bare strings."""
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["predict", str(package_dir), "--file", str(path)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()] == ["him saw she", "go"]


def test_predict_file_json_lines_without_the_text_key(runner, package_dir, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a text"}\n{"sentence": "another"}\n', encoding="utf-8")
    result = runner.invoke(app, ["predict", str(package_dir), "--file", str(path)])
    line = _one_error_line(result)  # the first text key found (sentence) is missing on row 1
    assert line == f"error: {path}: row 1 has no text under 'sentence' (hint: give every line the same text key(s))"


def test_predict_file_json_lines_of_mixed_shapes(runner, package_dir, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('"a text"\n["a", "pair"]\n', encoding="utf-8")
    result = runner.invoke(app, ["predict", str(package_dir), "--file", str(path)])
    assert _one_error_line(result) == (f"error: {path}:2 is not a string (or an object per line) "
                                       "(hint: write every line the same way)")


def test_predict_empty_stdin(runner, package_dir):
    result = runner.invoke(app, ["predict", str(package_dir)], input="")
    assert _one_error_line(result).startswith("error: no texts to predict")


def test_predict_not_a_package(runner, tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path), "hello"])
    line = _one_error_line(result)
    assert line == (f"error: {tmp_path} is not a package: it has no manifest.json "
                    "(hint: pass the folder `onnxpack export` wrote)")


def test_predict_texts_and_file(runner, package_dir, tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("a\n", encoding="utf-8")
    result = runner.invoke(app, ["predict", str(package_dir), "hello", "--file", str(texts)])
    assert _one_error_line(result) == "error: give texts as arguments or --file, not both"


def test_predict_missing_file(runner, package_dir, tmp_path):
    result = runner.invoke(app, ["predict", str(package_dir), "--file", str(tmp_path / "none.txt")])
    assert _one_error_line(result).startswith(f"error: cannot read {tmp_path / 'none.txt'}")


def test_predict_unknown_provider(runner, package_dir):
    result = runner.invoke(app, ["predict", str(package_dir), "hi", "--provider", "warp"])
    assert _one_error_line(result).startswith("error: unknown execution provider 'warp'; available: ")


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
    assert "is not there" in _one_error_line(result)


# --- export / train -----------------------------------------------------------------------------------------

def test_export_unknown_exporter(runner, trained_run, tmp_path):
    result = runner.invoke(app, ["export", str(trained_run / "best.ckpt"), "--out", str(tmp_path / "pkg"),
                                 "--exporter", "nope"])
    assert _one_error_line(result) == "error: unknown exporter 'nope'; known: dynamo, lightning, torchscript"
    assert not (tmp_path / "pkg").exists()


def test_export_existing_out(runner, trained_run, tmp_path):
    (tmp_path / "pkg").mkdir()
    result = runner.invoke(app, ["export", str(trained_run / "best.ckpt"), "--out", str(tmp_path / "pkg")])
    assert _one_error_line(result).startswith(f"error: {tmp_path / 'pkg'} already exists (hint: ")


def test_export_ok(runner, trained_run, tmp_path):
    out = tmp_path / "pkg"
    result = runner.invoke(app, ["export", str(trained_run / "best.ckpt"), "--out", str(out), "--name", "cli"])
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["name"] == "cli"
    assert f"package: {out}" in result.stdout


def test_train_missing_data(runner, tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "no-data")])
    assert _one_error_line(result).startswith(f"error: data path {tmp_path / 'no-data'} is not a directory")
    assert not (tmp_path / "run").exists()


def test_train_bad_limit(runner, tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--limit-train-batches", "lots"])
    assert _one_error_line(result) == ("error: --limit-train-batches takes a number of batches (60) or a fraction (0.25), "
                                       "got 'lots'")


def test_train_config_unknown_key(runner, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochz: 1\n", encoding="utf-8")
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--config", str(config)])
    assert "unknown keys ['epochz']" in _one_error_line(result)


def test_train_invalid_epochs(runner, tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--epochs", "0"])
    assert _one_error_line(result) == "error: --epochs must be at least 1, got 0"


# --- inspect, graph, profile, view: bad input is one line, exit 1, and no output file -------------------------

LOOKING = ("inspect", "graph", "view")  # the commands that take a package or an .onnx file


def _looking(command: str, target, out) -> list[str]:
    """Argument lists that would write under `out` if the command got that far."""
    writes = {"inspect": ["--json", str(out / "r.json")], "graph": ["--out", str(out / "g.html"), "--png", str(out / "g.png")],
              "profile": ["--out", str(out / "p.html")], "view": ["--no-browse"]}
    return [command, str(target), *writes[command]]


@pytest.fixture()
def bad_files(tmp_path, package_dir) -> dict:
    data = (package_dir / "model.onnx").read_bytes()
    files = {"text": b"not a model, just some text\n", "truncated": data[: len(data) // 2], "empty": b""}
    for name, content in files.items():
        (tmp_path / f"{name}.onnx").write_bytes(content)
    return {name: tmp_path / f"{name}.onnx" for name in files}


@pytest.mark.parametrize("command", LOOKING)
@pytest.mark.parametrize("kind, message", [
    ("text", "is not a readable ONNX model (Error parsing message"),
    ("truncated", "is not a readable ONNX model (Error parsing message"),
    ("empty", "is empty (0 bytes), not an ONNX model"),
])
def test_looking_at_a_file_that_is_not_onnx(runner, bad_files, tmp_path, command, kind, message):
    result = runner.invoke(app, _looking(command, bad_files[kind], tmp_path / "out"))
    assert _one_error_line(result).startswith(f"error: {bad_files[kind]} {message}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", (*LOOKING, "profile"))
def test_looking_at_nothing(runner, tmp_path, command):
    result = runner.invoke(app, _looking(command, tmp_path / "none", tmp_path / "out"))
    line = _one_error_line(result)
    assert line.startswith(f"error: {tmp_path / 'none'} ") and ("does not exist" in line or "not a directory" in line)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", (*LOOKING, "profile"))
def test_looking_at_an_unknown_variant(runner, package_dir, tmp_path, command):
    result = runner.invoke(app, [*_looking(command, package_dir, tmp_path / "out"), "--variant", "nope"])
    assert _one_error_line(result).startswith(f"error: package {package_dir} has no variant 'nope'; it has fp32")
    assert not (tmp_path / "out").exists()


def test_profile_a_damaged_package(runner, package_copy, tmp_path):
    model = package_copy / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    result = runner.invoke(app, _looking("profile", package_copy, tmp_path / "out"))
    assert _one_error_line(result) == ("error: package file model.onnx was altered: its sha256 does not match "
                                       "manifest.json (hint: re-export the package)")
    assert not (tmp_path / "out").exists()


def test_graph_too_large(runner, package_dir, tmp_path):
    result = runner.invoke(app, [*_looking("graph", package_dir, tmp_path / "out"), "--expand", "--max-nodes", "10"])
    line = _one_error_line(result)
    assert line.startswith("error: graph too large to draw in reasonable time: the graph has ")
    assert line.endswith("nodes, more than --max-nodes 10 (hint: collapse repeated blocks (leave out --expand))")
    assert not (tmp_path / "out").exists()


def test_inspect_json(runner, package_dir, tmp_path):
    result = runner.invoke(app, ["inspect", str(package_dir), "--json", str(tmp_path / "r.json"), "--seq", "8"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["compute"]["seq"] == 8 and f"{report['structure']['nodes']} nodes" in result.stdout
    assert "onnx.checker (full): ok" in result.stdout


def test_view_without_netron(runner, package_dir, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "netron", None)  # as if not installed
    result = runner.invoke(app, ["view", str(package_dir), "--no-browse"])
    assert _one_error_line(result) == ("error: Netron is not installed (hint: pip install 'onnxpack[netron]', "
                                       "or draw an offline page with `onnxpack graph`)")
