"""runtime/monitor.py: the per-text quantities, the profile and its buckets, PSI and KS, reading
prediction logs (corrupt lines counted and skipped, a damaged Parquet file in one line), and the
reference profile verify stores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onnxpack.core.config import MonitorConfig
from onnxpack.core.data import load_splits
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.families import ATTENTION_MASK, INPUT_IDS
from onnxpack.core.package import Package
from onnxpack.runtime import monitor as mon
from onnxpack.runtime.feed import (
    chunking_tokenizer,
    columns,
    default_stride,
    encode_windows,
    package_tokenizer,
)
from onnxpack.runtime.predictor import Predictor


@pytest.fixture(scope="module")
def verified(tmp_path_factory, package_dir, small_cola):
    """A copy of the tiny package with the reference profile `verify` stores."""
    from onnxpack.pytorch.verify import verify

    root = tmp_path_factory.mktemp("verified") / package_dir.name
    shutil.copytree(package_dir, root)
    verify(root, str(small_cola))
    return root


def record(label="acceptable", score=0.9, length=10, unknown=0, truncated=False, time="2025-01-01T00:00:00.000Z",
           **extra) -> dict:
    return {"time": time, "sha256": None, "label": label, "score": score, "length": length, "windows": 1,
            "unknown": unknown, "truncated": truncated, **extra}


def write_jsonl(path, records) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" if isinstance(r, dict) else r for r in records))


# ---- buckets, quantities, the profile ----

def test_length_edges_are_fixed_by_max_length():
    assert mon.length_edges(128) == [4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]
    assert mon.length_edges(64) == [4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert mon.length_edges(100)[-2:] == [96, 100]


def test_buckets_count_as_prometheus_does():
    # bucket i holds values <= edges[i] and over the edge before; one more bucket over the last
    edges = [4, 8, 16]
    assert mon.bucket(np.array([1, 4, 5, 8, 16, 17]), edges).tolist() == [0, 0, 1, 1, 2, 3]
    assert mon.bucket(np.array([0.05, 0.0500001, 1.0]), mon.SCORE_EDGES).tolist() == [0, 1, 19]


def test_text_quantities_count_tokens_unknowns_and_truncation(package_dir):
    package = Package.open(package_dir)
    m = package.manifest
    tokenizer = package_tokenizer(package.tokenizer_path, m.max_length, m.pad_token_id)
    unk = mon.unknown_token_id(tokenizer)
    assert tokenizer.id_to_token(unk) == "[UNK]"
    long = "the cat sat on the mat " * 30
    texts = ["the cat sat", "ζωή και θάνατος", long]
    encodings = tokenizer.encode_batch(texts)
    q = mon.text_quantities(encodings, unk)
    assert q.lengths.tolist() == [len(e.ids) - e.attention_mask.count(0) for e in encodings]
    assert q.lengths[2] == m.max_length and q.truncated.tolist() == [False, False, True]
    assert q.unknown[0] == 0 and q.unknown[1] >= 1  # the tiny English vocabulary has no Greek
    # the same numbers from the padded feed the server has already made
    padded = mon.text_quantities(encodings, unk, columns(encodings, (INPUT_IDS, ATTENTION_MASK)))
    assert padded.rows() == q.rows()
    # read in windows (chunk): the first window's quantities, truncated = more than one window
    chunker = chunking_tokenizer(package.tokenizer_path, m.max_length, m.pad_token_id, default_stride(m.max_length),
                                 m.pairs)
    feed, owner = encode_windows(chunker, texts, (INPUT_IDS, ATTENTION_MASK), m.pad_token_id)
    assert mon.window_quantities(feed, owner, len(texts), unk).rows() == q.rows()
    assert mon.TextQuantities.of_rows(q.rows()).rows() == q.rows()


def test_profile_round_trips_and_a_broken_one_is_one_line():
    profile = mon.Profile(["a", "b"], mon.SCORE_EDGES, [4, 8, 16])
    profile.add(np.array([0, 1, 1]), np.array([0.6, 0.95, 1.0]), np.array([3, 9, 40]), np.array([0, 1, 0]),
                np.array([False, False, True]))
    d = profile.to_dict()
    assert d["labels"] == {"a": 1, "b": 2} and d["lengths"]["counts"] == [1, 0, 1, 1]
    assert d["scores"]["counts"]["b"][18:] == [1, 1, 0]
    assert d["unknown_rate"] == pytest.approx(1 / 52) and d["truncation_rate"] == pytest.approx(1 / 3)
    again = mon.Profile.from_dict(json.loads(json.dumps(d)), "x")
    assert again.to_dict() == d
    with pytest.raises(OnnxpackError, match="^x is not a reference profile .*onnxpack verify"):
        mon.Profile.from_dict({"labels": {"a": 1}}, "x")
    d["lengths"]["edges"] = [8, 4, 16]
    with pytest.raises(OnnxpackError, match=r"^x is not a reference profile \(ValueError: bucket edges \[8, 4, 16\] "
                                            r"are not increasing\)"):
        mon.Profile.from_dict(d, "x")


def test_a_broken_reference_leaves_the_server_its_default_edges(package_copy, caplog):
    package = Package.open(package_copy)
    package.update_manifest(reference={"labels": "not a profile"})
    profile = mon.default_profile(Package.open(package_copy))
    assert profile.length_edges == mon.length_edges(package.manifest.max_length)
    assert "is not a reference profile" in caplog.text


def test_psi_and_binned_ks():
    ref = np.array([10, 50, 30, 10])
    assert mon.psi(ref, ref * 3) == pytest.approx(0)
    assert mon.psi(ref, np.array([40, 40, 10, 10])) > 0.25
    assert mon.psi(np.array([0, 100]), np.array([5, 95])) > 0.25  # from none to 5%: the floor keeps it finite
    d, p = mon.binned_ks(ref, ref)
    assert d == 0 and p == 1
    d, p = mon.binned_ks(ref * 10, np.array([400, 400, 100, 100]))
    assert d == pytest.approx(0.3) and p < 1e-6


def test_a_quantity_with_too_few_texts_is_shown_but_not_judged():
    reference = mon.Profile(["a", "b"], mon.SCORE_EDGES, [4, 8, 16])
    reference.add(np.array([0] * 150 + [1] * 50), np.full(200, 0.9), np.full(200, 6), np.zeros(200, int),
                  np.zeros(200, bool))
    live = mon.Profile(["a", "b"], mon.SCORE_EDGES, [4, 8, 16])
    live.add(np.array([0] * 120 + [1] * 80), np.full(200, 0.6), np.full(200, 12), np.zeros(200, int),
             np.zeros(200, bool))
    drifts = {d.quantity: d for d in mon.compare(reference, live, max_psi=0.25, min_texts=100)}
    assert drifts["score[a]"].texts == (150, 120) and drifts["score[a]"].judged and drifts["score[a]"].drifted
    assert drifts["score[b]"].texts == (50, 80) and not drifts["score[b]"].judged and not drifts["score[b]"].drifted
    assert drifts["score[b]"].psi > 0.25  # shown all the same
    assert drifts["length"].drifted and drifts["labels"].judged
    assert drifts["unknown_rate"].psi == 0 and not drifts["unknown_rate"].drifted


# ---- reading logs ----

def test_corrupt_lines_are_counted_skipped_and_named(tmp_path):
    labels = ["unacceptable", "acceptable"]
    write_jsonl(tmp_path / "predictions-1.jsonl", [
        record(), b"{not json\n", b"\n", b"[1, 2]\n", record(label="other"), record(score="high"),
        b"\xff\xfe\n", record(length=-1), record(time="yesterday"), {"label": "acceptable"}, record(truncated=1),
        record(score=0.55, length=5),
    ])
    (tmp_path / ".predictions-2.jsonl.tmp").write_text("still being written")  # a temp name: not read
    (tmp_path / "notes.txt").write_text("not a log")
    rows = mon.read_log(tmp_path, labels)
    assert len(rows.label) == 2 and rows.corrupt == 9
    assert rows.examples[0].startswith("predictions-1.jsonl:2: not JSON (")  # orjson's words follow
    assert rows.examples[1:4] == ["predictions-1.jsonl:4: not a JSON object",
                                  "predictions-1.jsonl:5: label 'other' is not one of the package's "
                                  "(unacceptable, acceptable)",
                                  "predictions-1.jsonl:6: score is not a number between 0 and 1"]
    assert rows.examples[4].startswith("predictions-1.jsonl:7: not JSON (")  # not UTF-8
    assert rows.files == [str(tmp_path / "predictions-1.jsonl")]


def test_a_truncated_parquet_file_is_one_line(tmp_path):
    path = tmp_path / "predictions.parquet"
    pq.write_table(pa.Table.from_pylist([record() for _ in range(50)]), path)
    rows = mon.read_log(path, ["unacceptable", "acceptable"])
    assert len(rows.label) == 50 and rows.corrupt == 0
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(OnnxpackError, match=r"predictions.parquet is not a readable Parquet file \(") as e:
        mon.read_log(tmp_path, ["unacceptable", "acceptable"])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p / "missing", "is neither a prediction log file nor a folder of them"),
    (lambda p: p, "holds no prediction logs (*.jsonl, *.parquet)"),
])
def test_no_log_is_one_line(tmp_path, make, message):
    with pytest.raises(OnnxpackError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        mon.log_files(make(tmp_path))


# ---- the reference and the stage ----

def test_verify_stores_the_served_variants_reference(verified, small_cola):
    package = Package.open(verified)
    ref = package.manifest.reference
    texts = load_splits(str(small_cola), need_train=False).validation.texts
    assert ref["n"] == len(texts) and ref["variant"] == "fp32" and ref["data"]
    assert ref["scores"]["edges"] == list(mon.SCORE_EDGES)
    assert ref["lengths"]["edges"] == mon.length_edges(package.manifest.max_length)
    with Predictor(verified) as predictor:
        answers = predictor.predict(texts)
    counts = {name: sum(a["label"] == name for a in answers) for name in package.manifest.labels}
    assert ref["labels"] == counts
    assert sum(map(sum, ref["scores"]["counts"].values())) == sum(ref["lengths"]["counts"]) == len(texts)


def test_monitor_without_a_reference_names_verify(package_dir, tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [record()])
    with pytest.raises(OnnxpackError, match=r"has no reference profile .* run `onnxpack verify "):
        mon.monitor(package_dir, tmp_path)


def test_window_keeps_the_last_stretch_of_log_time(verified, tmp_path):
    old = [record(length=40, time="2025-01-01T00:00:00Z") for _ in range(200)]
    new = [record(length=8, time=f"2025-01-01T02:00:{s:02d}Z") for s in range(50)]
    write_jsonl(tmp_path / "p.jsonl", old + new)
    whole = mon.monitor(verified, tmp_path)
    last = mon.monitor(verified, tmp_path, MonitorConfig(window="1h"))
    assert (whole.records, last.records, last.outside_window) == (250, 50, 200)
    assert last.first == "2025-01-01T02:00:00+00:00" and last.last == "2025-01-01T02:00:49+00:00"


def test_a_log_with_only_corrupt_lines_is_one_line(verified, tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [b"{\n", b"nope\n"])
    with pytest.raises(OnnxpackError, match=r"holds no usable prediction records \(2 corrupt lines skipped: "
                                            r"p.jsonl:1: not JSON"):
        mon.monitor(verified, tmp_path)
