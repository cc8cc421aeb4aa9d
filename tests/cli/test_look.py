"""cli/look.py: inspect, explain, graph, profile and view: what they write, and bad input is one line, exit 1,
and no output file."""

from __future__ import annotations

import json

import pytest
from conftest import one_error_line

from onnxpack.cli import app

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
    assert one_error_line(result).startswith(f"error: {bad_files[kind]} {message}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", (*LOOKING, "profile"))
def test_looking_at_nothing(runner, tmp_path, command):
    result = runner.invoke(app, _looking(command, tmp_path / "none", tmp_path / "out"))
    line = one_error_line(result)
    assert line.startswith(f"error: {tmp_path / 'none'} ") and ("does not exist" in line or "not a directory" in line)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", (*LOOKING, "profile"))
def test_looking_at_an_unknown_variant(runner, package_dir, tmp_path, command):
    result = runner.invoke(app, [*_looking(command, package_dir, tmp_path / "out"), "--variant", "nope"])
    assert one_error_line(result).startswith(f"error: package {package_dir} has no variant 'nope'; it has fp32")
    assert not (tmp_path / "out").exists()


def test_profile_a_damaged_package(runner, package_copy, tmp_path):
    model = package_copy / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    result = runner.invoke(app, _looking("profile", package_copy, tmp_path / "out"))
    assert one_error_line(result) == ("error: package file model.onnx was altered: its sha256 does not match "
                                       "manifest.json (hint: re-export the package)")
    assert not (tmp_path / "out").exists()


def test_graph_too_large(runner, package_dir, tmp_path):
    result = runner.invoke(app, [*_looking("graph", package_dir, tmp_path / "out"), "--expand", "--max-nodes", "10"])
    line = one_error_line(result)
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
    assert one_error_line(result) == ("error: Netron is not installed (hint: pip install 'onnxpack[netron]', "
                                       "or draw an offline page with `onnxpack graph`)")


# --- explain -------------------------------------------------------------------------------------------------

def test_explain_writes_json_and_html(runner, package_dir, tmp_path):
    from onnxpack.runtime.predictor import Predictor

    text = "The boy is sitting on a bench."
    result = runner.invoke(app, ["explain", str(package_dir), text, "--json", str(tmp_path / "why.json"),
                                 "--html", str(tmp_path / "why.html")])
    assert result.exit_code == 0, result.output
    (answer,) = json.loads((tmp_path / "why.json").read_text())
    with Predictor(package_dir) as predictor:
        (expected,) = predictor.explain([text])
    assert answer == json.loads(json.dumps(expected))
    assert [w["word"] for w in answer["words"]] == text.split()
    assert result.stdout.splitlines()[:2] == [f"{answer['label']} {answer['score']:.3f}", f"  {text}"]
    assert "bench." in (tmp_path / "why.html").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["why.html", "why.json"]


@pytest.mark.parametrize(("args", "message"), [
    (["The boy is sitting on a bench.", "--max-words", "3"], "has 7 words to explain, over --max-words 3"),
    (["a text", "--label", "maybe"], "unknown label 'maybe'"),
    (["   "], "text 0 is empty"),
    (["a text", "--long-text", "chunk", "--stride", "64"], "--stride must be smaller than the window"),
    (["a text", "--aggregate", "median"], "--aggregate must be mean or max"),
    (["a text", "--max-words", "0"], "--max-words"),
])
def test_explain_bad_input(runner, package_dir, tmp_path, args, message):
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(package_dir), *args, "--json", str(out / "w.json"),
                                 "--html", str(out / "w.html")])
    assert message in one_error_line(result)
    assert not out.exists()
