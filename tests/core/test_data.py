"""data.py: reading TSV/CSV, finding the data, CoLA's splits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import write_tsv

from onnxpack.core.data import (
    BUNDLED_COLA,
    DATA_ENV,
    load_splits,
    read_table,
    resolve_data,
)
from onnxpack.core.errors import DataError

ROWS = [("the cat sat on the mat", 1), ("mat the on sat cat", 0), ("who did you see", 1)]


# --- read_table ---------------------------------------------------------------------------------------------

def test_read_tsv(tmp_path):
    table = read_table(write_tsv(tmp_path / "t.tsv", ROWS))
    assert table.texts == [t for t, _ in ROWS]
    assert table.raw_labels == [[str(y)] for _, y in ROWS]


def test_read_tsv_keeps_quotes_verbatim(tmp_path):
    # CoLA's TSV is unquoted: a '"' is part of the sentence, not CSV quoting.
    rows = [('he said " go " and left', 1), ("it 's \"fine", 0)]
    assert read_table(write_tsv(tmp_path / "q.tsv", rows)).texts == [t for t, _ in rows]


def test_read_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('id,Text,Label\n7,"a, quoted, sentence",1\n8,plain,0\n', encoding="utf-8")
    table = read_table(path)
    assert table.texts == ["a, quoted, sentence", "plain"]
    assert table.raw_labels == [["1"], ["0"]]


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
    assert "sentence/text" in message and "sentence1/sentence2" in message and "--text-columns" in message


def test_wrong_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("sentence,score\nhello,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"has columns \['sentence', 'score'\]; expected a label column"):
        read_table(path)


def test_missing_label_names_file_and_line(tmp_path):
    path = tmp_path / "t.tsv"
    # line 1 header, 2 ok, 3 blank, 4 no label
    path.write_text("sentence\tlabel\ngood\t1\n\nbad\t \n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_table(path)
    assert str(info.value).startswith(f"{path}:4 has no label")


# --- labels, pairs, multi-label -----------------------------------------------------------------------------

def _folder(tmp_path, train: str, validation: str, name: str = "d"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "train.tsv").write_text(train, encoding="utf-8")
    (folder / "validation.tsv").write_text(validation, encoding="utf-8")
    return folder


def test_string_labels_are_named_in_sorted_order(tmp_path):
    folder = _folder(tmp_path, "text\tlabel\na\tpositive\nb\tnegative\nc\tneutral\n",
                     "text\tlabel\nd\tneutral\n")
    splits = load_splits(str(folder))
    assert splits.labels == ["negative", "neutral", "positive"]
    assert splits.train.labels == [2, 0, 1] and splits.validation.labels == [1]


def test_int_labels_beyond_two_classes(tmp_path):
    folder = _folder(tmp_path, "text\tlabel\na\t0\nb\t2\nc\t1\n", "text\tlabel\nd\t2\n")
    splits = load_splits(str(folder))
    assert splits.labels == ["0", "1", "2"] and splits.train.labels == [0, 2, 1]


def test_given_labels_name_int_ids_or_match_names(tmp_path):
    ints = _folder(tmp_path, "text\tlabel\na\t0\nb\t1\n", "text\tlabel\nd\t1\n", "ints")
    assert load_splits(str(ints), labels=["no", "yes"]).train.labels == [0, 1]
    names = _folder(tmp_path, "text\tlabel\na\tyes\nb\tno\n", "text\tlabel\nd\tyes\n", "names")
    splits = load_splits(str(names), labels=["yes", "no"])  # the order given is the id order
    assert splits.labels == ["yes", "no"] and splits.train.labels == [0, 1]


def test_labels_file_names_the_ids(tmp_path):
    folder = _folder(tmp_path, "text\tlabel\na\t0\nb\t1\n", "text\tlabel\nd\t1\n")
    (folder / "labels.txt").write_text("bad\ngood\n", encoding="utf-8")
    assert load_splits(str(folder)).labels == ["bad", "good"]


def test_cola_layout_names_its_labels(small_cola):
    assert load_splits(str(small_cola)).labels == ["unacceptable", "acceptable"]


@pytest.mark.parametrize(("train", "validation", "given", "message"), [
    ("text\tlabel\na\tx\nb\tx\n", "text\tlabel\nc\tx\n", None,
     "the data names only 1 label(s) ['x']; a classifier needs at least two"),
    ("text\tlabel\na\tx\nb\tx\n", "text\tlabel\nc\ty\n", ["x", "y"],
     "the training data has one class only ('x')"),
    ("text\tlabel\na\tx\nb\ty\n", "text\tlabel\nc\tz\n", None,
     "has label 'z', which is not one of the labels ['x', 'y']"),
    ("text\tlabel\na\tx\nb\ty\nc\tz\n", "text\tlabel\nc\tz\n", ["x", "y"],
     "has label 'z', which is not one of the labels given ['x', 'y']"),
    ("text\tlabel\na\tx\nb\ty\nc\tx\n", "text\tlabel\nc\tz\nd\tx\n", ["x", "y", "z"],
     "the validation data has labels the training data lacks: ['z']"),
    ("text\tlabel\na\tx\nb\ty\n", "text\tlabel\nc\tx\n", ["x", "x"], "name a label twice"),
])
def test_label_mistakes_are_one_line_errors(tmp_path, train, validation, given, message):
    with pytest.raises(DataError) as info:
        load_splits(str(_folder(tmp_path, train, validation)), labels=given)
    assert message in str(info.value) and "\n" not in str(info.value) and "(hint: " in str(info.value)


@pytest.mark.parametrize(("first", "second"), [("sentence1", "sentence2"), ("question", "sentence"),
                                               ("premise", "hypothesis")])
def test_pair_columns_are_detected(tmp_path, first, second):
    header = f"{first}\t{second}\tlabel\n"
    folder = _folder(tmp_path, header + "a b\tc d\t0\ne\tf\t1\n", header + "g\th\t1\n")
    splits = load_splits(str(folder))
    assert splits.pairs and splits.train.texts == [("a b", "c d"), ("e", "f")]


def test_text_columns_named(tmp_path):
    header = "id\tleft\tright\tlabel\n"
    folder = _folder(tmp_path, header + "1\ta\tb\t0\n2\tc\td\t1\n", header + "3\te\tf\t1\n")
    assert load_splits(str(folder), text_columns=["left", "right"]).validation.texts == [("e", "f")]
    assert load_splits(str(folder), text_columns=["right"]).validation.texts == ["f"]
    with pytest.raises(DataError, match="--text-columns names \\['nope'\\]"):
        load_splits(str(folder), text_columns=["nope"])


def test_pair_column_missing_on_a_row(tmp_path):
    header = "sentence1\tsentence2\tlabel\n"
    folder = _folder(tmp_path, header + "a\tb\t0\nc\t \t1\n", header + "g\th\t1\n")
    with pytest.raises(DataError) as info:
        load_splits(str(folder))
    assert "train.tsv:3 has no 'sentence2' text: every row of a pair data set needs both" in str(info.value)


def test_multi_label_rows(tmp_path):
    folder = _folder(tmp_path, "text\tlabels\na\tsports,politics\nb\t\nc\tscience\n",
                     "text\tlabels\nd\tpolitics, science\n")
    splits = load_splits(str(folder), multi_label=True)
    assert splits.labels == ["politics", "science", "sports"] and splits.multi_label
    assert splits.train.labels == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert splits.validation.labels == [[1, 1, 0]]


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

def test_load_splits_bundled_cola():
    splits = load_splits(str(BUNDLED_COLA))
    assert len(splits.train) == 8551
    assert len(splits.validation) == 1043  # in_domain_dev + out_of_domain_dev
    assert sum(splits.train.labels) == 6023  # as the data README counts
    assert sum(splits.validation.labels) == 365 + 354
    assert splits.source == str(BUNDLED_COLA)
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

@pytest.fixture()
def elsewhere(monkeypatch, tmp_path) -> Path:
    """An empty working directory and no $ONNXPACK_DATA: nothing but the bundled copy to find."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.chdir(work)
    return work


def test_resolve_data_given_wins_over_everything(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with caplog.at_level("INFO", logger="onnxpack.core.data"):
        assert resolve_data("some/where") == "some/where"
    assert "data: some/where (--data)" in caplog.text


def test_resolve_data_env_before_cwd(monkeypatch, tmp_path, caplog):
    write_tsv(tmp_path / "train.tsv", ROWS)
    (tmp_path / "data" / "cola").mkdir(parents=True)
    write_tsv(tmp_path / "data" / "cola" / "dev.tsv", ROWS)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO", logger="onnxpack.core.data"):
        assert resolve_data(None) == str(tmp_path)
    assert f"({'$' + DATA_ENV})" in caplog.text


def test_resolve_data_env_missing_folder_is_an_error_not_a_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "gone"))
    with pytest.raises(DataError) as info:
        load_splits(None)
    message = str(info.value)
    assert f"${DATA_ENV} is set to {tmp_path / 'gone'}, which is not a folder" in message
    assert "unset it to use the bundled CoLA" in message and "\n" not in message


def test_resolve_data_env_folder_without_files_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path))} has no validation file"):
        load_splits(None)


def test_resolve_data_cwd(elsewhere, caplog):
    data = elsewhere / "data" / "cola"
    data.mkdir(parents=True)
    (data / "validation.csv").write_text("text,label\nx,1\n", encoding="utf-8")
    with caplog.at_level("INFO", logger="onnxpack.core.data"):
        assert resolve_data(None) == str(data)
    assert "(./data/cola)" in caplog.text
    assert load_splits(None, need_train=False).validation.texts == ["x"]


def test_resolve_data_empty_cwd_folder_falls_through_to_bundled(elsewhere):
    (elsewhere / "data" / "cola").mkdir(parents=True)  # implicit and empty: not a choice the user made
    assert resolve_data(None) == str(BUNDLED_COLA)


def test_resolve_data_bundled_by_default(elsewhere, caplog):
    with caplog.at_level("INFO", logger="onnxpack.core.data"):
        splits = load_splits(None)
    assert "the CoLA copy bundled with onnxpack" in caplog.text
    assert (len(splits.train), len(splits.validation)) == (8551, 1043)


def test_explicit_data_without_files_never_falls_back(elsewhere):
    with pytest.raises(DataError, match=rf"{re.escape(str(elsewhere))} has no validation file"):
        load_splits(str(elsewhere))
    with pytest.raises(DataError, match="is not a directory"):
        load_splits(str(elsewhere / "missing"))


def test_read_gzipped_tables(tmp_path):
    import gzip

    (tmp_path / "train.tsv.gz").write_bytes(gzip.compress(b"sentence\tlabel\na b\t1\nc d\t0\n"))
    (tmp_path / "dev.csv.gz").write_bytes(gzip.compress(b"text,label\n\"e, f\",1\n"))
    splits = load_splits(str(tmp_path))
    assert splits.train.texts == ["a b", "c d"] and splits.validation.texts == ["e, f"]


def test_read_a_broken_gzip_is_one_line(tmp_path):
    (tmp_path / "train.tsv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"cannot read .*train\.tsv\.gz.*\(hint: give a readable"):
        read_table(tmp_path / "train.tsv.gz")


def test_a_built_wheel_carries_the_bundled_cola(tmp_path):
    """A plain (non-editable) install gets the data: build the wheel from a copy of the source."""
    import shutil
    import subprocess
    import sys
    import zipfile

    project = Path(__file__).parents[2]
    source = tmp_path / "source"
    shutil.copytree(project / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(project / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("onnxpack-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("README.md", "train.tsv.gz", "in_domain_dev.tsv.gz", "out_of_domain_dev.tsv.gz"):
        assert f"onnxpack/core/bundled/cola/{name}" in names
    readme = (BUNDLED_COLA / "README.md").read_text(encoding="utf-8")
    assert "Warstadt" in readme and "Bowman" in readme and "Licence" in readme


def test_a_hub_dataset_offline_is_one_line_naming_the_bundled_copy(monkeypatch):
    """glue/cola comes from the Hugging Face Hub (huggingface_hub + pyarrow, so the runtime side reads it
    too); offline, with nothing cached, that is the user's environment: one line, not a traceback."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # conftest sets HF_HUB_OFFLINE=1 too
    with pytest.raises(DataError) as e:
        load_splits("glue/cola")
    assert str(e.value).startswith("could not fetch glue/cola from the Hugging Face Hub")
    assert "leave --data out to use the bundled CoLA copy" in str(e.value) and "\n" not in str(e.value)
