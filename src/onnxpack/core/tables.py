"""The one reader of tabular data: TSV, CSV and JSON Lines (each may be gzipped, `.gz`) and Parquet,
read with pyarrow a chunk of rows at a time.

Training data (core.data), both batch engines and `predict --file` read through here, so a file
means the same thing everywhere:
- a TSV or CSV cell is a string, as written: an id "007" stays "007", a label "1" stays "1";
- a TSV has no quoting: CoLA's sentences hold '"' as text;
- a blank line is not a row;
- a line with the wrong number of fields is an error naming the file and the line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.dataset
import pyarrow.json

from .errors import DataError

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
GZIP = ".gz"  # TSV, CSV and JSON Lines may be gzipped; pyarrow decompresses them by the name
DELIMITERS = {"tsv": "\t", "csv": ","}
FORMAT_NAMES = {"tsv": "TSV", "csv": "CSV", "json": "JSON Lines", "parquet": "Parquet"}
CHUNK_ROWS = 65_536  # rows per chunk unless the caller asks otherwise
_HEADER_READ_BYTES = 1 << 16


def table_format(path: Path) -> str | None:
    """A file's format by its name (`train.tsv.gz` is "tsv"); None when it names none of FORMATS."""
    name = path.name.lower()
    gzipped = name.endswith(GZIP)
    fmt = FORMATS.get(Path(name.removesuffix(GZIP)).suffix)
    return None if gzipped and fmt == "parquet" else fmt


@dataclasses.dataclass
class Chunk:
    """Consecutive rows of a table."""

    batch: pa.RecordBatch
    lines: list[int] | None  # TSV/CSV: the line each row is on (the header is line 1), for messages

    def __len__(self) -> int:
        return self.batch.num_rows

    def column(self, key: str | int) -> list[Any]:
        """A column's values as Python objects, by name or by position (a header may repeat a name)."""
        return self.batch.column(key).to_pylist()


class TableFile:
    """One table file, or the bytes of one (stdin), read in chunks of rows.

    `fmt` defaults to what the file's name says; `name` (for messages) to its path. `column_names`
    names the columns of a TSV or CSV that has no header row.
    """

    def __init__(self, source: Path | bytes, fmt: str | None = None, name: str | None = None,
                 column_names: Sequence[str] | None = None) -> None:
        self.source = source
        self.name = name or str(source)
        fmt = fmt or (table_format(source) if isinstance(source, Path) else None)
        if fmt is None:
            raise DataError(f"{self.name} is not a table file",
                            hint=f"use {', '.join(sorted(FORMATS))} files (TSV, CSV and JSON Lines may be gzipped)")
        if isinstance(source, bytes) and fmt == "parquet":
            raise ValueError("Parquet is read from a file, not from bytes")
        self.format = fmt
        self.header = column_names is None  # a TSV/CSV's first line names its columns
        self._column_names = list(column_names or ())

    @functools.cached_property
    def names(self) -> list[str]:
        """The column names, as the file spells them."""
        if not self.header and self.format in DELIMITERS:
            return self._column_names
        with self._reading():
            return self._header() if self.format in DELIMITERS else self._dataset.schema.names

    def chunks(self, columns: Sequence[str] | None = None, rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
        """The rows in order, `rows` to a chunk (the last may have fewer), with `columns` (default: all)."""
        missing = [c for c in columns or () if c not in self.names]
        if missing:
            raise DataError(f"{self.name} has no column {missing[0]!r}; it has {', '.join(self.names)}")
        with self._reading():
            if self.format in DELIMITERS:
                # Every column is read, so that a row is blank only when all of its cells are.
                pieces = ((batch.select(list(columns)) if columns else batch, lines)
                          for batch, lines in self._text_batches())
            else:
                pieces = ((batch, None) for batch in self._dataset.to_batches(columns=columns, batch_size=rows))
            yield from _rechunk(pieces, rows, numbered=self.format in DELIMITERS)

    # --- TSV and CSV -------------------------------------------------------------------------------------

    def _stream(self) -> pa.NativeFile:
        if isinstance(self.source, bytes):
            return pa.input_stream(pa.py_buffer(self.source))
        return pa.input_stream(str(self.source), compression="detect")

    def _parse_options(self, invalid_row_handler: Callable[[Any], str] | None = None) -> pyarrow.csv.ParseOptions:
        tsv = self.format == "tsv"
        return pyarrow.csv.ParseOptions(
            delimiter=DELIMITERS[self.format], quote_char=False if tsv else '"',
            # A quoted CSV cell may span lines; past one, rows are numbered by rows, not by lines.
            newlines_in_values=not tsv,
            ignore_empty_lines=False,  # an empty line stays a row (later dropped as blank): rows keep their lines
            invalid_row_handler=invalid_row_handler)

    def _header(self) -> list[str]:
        """The first line's names, parsed as the rows are, before reading on: every column is then read
        as a string, where pyarrow would guess numbers."""
        with self._stream() as stream:
            head = b""
            while b"\n" not in head and (block := stream.read(_HEADER_READ_BYTES)):
                head += block
        if not head:
            raise DataError(f"{self.name} is empty", hint="give a file with a header row and rows under it")
        line = head.split(b"\n", 1)[0] + b"\n"
        line.decode("utf-8")  # pyarrow would take a name that is not UTF-8; _failure reports the error
        return pyarrow.csv.read_csv(pa.BufferReader(line), parse_options=self._parse_options()).column_names

    def _text_batches(self) -> Iterator[tuple[pa.RecordBatch, list[int]]]:
        """Record batches of string columns, without blank rows, and each row's line."""
        skipped: list[int] = []  # lines of whitespace only: too few fields, but blank, not malformed
        malformed: list[Any] = []

        def invalid(row: Any) -> str:
            if not row.text.strip():
                skipped.append(row.number)
                return "skip"
            malformed.append(row)  # raised from here, pyarrow would print the error and go on
            return "error"

        try:
            with self._stream() as stream:
                reader = pyarrow.csv.open_csv(  # this parses the first block already
                    stream,
                    # One thread: pyarrow numbers the lines it hands to `invalid` only when it parses in order.
                    read_options=pyarrow.csv.ReadOptions(use_threads=False,
                                                         column_names=None if self.header else self.names),
                    parse_options=self._parse_options(invalid),
                    convert_options=pyarrow.csv.ConvertOptions(column_types={n: pa.string() for n in self.names},
                                                               strings_can_be_null=False))
                yield from self._numbered(reader, skipped)
        except pa.ArrowInvalid as e:
            if malformed:
                row = malformed[0]
                layout = DELIMITERS[self.format].replace("\t", "<TAB>").join(self.names)
                raise DataError(f"{self.name}:{row.number} has {row.actual_columns} fields, expected "
                                f"{row.expected_columns}",
                                hint="check the delimiter (tab for .tsv, comma for .csv)" if self.header
                                else f"write each row as {layout}") from None
            if "Empty CSV file" in str(e):  # a header and no line after it; or, without a header, nothing
                return
            raise

    def _numbered(self, reader: pyarrow.csv.CSVStreamingReader,
                  skipped: list[int]) -> Iterator[tuple[pa.RecordBatch, list[int]]]:
        """Each batch with its rows' lines: the next line, past the header and the `skipped` ones."""
        line = 1 if self.header else 0  # the last line given to a row (or the header)
        passed = 0  # how many of `skipped` are behind `line`
        for batch in reader:
            lines = []
            for _ in range(batch.num_rows):
                line += 1
                while passed < len(skipped) and skipped[passed] == line:
                    line, passed = line + 1, passed + 1
                lines.append(line)
            yield _drop_blank(batch, lines)

    # --- JSON Lines and Parquet ---------------------------------------------------------------------------

    @functools.cached_property
    def _dataset(self) -> pyarrow.dataset.Dataset:
        if isinstance(self.source, bytes):  # stdin: in memory already
            return pyarrow.dataset.dataset(pyarrow.json.read_json(pa.BufferReader(self.source)))
        return pyarrow.dataset.dataset(str(self.source), format=self.format)

    def _bad_json_line(self) -> DataError | None:
        """The first line that is not a JSON object, named by its number: pyarrow numbers rows within
        a block and past blank lines, which names no line a user can find."""
        with self._stream() as stream, contextlib.suppress(OSError):
            for number, line in enumerate(io.TextIOWrapper(stream, encoding="utf-8", errors="replace"), start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    return DataError(f"{self.name}:{number} is not JSON ({e.msg})",
                                     hint="write one JSON object per line")
                if not isinstance(value, dict):
                    return DataError(f"{self.name}:{number} is not a JSON object",
                                     hint='write one object per line, e.g. {"text": "..."}')
        return None

    # --- failures -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """pyarrow's and the system's failures as one-line DataErrors naming the file."""
        try:
            yield
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
            raise self._failure(e) from None

    def _failure(self, error: Exception) -> DataError:
        message = "no such file" if isinstance(error, FileNotFoundError) else \
            (str(error).strip().splitlines() or [type(error).__name__])[0]
        if isinstance(error, UnicodeDecodeError) or "invalid UTF8" in message:
            return DataError(f"{self.name} is not UTF-8 text", hint="save it as UTF-8")
        if self.format == "json" and isinstance(error, pa.ArrowInvalid) and (found := self._bad_json_line()):
            return found
        gzipped = " (gzipped when named .gz)" if self.format != "parquet" else ""
        return DataError(f"cannot read {self.name}: {message}",
                         hint=f"give a readable {'UTF-8 ' if gzipped else ''}{FORMAT_NAMES[self.format]} file{gzipped}")


def _drop_blank(batch: pa.RecordBatch, lines: list[int]) -> tuple[pa.RecordBatch, list[int]]:
    """Without the rows whose every cell is empty or whitespace."""
    blank = None
    for column in batch.columns:
        empty = pc.equal(pc.utf8_trim_whitespace(column), "")
        blank = empty if blank is None else pc.and_(blank, empty)
    if blank is None or not pc.any(blank).as_py():
        return batch, lines
    keep = pc.invert(blank)
    return batch.filter(keep), [line for line, kept in zip(lines, keep.to_pylist()) if kept]


def _rechunk(pieces: Iterator[tuple[pa.RecordBatch, list[int] | None]], rows: int, numbered: bool) -> Iterator[Chunk]:
    """Exactly `rows` rows to a chunk (the last may have fewer), whatever sizes pyarrow's blocks have."""
    batches: list[pa.RecordBatch] = []
    lines: list[int] = []
    count = 0
    for batch, batch_lines in pieces:
        start = 0
        while start < batch.num_rows:
            take = min(rows - count, batch.num_rows - start)
            batches.append(batch.slice(start, take))
            lines += batch_lines[start:start + take] if batch_lines is not None else []
            start, count = start + take, count + take
            if count == rows:
                yield _chunk(batches, lines if numbered else None)
                batches, lines, count = [], [], 0
    if count:
        yield _chunk(batches, lines if numbered else None)


def _chunk(batches: list[pa.RecordBatch], lines: list[int] | None) -> Chunk:
    if len(batches) == 1:
        return Chunk(batches[0], lines)
    return Chunk(pa.Table.from_batches(batches).combine_chunks().to_batches()[0], lines)
