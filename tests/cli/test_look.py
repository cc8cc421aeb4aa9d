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


# --- diff --------------------------------------------------------------------------------------------------------

def _relabelled(package_dir, out, labels):
    """A copy of the package whose manifest names other labels (the manifest is not among the hashed files)."""
    import shutil

    root = shutil.copytree(package_dir, out)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps(manifest | {"labels": labels}))
    return root


def test_diff_writes_json_and_html_and_gates_on_agreement(runner, package_dir, small_cola, tmp_path):
    swapped = _relabelled(package_dir, tmp_path / "swapped", ["acceptable", "unacceptable"])  # every answer flips
    out = tmp_path / "out"
    args = ["diff", str(package_dir), str(swapped), "--data", str(small_cola), "--json", str(out / "d.json"),
            "--html", str(out / "d.html")]
    result = runner.invoke(app, [*args, "--min-agreement", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "d.json").read_text())
    assert report["agreement"] == 0.0 and report["passed"] and report["behaviour"]["flipped"] == 64
    assert "agreement 0.0000: 64 of 64 rows flipped" in result.stdout and "flipped rows" in result.stdout
    assert "<h2>Behaviour: agreement 0.0000" in (out / "d.html").read_text()
    result = runner.invoke(app, [*args, "--min-agreement", "0.5"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == ("diff: labels agree on 0.0000 of the rows (64 of 64 flipped), under "
                                               "--min-agreement 0.5")
    assert "Traceback" not in result.output and not json.loads((out / "d.json").read_text())["passed"]
    result = runner.invoke(app, ["diff", f"{package_dir}@fp32", str(package_dir), "--data", str(small_cola)])
    assert result.exit_code == 0 and "agreement 1.0000 ≥ --min-agreement 0.99" in result.stdout


def test_diff_different_label_sets(runner, package_dir, small_cola, tmp_path):
    renamed = _relabelled(package_dir, tmp_path / "renamed", ["bad", "good"])
    out = tmp_path / "out"
    args = ["diff", str(package_dir), str(renamed), "--data", str(small_cola), "--json", str(out / "d.json"),
            "--html", str(out / "d.html")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "manifests" in result.stdout and "weights" in result.stdout  # the structure, shown
    assert result.stderr.splitlines() == [(
        "error: A's labels ['unacceptable', 'acceptable'] and B's ['bad', 'good'] differ, so their answers cannot be "
        "compared (hint: map them with --map-labels A's=B's,... (e.g. bad=unacceptable,good=acceptable))")]
    assert not out.exists()
    result = runner.invoke(app, [*args, "--map-labels", "unacceptable=bad,acceptable=good"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "d.json").read_text())["agreement"] == 1.0


@pytest.mark.parametrize(("which", "extra", "message"), [
    ("empty_dir", [], "{empty_dir} is not a package: it has no manifest.json"),
    ("broken", [], "{broken}/manifest.json is not valid JSON"),
    ("missing", [], "{missing} does not exist"),
    ("unknown_variant", [], "package {package} has no variant 'nope'; it has fp32"),
    ("not_onnx", [], "{not_onnx} is not a readable ONNX model"),
    ("file_at_variant", [], "{package}/model.onnx is a single file; @fp32 names a variant of a package folder"),
    ("package", ["--map-labels", "bad"], "--map-labels takes A's label=B's label, comma-separated; got 'bad'"),
    ("package", ["--map-labels", "nope=acceptable,unacceptable=unacceptable"],
     "--map-labels maps 'nope', which is not one of A's labels ['unacceptable', 'acceptable']"),
    ("package", ["--map-labels", "unacceptable=acceptable"], "--map-labels maps two of A's labels to B's 'acceptable'"),
    ("package", ["--min-agreement", "1.5"], "--min-agreement must be between 0 and 1, got 1.5"),
])
def test_diff_bad_input(runner, package_dir, tmp_path, which, extra, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text('{"format_version": 1, "labels": [')
    (tmp_path / "notes.onnx").write_text("not a model\n")
    places = {"empty_dir": tmp_path / "empty", "broken": tmp_path / "broken", "missing": tmp_path / "none",
              "package": package_dir,
              "unknown_variant": f"{package_dir}@nope", "not_onnx": tmp_path / "notes.onnx",
              "file_at_variant": f"{package_dir / 'model.onnx'}@fp32"}
    out = tmp_path / "out"
    result = runner.invoke(app, ["diff", str(package_dir), str(places[which]), *extra, "--json", str(out / "d.json"),
                                 "--html", str(out / "d.html")])
    expected = message.format(package=package_dir, **{k: v for k, v in places.items() if k != "package"})
    assert one_error_line(result).startswith(f"error: {expected}")
    assert not out.exists()


@pytest.mark.parametrize("case", ["random_bytes", "external_parent", "custom_domain", "renamed_inputs", "swapped_graph"])
@pytest.mark.parametrize("side", ["a", "b"])
def test_diff_refuses_a_hostile_package_on_either_side(runner, package_dir, tmp_path, case, side):
    from conftest import hostile_package

    hostile = hostile_package(package_dir, tmp_path / "p", case)
    pair = [hostile, package_dir] if side == "a" else [package_dir, hostile]
    out = tmp_path / "out"
    result = runner.invoke(app, ["diff", *map(str, pair), "--json", str(out / "d.json"), "--html", str(out / "d.html")])
    one_error_line(result)
    assert not out.exists()
