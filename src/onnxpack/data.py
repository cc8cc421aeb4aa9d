"""Labelled text data: the bundled CoLA, any TSV/CSV folder, or GLUE CoLA through `datasets`.

`load_splits(source)` gives plain Python lists. Standard library only, so the runtime
side (optimize, bench) can read labelled data without torch; `datamodule` turns the
lists into Lightning batches.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import logging
import os
from pathlib import Path

from .errors import DataError

log = logging.getLogger(__name__)

DATA_ENV = "ONNXPACK_DATA"
HUB_DATASETS = {"glue/cola": ("glue", "cola")}
TEXT_COLUMNS = ("sentence", "text", "sentence1")
LABEL_COLUMNS = ("label", "labels")
# CoLA ships its GLUE validation split as two files; together they are the 1043 rows.
COLA_VALIDATION = ("in_domain_dev", "out_of_domain_dev")
TRAIN_NAMES = ("train",)
VALIDATION_NAMES = ("validation", "dev", "val")
TABLE_SUFFIXES = (".tsv", ".csv", ".tsv.gz", ".csv.gz")
# CoLA v1.1, gzipped package data: the default when no data is given (see its README).
BUNDLED_COLA = Path(__file__).resolve().parent / "bundled" / "cola"


@dataclasses.dataclass
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclasses.dataclass
class Splits:
    train: Split | None
    validation: Split
    source: str


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


def read_table(path: Path) -> Split:
    """Read a TSV/CSV (gzipped when named .gz) with a header row naming a text column and a 0/1 label column."""
    gzipped = path.suffix == ".gz"
    delimiter = "\t" if path.name.removesuffix(".gz").endswith(".tsv") else ","
    try:
        with (gzip.open(path, "rt", encoding="utf-8", newline="") if gzipped
              else open(path, encoding="utf-8", newline="")) as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
            header = next(reader, None)
            rows = list(reader)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text", hint="save it as UTF-8") from None
    except (OSError, EOFError) as e:  # unreadable, or a .gz that is not (wholly) gzip
        raise DataError(f"cannot read {path}: {e}", hint="give a readable UTF-8 TSV/CSV file (gzipped if named .gz)") from None
    if header is None:
        raise DataError(f"{path} is empty", hint="give a file with a header row and at least one labelled row")
    columns = [c.strip().lower() for c in header]
    text_col = next((columns.index(c) for c in TEXT_COLUMNS if c in columns), None)
    label_col = next((columns.index(c) for c in LABEL_COLUMNS if c in columns), None)
    if text_col is None or label_col is None:
        raise DataError(f"{path} has columns {header}; expected a text column ({'/'.join(TEXT_COLUMNS)}) "
                        f"and a label column ({'/'.join(LABEL_COLUMNS)})",
                        hint="rename the header row, e.g. 'sentence<TAB>label'")
    texts, labels = [], []
    for line_no, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) <= max(text_col, label_col):
            raise DataError(f"{path}:{line_no} has {len(row)} fields, expected {len(columns)}",
                            hint="check the delimiter (tab for .tsv, comma for .csv)")
        label = row[label_col].strip()
        if label not in ("0", "1"):
            raise DataError(f"{path}:{line_no} has label {label!r}; labels must be 0 or 1",
                            hint="use 0 for unacceptable and 1 for acceptable")
        texts.append(row[text_col])
        labels.append(int(label))
    if not texts:
        raise DataError(f"{path} has a header but no rows", hint="add labelled rows")
    return Split(texts, labels)


def _find(directory: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in TABLE_SUFFIXES:
            if (directory / f"{stem}{suffix}").is_file():
                return directory / f"{stem}{suffix}"
    return None


def _concat(splits: list[Split]) -> Split:
    return Split([t for s in splits for t in s.texts], [y for s in splits for y in s.labels])


def load_splits(data: str | None, need_train: bool = True) -> Splits:
    """Train and validation splits from a directory, a hub dataset name, or defaults."""
    data = resolve_data(data)
    if data in HUB_DATASETS:
        return _load_hub(data, need_train)
    directory = Path(data)
    if not directory.is_dir():
        raise DataError(f"data path {directory} is not a directory",
                        hint=f"pass a folder with train.tsv and validation files, or one of: {', '.join(HUB_DATASETS)}")
    if all(cola := [_find(directory, (stem,)) for stem in COLA_VALIDATION]):
        validation = _concat([read_table(path) for path in cola])
    elif (path := _find(directory, VALIDATION_NAMES)) is not None:
        validation = read_table(path)
    else:
        raise DataError(f"{directory} has no validation file",
                        hint="add in_domain_dev.tsv + out_of_domain_dev.tsv, or validation.tsv / dev.tsv "
                             "(or .csv, either gzipped as .gz)")
    train = None
    if need_train:
        path = _find(directory, TRAIN_NAMES)
        if path is None:
            raise DataError(f"{directory} has no train.tsv or train.csv", hint="add a training file (.gz works too)")
        train = read_table(path)
    return Splits(train=train, validation=validation, source=str(directory.resolve()))


def _load_hub(name: str, need_train: bool) -> Splits:
    import datasets  # online only; keeps the offline paths free of its import cost

    try:
        ds = datasets.load_dataset(*HUB_DATASETS[name])
    except Exception as e:  # the hub is unreachable offline; that is the user's environment, not a bug
        raise DataError(f"could not load {name} through `datasets` ({type(e).__name__})",
                        hint="when offline, leave --data out to use the bundled CoLA copy") from None

    def split(s: str) -> Split:
        return Split(list(ds[s]["sentence"]), [int(y) for y in ds[s]["label"]])

    return Splits(train=split("train") if need_train else None, validation=split("validation"), source=name)
