"""Batch inference over files of any size: TSV, CSV, JSON Lines or Parquet in (one file, a folder
or a glob), Parquet or JSON Lines out, one output row per input row, in input order.

The `local` engine streams the input in chunks through one Predictor, so memory follows the chunk
size, not the file. Every output row carries the input's id (or its row number), what `predict`
gives (label, score, scores; labels for multi-label) and an `error` column: a row that cannot be
classified (an empty text) is reported there, and the run goes on. The output appears atomically.
No torch here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from onnxpack.core.atomic import AtomicDir, AtomicFile
from onnxpack.core.config import BatchConfig
from onnxpack.core.data import TEXT_COLUMNS, find_text_columns
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.tables import FORMATS, TableFile, table_format
from onnxpack.runtime.feed import Text
from onnxpack.runtime.predictor import Predictor

OUTPUT_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
ID = "id"
FOLDER_MARKER = "_onnxpack_batch.json"  # in a folder output: rows, parts and labels of a finished run


@dataclasses.dataclass
class BatchSummary:
    rows: int
    errors: int
    seconds: float
    rows_per_s: float
    peak_rss_mb: float
    output: str


def input_files(spec: str) -> tuple[list[Path], str]:
    """The files a --input names (a file, a folder, or a glob) and their one format."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
    if not files:
        raise OnnxpackError(f"--input {spec} names no file", hint="pass a file, a folder of files, or a glob")
    formats = {table_format(f) for f in files}
    if None in formats:
        bad = next(f for f in files if table_format(f) is None)
        raise OnnxpackError(f"{bad} is not a supported input ({bad.suffix or 'no suffix'})",
                            hint=f"use {', '.join(sorted(FORMATS))} files (TSV, CSV and JSON Lines may be gzipped)")
    if len(formats) > 1:
        raise OnnxpackError(f"--input {spec} mixes formats ({', '.join(sorted(formats))})",
                            hint="give files of one format")
    return files, formats.pop()


def text_columns(names: list[str], config: BatchConfig, pairs: bool) -> list[str]:
    """The text column(s) to read among the input's column `names`: named, or detected as `train` does."""
    named = list(config.pair_columns) if config.pair_columns else [config.text_column] if config.text_column else None
    if named:
        missing = [c for c in named if c not in names]
        if missing:
            raise OnnxpackError(f"the input has no column {missing[0]!r}; it has {', '.join(names)}",
                                hint="pass --text-column (or --pair-columns A,B) naming its text")
    else:
        named = find_text_columns(names, pairs)
    if not named:
        want = "two text columns (--pair-columns A,B)" if pairs else f"a text column ({'/'.join(TEXT_COLUMNS)})"
        raise OnnxpackError(f"the input has columns {', '.join(names)}; expected {want}",
                            hint="name it with --text-column" if not pairs else "name them with --pair-columns")
    if len(named) == 2 and not pairs:
        raise OnnxpackError("--pair-columns given, but this model takes single texts", hint="use --text-column")
    if len(named) == 1 and pairs:
        raise OnnxpackError("this model reads sentence pairs", hint="name both columns with --pair-columns A,B")
    if config.id_column and config.id_column not in names:
        raise OnnxpackError(f"the input has no column {config.id_column!r} for --id-column; it has {', '.join(names)}")
    return named


def _row_error(value: Any, pairs: bool) -> str | None:
    parts = value if pairs else (value,)
    if any(not isinstance(p, str) for p in parts):
        return "no text" if any(p is None for p in parts) else "the text is not a string"
    if any(not p.strip() for p in parts):
        return "empty text"
    return None


def classify(predictor: Predictor, ids: list[Any], texts: list[Any], config: BatchConfig) -> list[dict[str, Any]]:
    """One output row per input row, in order: the valid rows classified in one length-sorted pass
    (under --long-text chunk, each with its window count)."""
    errors = [_row_error(t, predictor.pairs) for t in texts]
    valid = [i for i, e in enumerate(errors) if e is None]
    results = predictor.predict([texts[i] for i in valid], config.batch_size, long_text=config.long_text,
                                stride=config.stride, aggregate=config.aggregate) if valid else []
    by_row = dict(zip(valid, results))
    chunked = config.long_text == "chunk"
    rows = []
    for i, (row_id, error) in enumerate(zip(ids, errors)):
        r = by_row.get(i)
        rows.append({ID: row_id, "label": r and r["label"], "score": r and r["score"],
                     "scores": r and r["scores"], **({"labels": r and r["labels"]} if predictor.multi_label else {}),
                     **({"windows": r and r["windows"]} if chunked else {}), "error": error})
    return rows


def input_columns(files: list[Path], fmt: str, config: BatchConfig, pairs: bool) -> tuple[list[str], list[str]]:
    """The text column(s), and every column to read, by the first file's header (both engines)."""
    texts_in = text_columns(TableFile(files[0], fmt).names, config, pairs)
    return texts_in, list(dict.fromkeys(texts_in + ([config.id_column] if config.id_column else [])))


def read_chunks(input_spec: str, config: BatchConfig, pairs: bool) -> Iterator[tuple[list[Any], list[Text | None]]]:
    """(ids, texts) per chunk of at most `chunk_rows` rows, streamed from the files in order."""
    files, fmt = input_files(input_spec)
    texts_in, columns = input_columns(files, fmt, config, pairs)
    number = 0
    for path in files:
        for chunk in TableFile(path, fmt).chunks(columns, config.chunk_rows):
            n = len(chunk)
            texts = list(zip(*(chunk.column(c) for c in texts_in))) if pairs else chunk.column(texts_in[0])
            ids = chunk.column(config.id_column) if config.id_column else list(range(number, number + n))
            number += n
            yield ids, texts


class OutputWriter:
    """Rows to a Parquet or JSON Lines file, built as an AtomicFile: in place, whole, on close()."""

    def __init__(self, path: Path, labels: list[str], multi_label: bool, windows: bool = False) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in OUTPUT_FORMATS:
            raise OnnxpackError(f"--output {path} is not a supported format",
                                hint="name a .parquet or .jsonl file, or a folder (ending in /) for part files")
        _check_parent(self.path)
        self.format = OUTPUT_FORMATS[suffix]
        self.file = AtomicFile(self.path)
        self.schema = pa.schema([(ID, pa.string()), ("label", pa.string()), ("score", pa.float64()),
                                 ("scores", pa.map_(pa.string(), pa.float64()))]
                                + ([("labels", pa.list_(pa.string()))] if multi_label else [])
                                + ([("windows", pa.int64())] if windows else [])
                                + [("error", pa.string())])
        self._parquet = pq.ParquetWriter(str(self.file.path), self.schema) if self.format == "parquet" else None
        self._jsonl = open(self.file.path, "w", encoding="utf-8") if self.format == "jsonl" else None

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self._parquet is not None:
            columns = {name: [r.get(name) for r in rows] for name in self.schema.names}
            columns[ID] = [None if v is None else str(v) for v in columns[ID]]
            columns["scores"] = [None if s is None else list(s.items()) for s in columns["scores"]]
            self._parquet.write_table(pa.table(columns, schema=self.schema))
        else:
            self._jsonl.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))

    def close(self) -> None:
        """Finish the file and put it under its final name."""
        (self._parquet or self._jsonl).close()
        self.file.commit()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            (self._parquet or self._jsonl).close()
        self.file.discard()


class FolderWriter:
    """Rows to a folder of part files (`part-00000.parquet`, one per chunk), as Spark and Ray Data
    write them, with FOLDER_MARKER summing up the run. The folder is built as an AtomicDir, in place
    whole on close(); it replaces only an empty folder or an earlier batch output."""

    def __init__(self, path: Path, labels: list[str], multi_label: bool, windows: bool = False) -> None:
        self.path = Path(path)
        _check_parent(self.path)
        if self.path.is_file():
            raise OnnxpackError(f"--output {path} is a file", hint="name a folder, or a .parquet/.jsonl file")
        if self.path.is_dir() and any(self.path.iterdir()) and not (self.path / FOLDER_MARKER).is_file():
            raise OnnxpackError(f"--output {path} is a folder that holds other files",
                                hint="name a new or empty folder; batch replaces only its own earlier output")
        self.suffix = ".jsonl" if self.path.suffix.lower() in (".jsonl", ".json") else ".parquet"
        self.labels, self.multi_label, self.windows = labels, multi_label, windows
        self.folder = AtomicDir(self.path, force=True)
        self.parts: list[str] = []
        self.rows = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        part_path = self.folder.path / f"part-{len(self.parts):05d}{self.suffix}"
        part = OutputWriter(part_path, self.labels, self.multi_label, self.windows)
        part.write(rows)
        part.close()
        self.parts.append(part.path.name)
        self.rows += len(rows)

    def close(self) -> None:
        marker = {"rows": self.rows, "parts": self.parts, "labels": self.labels, "format": self.suffix[1:]}
        # A plain write: the folder's commit syncs every file in it before the rename.
        (self.folder.path / FOLDER_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        self.folder.commit()

    def abort(self) -> None:
        self.folder.discard()


def open_output(output: Path | str, labels: list[str], multi_label: bool,
                windows: bool = False) -> OutputWriter | FolderWriter:
    """A folder of part files when `output` ends in `/` or is a folder; else one file. `windows`: a
    column of each row's window count (--long-text chunk)."""
    is_folder = str(output).endswith(("/", os.sep)) or Path(output).is_dir()
    return (FolderWriter if is_folder else OutputWriter)(Path(output), labels, multi_label, windows)


def _check_parent(path: Path) -> None:
    if not path.parent.is_dir():
        raise OnnxpackError(f"--output {path}: folder {path.parent} does not exist", hint="create it first, or write elsewhere")


def run_local(package: str | Path, input_spec: str, output: str | Path, config: BatchConfig | None = None,
              progress: Callable[[int], None] | None = None) -> BatchSummary:
    """Classify every row of `input_spec` into `output`, a chunk at a time."""
    config = config or BatchConfig()
    config.validate()
    started = time.perf_counter()
    with Predictor(package, provider=config.provider, threads=config.threads, variant=config.variant) as predictor:
        chunks = read_chunks(input_spec, config, predictor.pairs)
        first = next(chunks, None)  # checks the input and its columns before anything is written
        rows = (classify(predictor, ids, texts, config) for ids, texts in _chain(first, chunks))
        return write_rows(output, predictor.labels, predictor.multi_label, rows, started, progress,
                          windows=config.long_text == "chunk")


def write_rows(output: str | Path, labels: list[str], multi_label: bool, chunks: Iterator[list[dict[str, Any]]],
               started: float, progress: Callable[[int], None] | None, windows: bool = False) -> BatchSummary:
    """Stream the engines' output rows into one file or folder (atomically) and sum up the run."""
    writer = open_output(output, labels, multi_label, windows)
    rows = errors = 0
    try:
        for out in chunks:
            writer.write(out)
            rows += len(out)
            errors += sum(r["error"] is not None for r in out)
            if progress:
                progress(len(out))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - started
    return BatchSummary(rows=rows, errors=errors, seconds=round(seconds, 2),
                        rows_per_s=round(rows / seconds, 1) if seconds else 0.0, peak_rss_mb=peak_rss_mb(),
                        output=str(output))


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    if first is not None:
        yield first
        yield from rest


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
