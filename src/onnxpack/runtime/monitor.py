"""Prediction monitoring against the package's own reference: the quantities every answer has, the
reference profile `verify` and `optimize` store in the manifest, and drift (PSI, KS) of a prediction
log against it. No torch; numpy, tokenizers and, for Parquet logs, pyarrow.

The per-text quantities, made by `text_quantities` (and, for a long text read in windows, by
`window_quantities`) from the tokenizer's encodings, alike for the reference, the server and the
monitor:

    length     tokens of the text's first window as the model reads it, special tokens included
               (at most max_length: a longer text counts as truncated)
    unknown    how many of those tokens are the tokenizer's unknown token ([UNK], <unk>)
    truncated  the text has more tokens than one window holds (cut under truncate; more than one
               window under chunk)

With each answer's predicted label and that label's score they make a `Profile`: the label
distribution, a score histogram per label, a length histogram, the unknown-token rate (unknown
tokens over all tokens) and the truncation rate (truncated texts over texts). Histogram buckets
are Prometheus's: bucket i counts values `<= edges[i]` and above the edge before; one more bucket
counts values over the last edge. The edges are recorded in the reference, and the server's
Prometheus histograms use the same ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from tokenizers import Encoding, Tokenizer

from onnxpack.core.atomic import atomic_save_png
from onnxpack.core.config import MonitorConfig
from onnxpack.core.errors import OnnxpackError, PackageError
from onnxpack.core.families import ATTENTION_MASK, INPUT_IDS
from onnxpack.core.package import MULTI_LABEL, Package, now

from .feed import Text, columns, package_tokenizer
from .scores import sigmoid, softmax

log = logging.getLogger(__name__)

# The predicted label's score: 20 buckets of 0.05 (a two-label model's scores are 0.5 and over).
SCORE_EDGES = tuple(round(0.05 * i, 2) for i in range(1, 21))
# A proportion of 0 in either distribution counts as this much, so PSI stays finite (the usual floor).
PSI_FLOOR = 1e-4
# A prediction log's files in a folder; those whose name starts with "." are still being written.
LOG_SUFFIXES = (".jsonl", ".parquet")
CORRUPT_EXAMPLES = 5  # corrupt lines named in the report (all are counted)
_FIELDS = ("time", "label", "score", "length", "unknown", "truncated")


def length_edges(max_length: int) -> list[int]:
    """The length histogram's edges for a package: 4, 6, 8, 12, 16, 24, ... (powers of two and the
    halfway points between them) below max_length, then max_length itself."""
    edges = {e for k in range(2, 31) for e in (2 ** k, 3 * 2 ** (k - 1)) if e < max_length}
    return sorted(edges | {max_length})


def bucket(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Each value's bucket, as Prometheus counts them: the first edge at or over it; len(edges) over the last."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")


def unknown_token_id(tokenizer: Tokenizer) -> int | None:
    """The id of the tokenizer's unknown token; None for one that has none (byte-level BPE)."""
    model = json.loads(tokenizer.to_str()).get("model") or {}
    if isinstance(model.get("unk_id"), int):  # Unigram
        return model["unk_id"]
    token = model.get("unk_token")
    return tokenizer.token_to_id(token) if isinstance(token, str) else None


@dataclasses.dataclass
class TextQuantities:
    """Per text: tokens read in its first window, unknown tokens among them, and whether it was longer."""

    lengths: np.ndarray  # int64
    unknown: np.ndarray  # int64
    truncated: np.ndarray  # bool

    def rows(self) -> list[tuple[int, int, bool]]:
        return list(zip(self.lengths.tolist(), self.unknown.tolist(), self.truncated.tolist()))

    @classmethod
    def of_rows(cls, rows: Sequence[tuple[int, int, bool]]) -> TextQuantities:
        table = np.array(rows, dtype=np.int64).reshape(len(rows), 3)
        return cls(table[:, 0], table[:, 1], table[:, 2].astype(bool))


def _token_counts(feed: Mapping[str, np.ndarray], unk_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, unknown tokens) per row of a padded feed."""
    mask = feed[ATTENTION_MASK]
    lengths = mask.sum(axis=1).astype(np.int64)
    if unk_id is None:
        return lengths, np.zeros_like(lengths)
    return lengths, ((feed[INPUT_IDS] == unk_id) & (mask > 0)).sum(axis=1).astype(np.int64)


def text_quantities(encodings: Sequence[Encoding], unk_id: int | None,
                    feed: Mapping[str, np.ndarray] | None = None) -> TextQuantities:
    """The quantities of texts from a truncating tokenizer's encodings (a truncated one keeps the
    rest in `.overflowing`); `feed` is their padded columns when already made (the server has them)."""
    if feed is None:
        feed = columns(encodings, (INPUT_IDS, ATTENTION_MASK))
    lengths, unknown = _token_counts(feed, unk_id)
    truncated = np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(encodings))
    return TextQuantities(lengths, unknown, truncated)


def token_quantities(tokens: Mapping[str, np.ndarray], unk_id: int | None) -> TextQuantities:
    """The quantities of token rows sent as they are (V2's input_ids): never truncated."""
    lengths, unknown = _token_counts(tokens, unk_id)
    return TextQuantities(lengths, unknown, np.zeros(len(lengths), dtype=bool))


def window_quantities(feed: Mapping[str, np.ndarray], owner: np.ndarray, count: int,
                      unk_id: int | None) -> TextQuantities:
    """The quantities of texts read in windows (a chunking tokenizer's, in order, `owner[i]` the text
    of window i): their first window's, truncated when a text has more than one, as under truncate."""
    lengths, unknown = _token_counts(feed, unk_id)
    first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])  # each text's first window
    return TextQuantities(lengths[first], unknown[first], np.bincount(owner, minlength=count) > 1)


def answers(logits: np.ndarray, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """(predicted label index, its score) per row: the argmax of softmax (multi-label: of the sigmoids)."""
    probs = sigmoid(logits) if multi_label else softmax(logits)
    best = probs.argmax(axis=-1)
    return best, probs[np.arange(len(best)), best].astype(np.float64)


# ---- the profile ----

class Profile:
    """The monitored distributions of a set of answers, as bucket counts; `add` takes more answers.

    Used alike for the reference (the validation set), the server's live counts (/metrics) and a
    prediction log (monitor)."""

    def __init__(self, labels: Sequence[str], score_edges: Sequence[float], length_edges: Sequence[int]) -> None:
        self.labels = list(labels)
        self.score_edges = [float(e) for e in score_edges]
        self.length_edges = [int(e) for e in length_edges]
        self.label_counts = np.zeros(len(self.labels), dtype=np.int64)
        self.score_counts = np.zeros((len(self.labels), len(self.score_edges) + 1), dtype=np.int64)
        self.score_sums = np.zeros(len(self.labels), dtype=np.float64)
        self.length_counts = np.zeros(len(self.length_edges) + 1, dtype=np.int64)
        self.tokens = 0  # the sum of lengths
        self.unknown_tokens = 0
        self.truncated = 0

    @property
    def n(self) -> int:
        return int(self.label_counts.sum())

    def add(self, label: np.ndarray, score: np.ndarray, lengths: np.ndarray, unknown: np.ndarray,
            truncated: np.ndarray) -> None:
        """Count answers: label indices and scores, and the texts' quantities (arrays of one length)."""
        k, s = len(self.labels), len(self.score_edges) + 1
        self.label_counts += np.bincount(label, minlength=k)
        self.score_counts += np.bincount(label * s + bucket(score, self.score_edges), minlength=k * s).reshape(k, s)
        self.score_sums += np.bincount(label, weights=score, minlength=k)
        self.length_counts += np.bincount(bucket(lengths, self.length_edges), minlength=len(self.length_counts))
        self.tokens += int(lengths.sum())
        self.unknown_tokens += int(unknown.sum())
        self.truncated += int(np.count_nonzero(truncated))

    @property
    def unknown_rate(self) -> float:
        return self.unknown_tokens / self.tokens if self.tokens else 0.0

    @property
    def truncation_rate(self) -> float:
        return self.truncated / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The manifest's `reference` layout (and monitor's JSON)."""
        counts = self.label_counts.tolist()
        return {
            "n": self.n,
            "labels": dict(zip(self.labels, counts)),
            "scores": {"edges": self.score_edges,
                       "counts": {name: row for name, row in zip(self.labels, self.score_counts.tolist())},
                       "mean": {name: round(s / c, 6) if c else None
                                for name, s, c in zip(self.labels, self.score_sums.tolist(), counts)}},
            "lengths": {"edges": self.length_edges, "counts": self.length_counts.tolist(),
                        "mean": round(self.tokens / self.n, 4) if self.n else None},
            "tokens": self.tokens, "unknown_tokens": self.unknown_tokens, "unknown_rate": self.unknown_rate,
            "truncated": self.truncated, "truncation_rate": self.truncation_rate,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Profile:
        """A profile from `to_dict`'s layout; one line naming `where` when it is not one."""
        try:
            labels = list(d["labels"])
            profile = cls(labels, d["scores"]["edges"], d["lengths"]["edges"])
            profile.label_counts[:] = [int(d["labels"][name]) for name in labels]
            profile.score_counts[:] = [[int(c) for c in d["scores"]["counts"][name]] for name in labels]
            means = d["scores"]["mean"]
            profile.score_sums[:] = [float(means[name] or 0) * int(d["labels"][name]) for name in labels]
            profile.length_counts[:] = [int(c) for c in d["lengths"]["counts"]]
            profile.tokens, profile.unknown_tokens, profile.truncated = (int(d[k]) for k in ("tokens", "unknown_tokens",
                                                                                                "truncated"))
            for edges in (profile.score_edges, profile.length_edges):
                if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
                    raise ValueError(f"bucket edges {edges[:5]} are not increasing")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PackageError(f"{where} is not a reference profile ({type(e).__name__}: {e})",
                               hint="run `onnxpack verify` on the package again to store a new one") from None
        return profile


def default_profile(package: Package) -> Profile:
    """An empty profile with the reference's edges, or (a package without one, or with one that is
    not a profile: the server still serves it) the default edges."""
    m = package.manifest
    if m.reference:
        try:
            ref = Profile.from_dict(m.reference, f"{package.root}'s manifest reference")
            return Profile(m.labels, ref.score_edges, ref.length_edges)
        except PackageError as e:
            log.warning("%s; /metrics uses the default bucket edges", e.message)
    return Profile(m.labels, SCORE_EDGES, length_edges(m.max_length))


def reference_profile(package: Package, texts: Sequence[Text], logits: np.ndarray, variant: str,
                      data: str) -> dict[str, Any]:
    """The manifest's `reference`: the profile of `logits` (the served variant's, on the validation
    texts) and of the texts as the package's tokenizer reads them, and where it came from."""
    m = package.manifest
    tokenizer = package_tokenizer(package.tokenizer_path, m.max_length, m.pad_token_id)
    encodings = tokenizer.encode_batch([tuple(t) if isinstance(t, list) else t for t in texts])
    quantities = text_quantities(encodings, unknown_token_id(tokenizer))
    profile = Profile(m.labels, SCORE_EDGES, length_edges(m.max_length))
    label, score = answers(logits, m.problem_type == MULTI_LABEL)
    profile.add(label, score, quantities.lengths, quantities.unknown, quantities.truncated)
    return {**profile.to_dict(), "variant": variant, "data": data, "at": now()}


# ---- PSI and KS ----

def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """Population stability index of two count vectors over the same buckets: sum over buckets of
    (live - reference) * ln(live / reference), as proportions, each at least PSI_FLOOR."""
    q = np.maximum(reference / max(reference.sum(), 1), PSI_FLOOR)
    p = np.maximum(live / max(live.sum(), 1), PSI_FLOOR)
    return float(((p - q) * np.log(p / q)).sum())


def binned_ks(reference: np.ndarray, live: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov on binned data: D, the largest gap between the two cumulative
    distributions at the bucket edges (the reference is kept only as a histogram, so the test sees
    no finer than its buckets), and its asymptotic p-value for the two sample sizes."""
    n, m = int(reference.sum()), int(live.sum())
    if not n or not m:
        return 0.0, 1.0
    d = float(np.abs(np.cumsum(reference) / n - np.cumsum(live) / m).max())
    return d, kolmogorov_p(d, n * m / (n + m))


def kolmogorov_p(d: float, n: float) -> float:
    """P(D > d) for the two-sample KS statistic with effective size n (Kolmogorov's limit, with
    Stephens' small-sample correction)."""
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    if lam < 0.2:
        return 1.0
    total = sum((-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101))
    return float(min(max(2 * total, 0.0), 1.0))


@dataclasses.dataclass
class Drift:
    """One quantity against the reference."""

    quantity: str  # labels, score[<label>], length, unknown_rate, truncation_rate
    psi: float | None  # None: no live answers to compare (a label never predicted)
    ks: float | None  # binned KS D, for scores and lengths
    ks_p: float | None
    reference: str  # a short summary of each side
    live: str
    texts: tuple[int, int]  # (reference, live) texts the quantity is measured on
    judged: bool  # both sides have min_texts: the PSI counts for the exit status
    drifted: bool  # judged, and the PSI is over max_psi


def compare(reference: Profile, live: Profile, max_psi: float, min_texts: int = 1) -> list[Drift]:
    """PSI of every quantity, KS for scores and lengths. The two rates are compared as two-bucket
    distributions (unknown tokens and the other tokens; truncated texts and the others). A quantity
    measured on fewer than `min_texts` texts on either side (a label's scores: the texts given that
    label) is not judged: the PSI of a few texts is mostly noise."""
    rows: list[Drift] = []

    def add(name: str, ref: np.ndarray, cur: np.ndarray, ref_text: str, cur_text: str, ks: bool = False,
            texts: tuple[int, int] = (reference.n, live.n)) -> None:
        value = psi(ref, cur) if cur.sum() else None
        d, p = binned_ks(ref, cur) if ks and cur.sum() and ref.sum() else (None, None)
        judged = value is not None and min(texts) >= min_texts
        rows.append(Drift(name, value, d, p, ref_text, cur_text, texts, judged, judged and value > max_psi))

    def shares(p: Profile) -> str:
        return " · ".join(f"{name} {c / max(p.n, 1):.1%}" for name, c in zip(p.labels, p.label_counts.tolist()))

    add("labels", reference.label_counts, live.label_counts, shares(reference), shares(live))
    for i, name in enumerate(reference.labels):
        def mean(p: Profile) -> str:
            c = int(p.label_counts[i])
            return f"n {c}, mean {p.score_sums[i] / c:.3f}" if c else "n 0"
        add(f"score[{name}]", reference.score_counts[i], live.score_counts[i], mean(reference), mean(live), ks=True,
            texts=(int(reference.label_counts[i]), int(live.label_counts[i])))
    add("length", reference.length_counts, live.length_counts, f"mean {reference.tokens / max(reference.n, 1):.1f}",
        f"mean {live.tokens / max(live.n, 1):.1f}", ks=True)
    add("unknown_rate", np.array([reference.unknown_tokens, reference.tokens - reference.unknown_tokens]),
        np.array([live.unknown_tokens, live.tokens - live.unknown_tokens]), f"{reference.unknown_rate:.3%}",
        f"{live.unknown_rate:.3%}")
    add("truncation_rate", np.array([reference.truncated, reference.n - reference.truncated]),
        np.array([live.truncated, live.n - live.truncated]), f"{reference.truncation_rate:.2%}",
        f"{live.truncation_rate:.2%}")
    return rows


# ---- reading prediction logs ----

@dataclasses.dataclass
class LogRows:
    """The usable records of a prediction log, as columns, and what was skipped."""

    time: np.ndarray  # seconds since the epoch
    label: np.ndarray
    score: np.ndarray
    length: np.ndarray
    unknown: np.ndarray
    truncated: np.ndarray
    files: list[str]
    corrupt: int
    examples: list[str]  # the first corrupt lines: "file:line: why"


def log_files(path: Path) -> list[Path]:
    """The log files under `path`: itself, or a folder's finished .jsonl and .parquet files by name."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise OnnxpackError(f"{path} is neither a prediction log file nor a folder of them",
                            hint="pass the folder `onnxpack serve --log-predictions` writes to")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in LOG_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise OnnxpackError(f"{path} holds no prediction logs ({', '.join('*' + s for s in LOG_SUFFIXES)})",
                            hint="pass the folder `onnxpack serve --log-predictions` writes to; a file appears "
                                 "there when it is rotated or the server stops")
    return files


def read_log(path: Path, labels: Sequence[str]) -> LogRows:
    """Every record of the log files under `path`. A line that is not a record (bad JSON, a field
    missing or of the wrong type, a label the package does not have) is counted and skipped; a
    Parquet file that cannot be read is one line."""
    index = {name: i for i, name in enumerate(labels)}
    cols: dict[str, list] = {k: [] for k in _FIELDS}
    corrupt, examples = 0, []
    files = log_files(path)
    for file in files:
        records = _parquet_records(file) if file.suffix == ".parquet" else _jsonl_records(file)
        for where, record in records:
            row = _row(record, index) if not isinstance(record, str) else record
            if isinstance(row, str):
                corrupt += 1
                if len(examples) < CORRUPT_EXAMPLES:
                    examples.append(f"{file.name}:{where}: {row}")
                continue
            for k, v in zip(_FIELDS, row):
                cols[k].append(v)
    return LogRows(np.array(cols["time"], dtype=np.float64), np.array(cols["label"], dtype=np.int64),
                   np.array(cols["score"], dtype=np.float64), np.array(cols["length"], dtype=np.int64),
                   np.array(cols["unknown"], dtype=np.int64), np.array(cols["truncated"], dtype=bool),
                   [str(f) for f in files], corrupt, examples)


def _jsonl_records(file: Path) -> Iterable[tuple[int, Any]]:
    """(line number, the parsed line, or why it is not JSON); blank lines are not records."""
    try:
        with open(file, "rb") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield n, orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    yield n, f"not JSON ({str(e).split(':')[0]})"
    except OSError as e:
        raise OnnxpackError(f"cannot read {file}: {e.strerror or e}") from None


def _parquet_records(file: Path) -> Iterable[tuple[int, Any]]:
    """(row number, the row as a dict); one line for a file that is not readable Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise OnnxpackError(f"{file} is not a readable Parquet file ({str(e).splitlines()[0][:160]})",
                            hint="a truncated or damaged file: move it out of the log folder") from None
    for n, record in enumerate(table.to_pylist(), start=1):
        yield n, record


def _row(record: Any, index: Mapping[str, int]) -> tuple | str:
    """A record's fields as (time, label index, score, length, unknown, truncated), or why it is not one."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in _FIELDS if k not in record]
    if missing:
        return f"no {', '.join(missing)}"
    label, score, length, unknown, truncated = (record[k] for k in _FIELDS[1:])
    if label not in index:
        return f"label {str(label)[:40]!r} is not one of the package's ({', '.join(index)})"
    if not (isinstance(score, (int, float)) and not isinstance(score, bool) and 0 <= score <= 1.000001):
        return "score is not a number between 0 and 1"
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (length, unknown)):
        return "length and unknown must be whole numbers"
    if not isinstance(truncated, bool):
        return "truncated is not true or false"
    at = _seconds(record["time"])
    if at is None:
        return "time is not an ISO 8601 time"
    return at, index[label], float(score), length, unknown, truncated


def _seconds(value: Any) -> float | None:
    if isinstance(value, datetime):  # Parquet's timestamp type
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


# ---- the stage ----

@dataclasses.dataclass
class MonitorResult:
    package: str
    input: str
    files: list[str]
    records: int  # compared: in the window
    outside_window: int
    corrupt: int  # lines counted and skipped
    corrupt_examples: list[str]
    window_s: float | None
    first: str | None  # the compared records' first and last time
    last: str | None
    max_psi: float
    min_texts: int
    drifts: list[Drift]
    drifted: bool  # some PSI is over max_psi: exit 1
    reference: dict[str, Any]
    live: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def monitor(package_dir: str | Path, input: str | Path, config: MonitorConfig | None = None) -> MonitorResult:
    """The prediction log at `input` (a file or a folder of them) against the package's reference
    profile: PSI of every quantity, KS of scores and lengths; with a window, only the log's last
    `window` of time (by the records' own times)."""
    config = config or MonitorConfig()
    config.validate()
    package = Package.open(package_dir, check_files=False)  # the manifest is all it reads
    m = package.manifest
    if not m.reference:
        raise OnnxpackError(f"{package.root} has no reference profile to compare the predictions with; run "
                            f"`onnxpack verify {package.root}` (or `onnxpack optimize`) to store one")
    reference = Profile.from_dict(m.reference, f"{package.root}'s manifest reference")
    rows = read_log(Path(input), reference.labels)
    window = config.window_seconds()
    keep = np.ones(len(rows.time), dtype=bool)
    if window is not None and len(rows.time):
        keep = rows.time >= rows.time.max() - window
    if not keep.any():
        raise OnnxpackError(f"{input} holds no usable prediction records ({rows.corrupt} corrupt lines skipped"
                            f"{': ' + rows.examples[0] if rows.examples else ''})",
                            hint="pass the folder `onnxpack serve --log-predictions` writes to")
    live = Profile(reference.labels, reference.score_edges, reference.length_edges)
    live.add(rows.label[keep], rows.score[keep], rows.length[keep], rows.unknown[keep], rows.truncated[keep])
    drifts = compare(reference, live, config.max_psi, config.min_texts)
    if rows.corrupt:
        log.warning("%d corrupt lines in %s skipped; the first: %s", rows.corrupt, input, rows.examples[0])
    times = rows.time[keep]
    iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")  # noqa: E731
    return MonitorResult(str(package.root), str(input), rows.files, int(keep.sum()), int((~keep).sum()), rows.corrupt,
                         rows.examples, window, iso(times.min()), iso(times.max()), config.max_psi, config.min_texts,
                         drifts, any(d.drifted for d in drifts), m.reference, live.to_dict())


def plot(result: MonitorResult, path: str | Path) -> None:
    """Reference against live, one panel per quantity; one PNG, written atomically (needs [plot])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref, live = (Profile.from_dict(d, "profile") for d in (result.reference, result.live))
    panels = [("labels", ref.labels, ref.label_counts, live.label_counts)]
    score_ticks = [f"≤{e:g}" for e in ref.score_edges] + [">1"]
    panels += [(f"score[{name}]", score_ticks, ref.score_counts[i], live.score_counts[i])
               for i, name in enumerate(ref.labels)]
    panels.append(("length (tokens)", [f"≤{e}" for e in ref.length_edges] + [f">{ref.length_edges[-1]}"],
                   ref.length_counts, live.length_counts))
    panels.append(("rates", ["unknown tokens", "truncated texts"], np.array([ref.unknown_rate, ref.truncation_rate]),
                   np.array([live.unknown_rate, live.truncation_rate])))
    psi_of = {d.quantity: d.psi for d in result.drifts}
    psi_of["length (tokens)"] = psi_of.get("length")
    drifted = {d.quantity for d in result.drifts if d.drifted}
    drifted |= {"length (tokens)"} if "length" in drifted else set()
    cols = 2
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols, figsize=(13, 3.6 * math.ceil(len(panels) / cols)),
                             squeeze=False)
    for ax, (title, ticks, a, b) in zip(axes.ravel(), panels):
        x = np.arange(len(ticks))
        share = title != "rates"
        ax.bar(x - 0.2, a / max(a.sum(), 1) if share else a, 0.4, label="reference")
        ax.bar(x + 0.2, b / max(b.sum(), 1) if share else b, 0.4, label="live")
        names = ("unknown_rate", "truncation_rate") if title == "rates" else (title,)
        shown = [psi_of[q] for q in names if psi_of.get(q) is not None]
        ax.set_title(title + ("  PSI " + " · ".join(f"{v:.3f}" for v in shown) if shown else ""),
                     color="red" if drifted & set(names) else "black")
        ax.set_xticks(x, ticks, rotation=60 if len(ticks) > 8 else 0, fontsize=7)
        ax.set_ylabel("share" if share else "rate")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{Path(result.package).name}: {result.records} predictions ({result.first} to {result.last}) "
                 f"against the reference ({result.reference.get('n')} validation rows)")
    fig.tight_layout()
    atomic_save_png(fig, path, dpi=100)

