"""cli/run.py: predict and providers through Typer's CliRunner: output, and exactly one `error: ...` line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import one_error_line

from onnxpack.cli import app
from onnxpack.core import cpu

# --- providers ----------------------------------------------------------------------------------------------

def test_providers_json(runner):
    result = runner.invoke(app, ["providers", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "CPUExecutionProvider" in data["available"]
    assert set(data["available"]) <= set(data["all"])
    assert data["cpu"] == cpu.record() and "int8_path" in data["cpu"]


def test_providers_table(runner):
    result = runner.invoke(app, ["providers"])
    assert result.exit_code == 0 and "CPUExecutionProvider" in result.stdout
    assert result.stdout.splitlines()[0] == cpu.summary()


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
    line = one_error_line(result)  # the first text key found (sentence) is missing on row 1
    assert line == f"error: {path}: row 1 has no text under 'sentence' (hint: give every line the same text key(s))"


def test_predict_file_json_lines_of_mixed_shapes(runner, package_dir, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('"a text"\n["a", "pair"]\n', encoding="utf-8")
    result = runner.invoke(app, ["predict", str(package_dir), "--file", str(path)])
    assert one_error_line(result) == (f"error: {path}:2 is not a string (or an object per line) "
                                       "(hint: write every line the same way)")


def test_predict_empty_stdin(runner, package_dir):
    result = runner.invoke(app, ["predict", str(package_dir)], input="")
    assert one_error_line(result).startswith("error: no texts to predict")


def test_predict_not_a_package(runner, tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path), "hello"])
    line = one_error_line(result)
    assert line == (f"error: {tmp_path} is not a package: it has no manifest.json "
                    "(hint: pass the folder `onnxpack export` wrote)")


def test_predict_texts_and_file(runner, package_dir, tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("a\n", encoding="utf-8")
    result = runner.invoke(app, ["predict", str(package_dir), "hello", "--file", str(texts)])
    assert one_error_line(result) == "error: give texts as arguments or --file, not both"


def test_predict_missing_file(runner, package_dir, tmp_path):
    result = runner.invoke(app, ["predict", str(package_dir), "--file", str(tmp_path / "none.txt")])
    assert one_error_line(result).startswith(f"error: cannot read {tmp_path / 'none.txt'}")


def test_predict_unknown_provider(runner, package_dir):
    result = runner.invoke(app, ["predict", str(package_dir), "hi", "--provider", "warp"])
    assert one_error_line(result).startswith("error: unknown execution provider 'warp'; available: ")


@pytest.fixture(scope="module")
def cascade_package(tmp_path_factory, package_dir, small_cola):
    import shutil

    from onnxpack.core.config import OptimizeConfig
    from onnxpack.runtime.optimize import optimize

    root = tmp_path_factory.mktemp("cascade") / "pkg"
    shutil.copytree(package_dir, root)
    optimize(root, OptimizeConfig(variants=("optimized", "int8-cascade"), data=str(small_cola), max_mcc_drop=1.0,
                                  min_agreement=0))
    return root


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "model.int8-cascade.onnx").write_bytes((root / "model.int8-cascade.onnx").read_bytes() + b"\0"),
     "package file model.int8-cascade.onnx was altered"),
    (lambda root: (root / "model.optimized.onnx").unlink(), "is missing model.optimized.onnx"),
])
def test_a_cascade_whose_graphs_were_altered_or_removed_is_refused_in_one_line(runner, cascade_package, tmp_path,
                                                                               damage, message):
    import shutil

    root = tmp_path / "pkg"
    shutil.copytree(cascade_package, root)
    assert runner.invoke(app, ["predict", str(root), "--variant", "int8-cascade", "a text"]).exit_code == 0
    damage(root)
    result = runner.invoke(app, ["predict", str(root), "--variant", "int8-cascade", "a text"])
    assert result.exit_code != 0 and message in one_error_line(result)


def test_predict_long_text_chunk(runner, package_dir):
    long = " ".join(["the cat that the dog chased sat on the mat"] * 15)
    result = runner.invoke(app, ["predict", str(package_dir), "--long-text", "chunk", "--stride", "8",
                                 "--aggregate", "max", long, "the cat sat"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["windows"] > 1 and rows[1]["windows"] == 1


@pytest.mark.parametrize("args, message", [
    (["--long-text", "chunk", "--stride", "9999"], "--stride must be smaller than the window"),
    (["--long-text", "chunk", "--aggregate", "sum"], "--aggregate must be mean or max, got 'sum'"),
    (["--long-text", "whole"], "--long-text must be truncate or chunk, got 'whole'"),
])
def test_predict_bad_long_text_options(runner, package_dir, args, message):
    result = runner.invoke(app, ["predict", str(package_dir), *args, "a text"])
    assert result.exit_code != 0 and message in one_error_line(result)


# --- monitor ------------------------------------------------------------------------------------------------

def _log(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps({"time": "2025-01-01T00:00:00Z", "sha256": None, "windows": 1,
                                                      "unknown": 0, "truncated": False, **r}) for r in records]
    (folder / "predictions-1.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def referenced(tmp_path_factory, package_dir):
    """The tiny package with a reference profile as verify stores it (made here without torch)."""
    import shutil

    from onnxpack.core.data import load_splits
    from onnxpack.core.package import Package
    from onnxpack.runtime.monitor import reference_profile
    from onnxpack.runtime.predictor import Predictor

    root = tmp_path_factory.mktemp("referenced") / package_dir.name
    shutil.copytree(package_dir, root)
    texts = load_splits(None, need_train=False).validation.texts[:200]
    with Predictor(root) as predictor:
        logits = predictor.predict_logits(texts)
    package = Package.open(root)
    package.update_manifest(reference=reference_profile(package, texts, logits, "fp32", "bundled"))
    return root


def test_monitor_passes_a_log_like_the_reference_and_writes_json_and_a_plot(runner, referenced, tmp_path):
    from onnxpack.core.package import Package

    ref = Package.open(referenced).manifest.reference
    label = max(ref["labels"], key=ref["labels"].get)
    score = ref["scores"]["edges"][int(np.argmax(ref["scores"]["counts"][label]))] - 0.01
    length = ref["lengths"]["edges"][int(np.argmax(ref["lengths"]["counts"]))]
    logs = _log(tmp_path / "logs", [{"label": label, "score": score, "length": length}] * 20 + ["{corrupt"])
    result = runner.invoke(app, ["monitor", str(referenced), "--input", str(logs), "--max-psi", "50", "--min-texts",
                                 "10", "--json", str(tmp_path / "m.json"), "--plot", str(tmp_path / "m.png")])
    assert result.exit_code == 0, result.output
    assert "no drift: every PSI judged is at or under 50" in result.stdout
    assert "1 corrupt lines skipped, the first: predictions-1.jsonl:21: not JSON" in result.stdout
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["records"] == 20 and report["corrupt"] == 1 and report["max_psi"] == 50
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # at the default bar: every text of one length is far from the reference's spread of lengths
    result = runner.invoke(app, ["monitor", str(referenced), "--input", str(logs), "--min-texts", "10"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stdout.splitlines()[-1].startswith("drift: PSI over 0.25 on ") and "length" in result.stdout
    # 20 texts are too few to judge at the default --min-texts 100: shown, not judged
    result = runner.invoke(app, ["monitor", str(referenced), "--input", str(logs)])
    assert result.exit_code == 0 and "not judged, under --min-texts 100 texts on a side: labels, " in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--window", "soon"], "error: --window must be a positive duration such as 90s, 30m, 1h or 2d, got 'soon'"),
    (["--max-psi", "0"], "error: --max-psi must be above 0, got 0.0"),
    (["--min-texts", "0"], "error: --min-texts must be at least 1, got 0"),
])
def test_monitor_bad_options(runner, referenced, tmp_path, args, message):
    logs = _log(tmp_path / "logs", [{"label": "acceptable", "score": 0.9, "length": 9}])
    assert one_error_line(runner.invoke(app, ["monitor", str(referenced), "--input", str(logs), *args])) == message


def test_monitor_hostile_inputs_are_one_line(runner, referenced, package_dir, tmp_path):
    logs = _log(tmp_path / "logs", [{"label": "acceptable", "score": 0.9, "length": 9}])
    cases = {
        "no reference": ([str(package_dir), "--input", str(logs)],
                         f"error: {package_dir} has no reference profile to compare the predictions with; run "
                         f"`onnxpack verify {package_dir}`"),
        "not a package": ([str(tmp_path), "--input", str(logs)], f"error: {tmp_path} is not a package"),
        "no log": ([str(referenced), "--input", str(tmp_path / "none")],
                   f"error: {tmp_path / 'none'} is neither a prediction log file nor a folder of them"),
        "only corrupt lines": ([str(referenced), "--input", str(_log(tmp_path / "bad", ["{", "[]"]))],
                               f"error: {tmp_path / 'bad'} holds no usable prediction records (2 corrupt lines "
                               "skipped: predictions-1.jsonl:1: not JSON"),
    }
    (tmp_path / "cut.parquet").write_bytes(b"PAR1\x00\x01")
    cases["truncated parquet"] = ([str(referenced), "--input", str(tmp_path / "cut.parquet")],
                                  f"error: {tmp_path / 'cut.parquet'} is not a readable Parquet file (")
    for name, (args, start) in cases.items():
        line = one_error_line(runner.invoke(app, ["monitor", *args]))
        assert line.startswith(start), (name, line)
