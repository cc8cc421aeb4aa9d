"""data.py: reading TSV/CSV, finding the data, CoLA's splits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import onnxpack.data
from conftest import cola_dir, write_tsv
from onnxpack.data import DATA_ENV, default_data_dirs, load_splits, read_table, resolve_data
from onnxpack.errors import DataError

ROWS = [("the cat sat on the mat", 1), ("mat the on sat cat", 0), ("who did you see", 1)]


# --- read_table ---------------------------------------------------------------------------------------------

def test_read_tsv(tmp_path):
    split = read_table(write_tsv(tmp_path / "t.tsv", ROWS))
    assert split.texts == [t for t, _ in ROWS]
    assert split.labels == [y for _, y in ROWS]
    assert len(split) == 3


def test_read_tsv_keeps_quotes_verbatim(tmp_path):
    # CoLA's TSV is unquoted: a '"' is part of the sentence, not CSV quoting.
    rows = [('he said " go " and left', 1), ("it 's \"fine", 0)]
    assert read_table(write_tsv(tmp_path / "q.tsv", rows)).texts == [t for t, _ in rows]


def test_read_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('id,Text,Label\n7,"a, quoted, sentence",1\n8,plain,0\n', encoding="utf-8")
    split = read_table(path)
    assert split.texts == ["a, quoted, sentence", "plain"]
    assert split.labels == [1, 0]


def test_read_table_skips_blank_lines(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel\n\none\t1\n\t\ntwo\t0\n", encoding="utf-8")
    assert read_table(path).texts == ["one", "two"]


def test_headerless_file_names_columns(tmp_path):
    path = tmp_path / "noheader.tsv"
    path.write_text("the cat sat\t1\nsat cat the\t0\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_table(path)
    message = str(info.value)
    assert f"{path} has columns ['the cat sat', '1']" in message
    assert "sentence/text/sentence1" in message and "label/labels" in message


def test_wrong_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("sentence,score\nhello,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"has columns \['sentence', 'score'\]; expected a text column"):
        read_table(path)


def test_bad_label_names_file_and_line(tmp_path):
    path = tmp_path / "t.tsv"
    # line 1 header, 2 ok, 3 blank, 4 bad
    path.write_text("sentence\tlabel\ngood\t1\n\nbad\t2\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_table(path)
    assert str(info.value).startswith(f"{path}:4 has label '2'; labels must be 0 or 1")


@pytest.mark.parametrize(("content", "message"), [
    ("sentence\tlabel\nno label here\n", "{path}:2 has 1 fields, expected 2"),
    ("sentence,label\nhello,1\n", "has columns"),  # a CSV saved as .tsv
    ("", "{path} is empty"),
    ("sentence\tlabel\n", "has a header but no rows"),
])
def test_malformed_table(tmp_path, content, message):
    path = tmp_path / "t.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(message.format(path=path))):
        read_table(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes("sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not UTF-8"):
        read_table(path)


# --- load_splits --------------------------------------------------------------------------------------------

def test_load_splits_shipped_cola():
    splits = load_splits(str(cola_dir()))
    assert len(splits.train) == 8551
    assert len(splits.validation) == 1043  # in_domain_dev + out_of_domain_dev
    assert sum(splits.train.labels) == 6023  # as the data README counts
    assert splits.source == str(cola_dir().resolve())
    # in-domain rows come first, then out-of-domain
    assert splits.validation.texts[0] == "the sailors rode the breeze clear of the rocks"


def test_load_splits_need_train_false(tmp_path):
    write_tsv(tmp_path / "validation.tsv", ROWS)
    splits = load_splits(str(tmp_path), need_train=False)
    assert splits.train is None and splits.validation.texts == [t for t, _ in ROWS]


def test_load_splits_csv_validation(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,0\nb,1\nc,1\n", encoding="utf-8")
    (tmp_path / "validation.csv").write_text("text,label\nd,1\n", encoding="utf-8")
    splits = load_splits(str(tmp_path))
    assert splits.train.texts == ["a", "b", "c"] and splits.validation.texts == ["d"]


def test_load_splits_dev_tsv(tmp_path):
    write_tsv(tmp_path / "train.tsv", ROWS)
    write_tsv(tmp_path / "dev.tsv", ROWS[:1])
    assert len(load_splits(str(tmp_path)).validation) == 1


def test_load_splits_missing_dir(tmp_path):
    with pytest.raises(DataError, match=rf"data path {tmp_path / 'nope'} is not a directory"):
        load_splits(str(tmp_path / "nope"))


def test_load_splits_no_validation(tmp_path):
    write_tsv(tmp_path / "train.tsv", ROWS)
    with pytest.raises(DataError, match="has no validation file"):
        load_splits(str(tmp_path))


def test_load_splits_no_train(tmp_path):
    write_tsv(tmp_path / "validation.tsv", ROWS)
    with pytest.raises(DataError, match=r"has no train\.tsv or train\.csv"):
        load_splits(str(tmp_path))


# --- resolve_data -------------------------------------------------------------------------------------------

def test_resolve_data_given_is_returned():
    assert resolve_data("some/where") == "some/where"


def test_resolve_data_env(monkeypatch, tmp_path):
    write_tsv(tmp_path / "train.tsv", ROWS)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert default_data_dirs()[0] == tmp_path
    assert resolve_data(None) == str(tmp_path)


def test_resolve_data_cwd(monkeypatch, tmp_path):
    data = tmp_path / "data" / "cola"
    data.mkdir(parents=True)
    (data / "validation.csv").write_text("text,label\nx,1\n", encoding="utf-8")
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_data(None) == str(data)
    assert load_splits(None, need_train=False).validation.texts == ["x"]


def test_resolve_data_nothing_found_lists_where_it_looked(monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv(DATA_ENV, str(empty))
    monkeypatch.chdir(work)
    # Pretend the package lives outside any checkout, so the source-relative default holds nothing either.
    monkeypatch.setattr(onnxpack.data, "__file__", str(tmp_path / "site" / "onnxpack" / "x" / "data.py"))
    looked = default_data_dirs()
    assert looked[0] == empty and work / "data" / "cola" in looked
    with pytest.raises(DataError) as info:
        resolve_data(None)
    message = str(info.value)
    assert f"no data given and none found (looked in ${DATA_ENV}, then " in message
    for d in looked:
        assert str(d) in message
    assert "--data" in message and DATA_ENV in message


def test_default_dirs_include_the_source_checkout(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    # this checkout: <project>/src/onnxpack/data.py -> <project>/../shared/data/cola
    assert Path(onnxpack.data.__file__).resolve().parents[3] / "shared" / "data" / "cola" in default_data_dirs()
