"""tables.py: one reader for TSV, CSV, JSON Lines and Parquet, the same rules for every format it reads."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onnxpack.core.errors import DataError
from onnxpack.core.tables import TableFile, table_format


def _rows(table: TableFile, columns: list[str] | None = None, rows: int = 1000) -> list[tuple]:
    names = columns or table.names
    return [row for chunk in table.chunks(columns, rows) for row in zip(*(chunk.column(c) for c in names))]


@pytest.mark.parametrize(("name", "fmt"), [("a.tsv", "tsv"), ("a.TSV.gz", "tsv"), ("a.csv.gz", "csv"),
                                           ("a.jsonl", "json"), ("a.json", "json"), ("a.parquet", "parquet"),
                                           ("a.parquet.gz", None), ("a.txt", None), ("tsv", None)])
def test_format_by_name(name, fmt):
    assert table_format(Path(name)) == fmt


def test_tsv_cells_are_strings_as_written(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('id\tsentence\tlabel\n007\the said " go "\t1\n8\tit \'s "fine\t0\n', encoding="utf-8")
    assert _rows(TableFile(path)) == [("007", 'he said " go "', "1"), ("8", "it 's \"fine", "0")]


def test_blank_lines_are_not_rows_and_rows_keep_their_line_numbers(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel\na\t1\n\n   \n\t\nb\t\nc\t0\n", encoding="utf-8")
    (chunk,) = TableFile(path).chunks()
    assert chunk.column("sentence") == ["a", "b", "c"] and chunk.column(1) == ["1", "", "0"]
    assert chunk.lines == [2, 6, 7]


def test_chunks_have_exactly_the_rows_asked_for(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text\n" + "".join(f"row {i}\n" for i in range(10)), encoding="utf-8")
    chunks = list(TableFile(path).chunks(rows=4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert [line for c in chunks for line in c.lines] == list(range(2, 12))


def test_csv_quoting_and_gzip(tmp_path):
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(b'text,label\n"a, quoted ""sentence""",1\nplain,0\n'))
    assert _rows(TableFile(path)) == [('a, quoted "sentence"', "1"), ("plain", "0")]


def test_a_line_with_the_wrong_number_of_fields_is_named(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel\ngood\t1\n\nno label here\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:4 has 1 fields, expected 2 \(hint: check the delimiter"):
        _rows(TableFile(path))


def test_headerless_text_from_bytes(tmp_path):
    table = TableFile(b"a b\tc d\n\ne\tf\n", "tsv", name="stdin", column_names=["first", "second"])
    assert table.names == ["first", "second"] and _rows(table) == [("a b", "c d"), ("e", "f")]
    bad = TableFile(b"a\tb\nc\n", "tsv", name="stdin", column_names=["first", "second"])
    with pytest.raises(DataError, match=r"^stdin:2 has 1 fields, expected 2 \(hint: write each row as first<TAB>second"):
        _rows(bad)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("t.tsv", b"", "{path} is empty"),
    ("t.tsv", "sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1"), "{path} is not UTF-8 text (hint: save it as UTF-8)"),
    ("t.tsv.gz", b"not gzip at all", "cannot read {path}: "),
])
def test_unreadable_text_is_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        _rows(TableFile(path))
    assert str(info.value).startswith(message.format(path=path)) and "\n" not in str(info.value)


def test_a_header_and_no_rows(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel", encoding="utf-8")
    assert TableFile(path).names == ["sentence", "label"] and list(TableFile(path).chunks()) == []


def test_json_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": "a", "id": 1}) + "\n\n" + json.dumps({"text": "b", "id": 2}) + "\n",
                    encoding="utf-8")
    table = TableFile(path)
    assert table.names == ["text", "id"] and _rows(table, ["text"]) == [("a",), ("b",)]
    (chunk,) = table.chunks()
    assert chunk.lines is None  # pyarrow does not say which line a JSON row was on


@pytest.mark.parametrize(("line", "message"), [
    ("{oops", "t.jsonl:3 is not JSON (Expecting property name enclosed in double quotes)"),
    ('["a", "b"]', "t.jsonl:3 is not a JSON object"),
])
def test_a_bad_json_line_is_named(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        _rows(TableFile(path))
    assert str(info.value).startswith(f"{tmp_path}/{message}")


def test_parquet_columns_and_a_missing_one(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"], "n": [1, 2, 3]}), path)
    assert _rows(TableFile(path), ["n"], rows=2) == [(1,), (2,), (3,)]
    with pytest.raises(DataError, match=r"t\.parquet has no column 'body'; it has text, n"):
        _rows(TableFile(path), ["body"])
