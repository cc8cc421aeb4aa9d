"""batch/local.py and batch/ray_data.py: every input row gives one output row, in order, on both engines."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import onnxpack.runtime.batch.local
from onnxpack.cli import app
from onnxpack.core.config import BatchConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.runtime.batch.local import run_local
from onnxpack.runtime.predictor import Predictor

TEXTS = ["the book was written by john", "him saw she", "go", "the professor who the students admired resigned",
         "what did you wonder whether mary bought"]


def _tsv(path, rows: list[tuple[str, str]], header: str = "id\tsentence"):
    path.write_text(header + "\n" + "".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
    return path


@pytest.fixture()
def input_file(tmp_path):
    rows = [(f"r{i}", TEXTS[i % len(TEXTS)] if i % 7 else " ") for i in range(40)]  # every 7th row is empty
    return _tsv(tmp_path / "in.tsv", rows)


def _rows(path):
    if path.suffix == ".parquet":
        return [r | {"scores": dict(r["scores"]) if r["scores"] else None} for r in pq.read_table(path).to_pylist()]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_local_rows_in_order_with_errors(package_dir, input_file, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    summary = run_local(package_dir, str(input_file), out, BatchConfig(id_column="id", chunk_rows=6))
    rows = _rows(out)
    assert summary.rows == len(rows) == 40 and summary.errors == 6 and summary.peak_rss_mb > 0
    assert [str(r["id"]) for r in rows] == [f"r{i}" for i in range(40)]
    with Predictor(package_dir) as predictor:
        expected = predictor.predict([TEXTS[i % len(TEXTS)] for i in range(40) if i % 7])
    good = [r for r in rows if r["error"] is None]
    assert [r["label"] for r in good] == [e["label"] for e in expected]
    for got, want in zip(good, expected):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)
    assert all(r["error"] == "empty text" and r["label"] is None for r in rows if r not in good)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.tsv", out.name])  # no temp file left


def test_chunk_size_does_not_change_the_rows(package_dir, input_file, tmp_path):
    run_local(package_dir, str(input_file), tmp_path / "a.jsonl", BatchConfig(chunk_rows=1))
    run_local(package_dir, str(input_file), tmp_path / "b.jsonl", BatchConfig(chunk_rows=10_000))
    a, b = _rows(tmp_path / "a.jsonl"), _rows(tmp_path / "b.jsonl")
    assert [r["id"] for r in a] == list(range(40))  # no id column: the row number
    assert [(r["label"], r["error"]) for r in a] == [(r["label"], r["error"]) for r in b]


def test_folder_glob_csv_jsonl_and_parquet_inputs(package_dir, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for k in range(2):
        (folder / f"part{k}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    run_local(package_dir, str(folder), tmp_path / "folder.jsonl")
    run_local(package_dir, str(folder / "*.jsonl"), tmp_path / "glob.jsonl")
    pq.write_table(pa.table({"text": TEXTS * 2}), tmp_path / "in.parquet")
    run_local(package_dir, str(tmp_path / "in.parquet"), tmp_path / "pq.jsonl")
    (tmp_path / "in.csv").write_text("text\n" + "".join(f'"{t}, indeed"\n' for t in TEXTS), encoding="utf-8")
    run_local(package_dir, str(tmp_path / "in.csv"), tmp_path / "csv.jsonl")
    labels = [r["label"] for r in _rows(tmp_path / "folder.jsonl")]
    assert len(labels) == 10 and labels == [r["label"] for r in _rows(tmp_path / "glob.jsonl")]
    assert labels == [r["label"] for r in _rows(tmp_path / "pq.jsonl")]
    assert len(_rows(tmp_path / "csv.jsonl")) == 5


def test_pairs(tiny_model_dir, tmp_path):
    from conftest import tiny_family_folder

    from onnxpack.core.config import ExportConfig
    from onnxpack.pytorch.export import export

    folder = tiny_family_folder("bert", tiny_model_dir, tmp_path / "hf", ["no", "yes"])
    package = export(folder, tmp_path / "pkg", ExportConfig(pairs=True))
    path = _tsv(tmp_path / "pairs.tsv", [("a b", "c d"), ("e", "f")], header="left\tright")
    run_local(package.root, str(path), tmp_path / "out.jsonl", BatchConfig(pair_columns=("left", "right")))
    with Predictor(package.root) as predictor:
        expected = predictor.predict([("a b", "c d"), ("e", "f")])
    assert [r["label"] for r in _rows(tmp_path / "out.jsonl")] == [e["label"] for e in expected]
    with pytest.raises(OnnxpackError, match="this model reads sentence pairs"):
        run_local(package.root, str(path), tmp_path / "x.jsonl", BatchConfig(text_column="left"))


@pytest.mark.parametrize(("setup", "args", "message"), [
    (lambda d: _tsv(d / "in.tsv", [("1", "x")], header="id\tbody"), ["--input", "{d}/in.tsv", "--output", "{d}/o.jsonl"],
     "the input has columns id, body; expected a text column (sentence/text)"),
    (lambda d: _tsv(d / "in.tsv", [("1", "x")]), ["--input", "{d}/in.tsv", "--output", "{d}/o.jsonl", "--text-column", "body"],
     "the input has no column 'body'"),
    (lambda d: (d / "in.xlsx").write_bytes(b"PK"), ["--input", "{d}/in.xlsx", "--output", "{d}/o.jsonl"],
     "in.xlsx is not a supported input (.xlsx)"),
    (lambda d: (d / "in.parquet").write_bytes(b"not parquet"), ["--input", "{d}/in.parquet", "--output", "{d}/o.jsonl"],
     "cannot read"),
    (lambda d: _tsv(d / "in.tsv", [("1", "x")]), ["--input", "{d}/in.tsv", "--output", "{d}/missing/o.jsonl"],
     "folder {d}/missing does not exist"),
    (lambda d: _tsv(d / "in.tsv", [("1", "x")]), ["--input", "{d}/in.tsv", "--output", "{d}/o.csv"],
     "is not a supported format"),
    (lambda d: None, ["--input", "{d}/nothing*.tsv", "--output", "{d}/o.jsonl"], "names no file"),
    (lambda d: _tsv(d / "in.tsv", [("1", "x")]), ["--input", "{d}/in.tsv", "--output", "{d}/missing/parts/"],
     "folder {d}/missing does not exist"),
    (lambda d: _tsv(d / "in.tsv", [("1", "x")]) and (d / "in.tsv"), ["--input", "{d}/in.tsv", "--output", "{d}/"],
     "is a folder that holds other files"),
    (lambda d: _tsv(d / "in.tsv", [("1", "x")]), ["--input", "{d}/in.tsv", "--output", "{d}/o.jsonl", "--engine", "spark"],
     "unknown engine 'spark'; known: local, ray"),
])
def test_bad_input_is_one_line_and_writes_nothing(package_dir, tmp_path, setup, args, message):
    setup(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["batch", str(package_dir), *(a.format(d=tmp_path) for a in args)])
    assert result.exit_code == 1 and message.format(d=tmp_path) in " ".join(result.output.split()), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_interrupted_run_leaves_nothing_and_a_rerun_works(package_dir, input_file, tmp_path, monkeypatch):
    calls = []
    real = onnxpack.runtime.batch.local.classify

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxpack.runtime.batch.local, "classify", failing)
    with pytest.raises(KeyboardInterrupt):
        run_local(package_dir, str(input_file), tmp_path / "out.parquet", BatchConfig(chunk_rows=5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tsv"]
    monkeypatch.setattr(onnxpack.runtime.batch.local, "classify", real)
    assert run_local(package_dir, str(input_file), tmp_path / "out.parquet").rows == 40


@pytest.mark.timeout(300)
def test_ray_engine_agrees_with_local(package_dir, input_file, tmp_path):
    from onnxpack.runtime.batch.ray_data import run_ray

    local = run_local(package_dir, str(input_file), tmp_path / "local.jsonl", BatchConfig(id_column="id"))
    ray_summary = run_ray(package_dir, str(input_file), tmp_path / "ray.jsonl", BatchConfig(id_column="id", chunk_rows=8),
                          num_workers=2)
    assert ray_summary.rows == local.rows == 40 and ray_summary.errors == local.errors
    a, b = _rows(tmp_path / "local.jsonl"), _rows(tmp_path / "ray.jsonl")
    assert [(r["id"], r["label"], r["error"]) for r in a] == [(r["id"], r["label"], r["error"]) for r in b]
    for x, y in zip(a, b):
        if x["scores"]:
            assert x["scores"] == pytest.approx(y["scores"], abs=1e-5)


def test_ray_unreachable_address_fails_fast(package_dir, input_file, tmp_path):
    started = time.monotonic()
    result = CliRunner().invoke(app, ["batch", str(package_dir), "--input", str(input_file), "--output",
                                      str(tmp_path / "o.jsonl"), "--engine", "ray", "--address", "127.0.0.1:1"])
    assert result.exit_code == 1 and "cannot reach a Ray cluster at 127.0.0.1:1" in result.output
    assert time.monotonic() - started < 30 and not (tmp_path / "o.jsonl").exists()


def test_ray_missing_says_how_to_install(package_dir, input_file, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = CliRunner().invoke(app, ["batch", str(package_dir), "--input", str(input_file), "--output",
                                      str(tmp_path / "o.jsonl"), "--engine", "ray"])
    assert result.exit_code == 1
    assert "error: the ray engine needs Ray Data (hint: pip install 'onnxpack[ray]')" in " ".join(result.output.split())
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("folder", ["parts/", "parts.jsonl/"])
def test_folder_output_is_part_files_and_replaces_only_its_own(package_dir, input_file, tmp_path, folder):
    out = f"{tmp_path}/{folder}"  # the trailing / asks for a folder
    summary = run_local(package_dir, str(input_file), out, BatchConfig(id_column="id", chunk_rows=15))
    path = tmp_path / folder.rstrip("/")
    marker = json.loads((path / onnxpack.runtime.batch.local.FOLDER_MARKER).read_text())
    suffix = ".jsonl" if "jsonl" in folder else ".parquet"
    assert marker["parts"] == [f"part-0000{k}{suffix}" for k in range(3)] and marker["rows"] == summary.rows == 40
    rows = [r for part in marker["parts"] for r in _rows(path / part)]
    assert [str(r["id"]) for r in rows] == [f"r{i}" for i in range(40)]
    run_local(package_dir, str(input_file), tmp_path / "one.jsonl", BatchConfig(id_column="id"))
    assert [(r["label"], r["error"]) for r in rows] == [(r["label"], r["error"]) for r in _rows(tmp_path / "one.jsonl")]
    run_local(package_dir, str(input_file), out, BatchConfig(chunk_rows=40))  # a rerun replaces its own output
    assert json.loads((path / onnxpack.runtime.batch.local.FOLDER_MARKER).read_text())["parts"] == [f"part-00000{suffix}"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OnnxpackError, match="holds other files"):
        run_local(package_dir, str(input_file), str(other), BatchConfig())
    assert (other / "notes.txt").read_text() == "mine" and not list(tmp_path.glob(".*tmp-*"))


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_long_text_chunk_in_both_engines(package_dir, tmp_path, engine):
    long = " ".join(["the cat that the dog chased sat on the mat"] * 15)
    rows = [("a", long), ("b", "the cat sat"), ("c", " "), ("d", long[:150])]
    source = _tsv(tmp_path / "long.tsv", rows)
    config = BatchConfig(id_column="id", long_text="chunk", aggregate="max", chunk_rows=2)
    out = tmp_path / "out.parquet"
    if engine == "ray":
        from onnxpack.runtime.batch.ray_data import run_ray

        run_ray(package_dir, str(source), out, config, num_workers=1)
    else:
        run_local(package_dir, str(source), out, config)
    got = _rows(out)
    with Predictor(package_dir) as predictor:
        want = predictor.predict([long, "the cat sat", long[:150]], long_text="chunk", aggregate="max")
    good = [r for r in got if r["error"] is None]
    assert [r["windows"] for r in good] == [w["windows"] for w in want] and good[0]["windows"] > 1
    for row, expected in zip(good, want):
        assert row["scores"] == pytest.approx(expected["scores"], abs=1e-6)
    assert got[2]["error"] == "empty text" and got[2]["windows"] is None


def test_batch_cli_takes_the_long_text_options(package_dir, tmp_path):
    source = _tsv(tmp_path / "in.tsv", [("a", " ".join(["the cat sat on the mat"] * 30))])
    out = tmp_path / "o.jsonl"
    result = CliRunner().invoke(app, ["batch", str(package_dir), "--input", str(source), "--output", str(out),
                                      "--long-text", "chunk", "--stride", "4"])
    assert result.exit_code == 0, result.output
    assert _rows(out)[0]["windows"] > 1
    bad = CliRunner().invoke(app, ["batch", str(package_dir), "--input", str(source), "--output", str(out),
                                   "--long-text", "chunk", "--aggregate", "sum"])
    assert bad.exit_code != 0 and "--aggregate must be mean or max" in bad.output
