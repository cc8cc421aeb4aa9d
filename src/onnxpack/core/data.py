"""Labelled text data: the bundled CoLA, any TSV/CSV folder, or GLUE CoLA from the Hugging Face Hub.

`load_splits(source)` gives plain Python lists: texts (or text pairs) and label ids, with the
label names they index. Files are read by core.tables (pyarrow), with no model framework, so the
runtime side (verify, optimize, bench) reads labelled data without torch; `datamodule` turns the
lists into Lightning batches.

Labels may be ints or names in the data. Their names come from, in order: the caller (`--labels`,
or a package's labels), a `labels.txt` beside the data (one name per line, line i naming id i),
or the data itself (the ids as written, or the distinct names sorted).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

from .errors import DataError
from .tables import TableFile

log = logging.getLogger(__name__)

DATA_ENV = "ONNXPACK_DATA"
# name -> (Hub dataset repository, task folder in it)
HUB_DATASETS = {"glue/cola": ("nyu-mll/glue", "cola")}
TEXT_COLUMNS = ("sentence", "text")
# Two text columns of a sentence-pair data set, as the usual data sets name them.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"),
                ("question1", "question2"), ("text_a", "text_b"), ("text", "text_pair"), ("query", "passage"))
LABEL_COLUMNS = ("label", "labels")
LABELS_FILE = "labels.txt"
MULTI_LABEL_SEPARATOR = ","  # multi-label rows list their labels in one cell: "sports,politics"
# CoLA ships its GLUE validation split as two files; together they are the 1043 rows.
COLA_VALIDATION = ("in_domain_dev", "out_of_domain_dev")
COLA_LABELS = ("unacceptable", "acceptable")  # the names of CoLA's 0/1, for a folder in its layout
TRAIN_NAMES = ("train",)
VALIDATION_NAMES = ("validation", "dev", "val")
TABLE_SUFFIXES = (".tsv", ".csv", ".tsv.gz", ".csv.gz")
# CoLA v1.1, gzipped package data: the default when no data is given (see its README).
BUNDLED_COLA = Path(__file__).resolve().parent / "bundled" / "cola"

Text = Union[str, tuple[str, str]]


@dataclasses.dataclass
class Table:
    """A file as read: texts (or pairs) and each row's label cell(s), not yet ids."""

    texts: list[Text]
    raw_labels: list[list[str]]  # one entry per row: its labels (exactly one unless multi-label)
    path: str


@dataclasses.dataclass
class Split:
    texts: list[Text]
    # Label ids: one int per row, or for multi-label a 0/1 list per row over all the labels.
    labels: list[int] | list[list[int]]

    def __len__(self) -> int:
        return len(self.texts)


@dataclasses.dataclass
class Splits:
    train: Split | None
    validation: Split
    source: str
    labels: list[str] = dataclasses.field(default_factory=list)  # names; the index is the id
    pairs: bool = False
    multi_label: bool = False


def resolve_data(data: str | None) -> str:
    """The data to use, and a log line saying which: `--data`, then `$ONNXPACK_DATA`, then
    `./data/cola` when it holds data, then the CoLA copy bundled with onnxpack.

    An explicit choice (`--data`, the variable) is used or refused, never replaced by the bundled copy.
    """
    if data:
        log.info("data: %s (--data)", data)
        return data
    if env := os.environ.get(DATA_ENV):
        if not Path(env).is_dir():
            raise DataError(f"${DATA_ENV} is set to {env}, which is not a folder",
                            hint="point it at a folder with train and validation TSV/CSV files, "
                                 "or unset it to use the bundled CoLA")
        log.info("data: %s ($%s)", env, DATA_ENV)
        return env
    local = Path.cwd() / "data" / "cola"
    if local.is_dir() and any(_find(local, (stem,)) for stem in TRAIN_NAMES + VALIDATION_NAMES + COLA_VALIDATION):
        log.info("data: %s (./data/cola)", local)
        return str(local)
    log.info("data: the CoLA copy bundled with onnxpack (%s)", BUNDLED_COLA)
    return str(BUNDLED_COLA)


def read_table(path: Path, text_columns: Sequence[str] | None = None, multi_label: bool = False) -> Table:
    """Read a TSV/CSV (gzipped when named .gz) with a header row naming the text column (or two, for
    pairs) and a label column. `text_columns` names them; otherwise they are detected."""
    table = TableFile(path)
    header = table.names
    columns = [c.strip().lower() for c in header]
    text_cols = _text_columns(path, header, columns, text_columns)
    label_col = next((columns.index(c) for c in LABEL_COLUMNS if c in columns), None)
    if label_col is None:
        raise DataError(f"{path} has columns {header}; expected a label column ({'/'.join(LABEL_COLUMNS)})",
                        hint="rename the header row, e.g. 'sentence<TAB>label'")
    texts: list[Text] = []
    labels: list[list[str]] = []
    for chunk in table.chunks():
        cells = [chunk.column(c) for c in text_cols]
        for k, (line_no, cell) in enumerate(zip(chunk.lines, chunk.column(label_col))):
            parts = [column[k] for column in cells]
            if len(parts) == 2 and not all(part.strip() for part in parts):
                empty = header[text_cols[0] if not parts[0].strip() else text_cols[1]]
                raise DataError(f"{path}:{line_no} has no {empty.strip()!r} text: every row of a pair data set "
                                "needs both", hint="fill in or remove that row")
            cell = cell.strip()
            if multi_label:
                names = [name.strip() for name in cell.split(MULTI_LABEL_SEPARATOR) if name.strip()]
            elif not cell:
                raise DataError(f"{path}:{line_no} has no label", hint="give every row a label")
            else:
                names = [cell]
            texts.append(parts[0] if len(parts) == 1 else (parts[0], parts[1]))
            labels.append(names)
    if not texts:
        raise DataError(f"{path} has a header but no rows", hint="add labelled rows")
    return Table(texts, labels, str(path))


def find_text_columns(names: Sequence[str], pairs: bool | None = None) -> list[str] | None:
    """The text column(s) among `names` as the usual data sets name them: a pair's two (PAIR_COLUMNS)
    when `pairs` is True, one (TEXT_COLUMNS) when False, and when None a pair if there is one."""
    if pairs is not False:
        pair = next(([a, b] for a, b in PAIR_COLUMNS if a in names and b in names), None)
        if pair or pairs:
            return pair
    return next(([c] for c in TEXT_COLUMNS if c in names), None)


def _text_columns(path: Path, header: list[str], columns: list[str], named: Sequence[str] | None) -> list[int]:
    """Indices of the text column, or of the two columns of a pair."""
    if named:
        missing = [c for c in named if c.strip().lower() not in columns]
        if missing or len(named) not in (1, 2):
            raise DataError(f"{path} has columns {header}; --text-columns names {list(named)}",
                            hint="name one text column, or two for sentence pairs, as the header spells them")
        return [columns.index(c.strip().lower()) for c in named]
    found = find_text_columns(columns)
    if found is None:
        pairs = ", ".join(f"{a}/{b}" for a, b in PAIR_COLUMNS)
        raise DataError(f"{path} has columns {header}; expected a text column ({'/'.join(TEXT_COLUMNS)}) "
                        f"or two for pairs ({pairs})",
                        hint="rename the header row, or pass --text-columns A or A,B")
    return [columns.index(c) for c in found]


def _find(directory: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in TABLE_SUFFIXES:
            if (directory / f"{stem}{suffix}").is_file():
                return directory / f"{stem}{suffix}"
    return None


def _concat(tables: list[Table]) -> Table:
    return Table([t for s in tables for t in s.texts], [y for s in tables for y in s.raw_labels],
                 " + ".join(s.path for s in tables))


def label_names(train: Table | None, validation: Table, given: Sequence[str] | None, labels_file: Path,
                layout_names: Sequence[str] | None) -> list[str]:
    """The ordered label names: given, else from labels.txt, else the data layout's, else from the data."""
    if given is not None:
        names = [str(n) for n in given]
        origin = "the labels given"
    elif labels_file.is_file():
        names = [line.strip() for line in labels_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        origin = str(labels_file)
    elif layout_names is not None:
        names, origin = list(layout_names), "CoLA's labels"
    else:
        seen = sorted({name for table in (train or validation,) for row in table.raw_labels for name in row})
        names = ([str(i) for i in range(max(int(n) for n in seen) + 1)] if seen and all(_is_int(n) for n in seen)
                 else seen)
        origin = "the data"
    if len(set(names)) != len(names):
        raise DataError(f"{origin} name a label twice: {names}", hint="give each label once")
    if len(names) < 2:
        raise DataError(f"{origin} name{'s' if origin == 'the data' else ''} only {len(names)} label(s) {names}; "
                        "a classifier needs at least two", hint="check the label column, or pass --labels A,B,...")
    return names


def to_ids(table: Table, names: list[str], multi_label: bool, origin: str) -> Split:
    """Label cells as ids into `names`: a name, or an int id when the data writes ids."""
    index = {name: i for i, name in enumerate(names)}
    rows: list = []
    for row in table.raw_labels:
        ids = []
        for cell in row:
            if cell in index:
                ids.append(index[cell])
            elif _is_int(cell) and 0 <= int(cell) < len(names):
                ids.append(int(cell))
            else:
                raise DataError(f"{table.path} has label {cell!r}, which is not one of {origin} {names}",
                                hint="pass --labels naming every label in the data, in id order")
        rows.append([int(i in ids) for i in range(len(names))] if multi_label else ids[0])
    return Split(table.texts, rows)


def _is_int(cell: str) -> bool:
    return cell.lstrip("-").isdigit()


def load_splits(data: str | None, need_train: bool = True, labels: Sequence[str] | None = None,
                text_columns: Sequence[str] | None = None, multi_label: bool = False) -> Splits:
    """Train and validation splits from a directory, a hub dataset name, or defaults.

    `labels` fixes the names (and order) of the labels, as `--labels` or a package does."""
    data = resolve_data(data)
    if data in HUB_DATASETS:
        return _load_hub(data, need_train, labels)
    directory = Path(data)
    if not directory.is_dir():
        raise DataError(f"data path {directory} is not a directory",
                        hint=f"pass a folder with train.tsv and validation files, or one of: {', '.join(HUB_DATASETS)}")
    read = lambda path: read_table(path, text_columns, multi_label)  # noqa: E731
    layout_names = None
    if all(cola := [_find(directory, (stem,)) for stem in COLA_VALIDATION]):
        validation = _concat([read(path) for path in cola])
        layout_names = COLA_LABELS
    elif (path := _find(directory, VALIDATION_NAMES)) is not None:
        validation = read(path)
    else:
        raise DataError(f"{directory} has no validation file",
                        hint="add in_domain_dev.tsv + out_of_domain_dev.tsv, or validation.tsv / dev.tsv "
                             "(or .csv, either gzipped as .gz)")
    train = None
    if need_train:
        path = _find(directory, TRAIN_NAMES)
        if path is None:
            raise DataError(f"{directory} has no train.tsv or train.csv", hint="add a training file (.gz works too)")
        train = read(path)
    pairs = {isinstance(t.texts[0], tuple) for t in (train, validation) if t is not None}
    if len(pairs) > 1:
        raise DataError(f"{directory}: one split has sentence pairs and the other single texts",
                        hint="give both splits the same text columns")
    names = label_names(train, validation, labels, directory / LABELS_FILE, layout_names)
    origin = "the labels given" if labels is not None else "the labels"
    splits = Splits(train=to_ids(train, names, multi_label, origin) if train else None,
                    validation=to_ids(validation, names, multi_label, origin), source=str(directory.resolve()),
                    labels=names, pairs=pairs.pop(), multi_label=multi_label)
    if train is not None:
        _check_label_coverage(splits)
    return splits


def _check_label_coverage(splits: Splits) -> None:
    """Training needs two classes, and every class the validation split has."""
    def present(split: Split) -> set[int]:
        if splits.multi_label:
            return {i for row in split.labels for i, on in enumerate(row) if on}
        return set(split.labels)

    in_train = present(splits.train)
    if not splits.multi_label and len(in_train) < 2:
        raise DataError(f"the training data has one class only ({splits.labels[in_train.pop()]!r})",
                        hint="a classifier needs rows of at least two classes")
    unseen = sorted(present(splits.validation) - in_train)
    if unseen:
        raise DataError(f"the validation data has labels the training data lacks: {[splits.labels[i] for i in unseen]}",
                        hint="add training rows for them, or remove them from the validation data")


def _load_hub(name: str, need_train: bool, labels: Sequence[str] | None) -> Splits:
    """A GLUE task from the Hugging Face Hub: its Parquet files, fetched by huggingface_hub (which
    tokenizers brings) and read by core.tables, so the runtime side reads it too."""
    from huggingface_hub import snapshot_download  # online only

    repo, task = HUB_DATASETS[name]
    try:
        folder = Path(snapshot_download(repo, repo_type="dataset", allow_patterns=[f"{task}/*.parquet"])) / task
    except Exception as e:  # the hub is unreachable offline; that is the user's environment, not a bug
        raise DataError(f"could not fetch {name} from the Hugging Face Hub ({type(e).__name__})",
                        hint="when offline, leave --data out to use the bundled CoLA copy") from None

    def split(stem: str) -> Split:
        files = sorted(folder.glob(f"{stem}-*.parquet"))
        if not files:
            raise DataError(f"{repo} has no {task} {stem} split", hint="leave --data out to use the bundled CoLA copy")
        texts: list[Text] = []
        ids: list[int] = []
        for path in files:
            for chunk in TableFile(path).chunks(["sentence", "label"]):
                texts += chunk.column("sentence")
                ids += [int(y) for y in chunk.column("label")]
        return Split(texts, ids)

    return Splits(train=split("train") if need_train else None, validation=split("validation"), source=name,
                  labels=list(labels) if labels is not None else list(COLA_LABELS))
