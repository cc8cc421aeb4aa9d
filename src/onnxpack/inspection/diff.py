"""What changed between two models: their structure, and their answers on the same texts.

`diff(a, b, config)` takes two packages, a package's variant (`pkg@int8-static`) or bare .onnx
files, and returns a `DiffResult` that serialises to JSON:

- structure, from the graphs and manifests alone: IR version and opsets, op-type counts, parameters,
  the weight tensors that moved most (matched by name and shape), inputs and outputs, and the
  manifests' labels, max length, variants, gate figures and tokenizer;
- behaviour, from running both sides with the Predictor on the same rows (the validation set
  `optimize` gates on, by default): label agreement, every flipped row, the task metric on each
  side, an exact McNemar test on their errors, and the largest logit difference.

Each side runs as `optimize` ran it when it gated the variant: the same data, the same batch size
(the manifest records it) and length-sorted batches, so the agreement with fp32 is the one the
manifest records. No torch here.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from tokenizers import Tokenizer

from onnxpack.core.config import DiffConfig, OptimizeConfig
from onnxpack.core.data import TABLE_SUFFIXES, Text, load_splits, read_table, to_ids
from onnxpack.core.errors import DataError, OnnxpackError
from onnxpack.core.htmlsafe import content_security_policy
from onnxpack.core.metrics import METRIC_NAMES, predictions, scores, task_metric
from onnxpack.core.onnxfile import load_model
from onnxpack.core.package import FP32, MULTI_LABEL, TOKENIZER, Package, sha256_file
from onnxpack.runtime.feed import check_row_kind
from onnxpack.runtime.predictor import Predictor, resolve_providers

# inspect's readers of one graph; diff puts two of their reports side by side
from .inspect import Source, _contract, _identity, _structure, _weights, resolve

log = logging.getLogger(__name__)

# The gate figures optimize records per variant that the manifest comparison shows.
GATE_FIGURES = ("n", "mcc", "acc", "f1", "agreement", "max_abs_diff", "items_per_s", "batch_size", "batch_invariant",
                "provider")

Progress = Callable[[str, int, int], None]  # (side, rows done, rows in all)


class BehaviourRefused(OnnxpackError):
    """The two sides cannot be run on the same rows (no tokenizer, different label sets, ...).

    `result` carries the structural comparison, which is still shown."""

    def __init__(self, message: str, hint: str | None = None, result: DiffResult | None = None) -> None:
        super().__init__(message, hint)
        self.result = result


@dataclasses.dataclass
class DiffResult:
    a: dict[str, Any]  # what each side is: file, package, variant
    b: dict[str, Any]
    structure: dict[str, Any]
    behaviour: dict[str, Any] | None
    min_agreement: float

    @property
    def agreement(self) -> float | None:
        return self.behaviour["agreement"] if self.behaviour else None

    @property
    def passed(self) -> bool:
        return self.agreement is not None and self.agreement >= self.min_agreement

    def to_dict(self) -> dict[str, Any]:
        # The agreement first: a reader that looks for the first "agreement" finds this one, not a gate figure.
        return {"agreement": self.agreement, "min_agreement": self.min_agreement, "passed": self.passed,
                "a": self.a, "b": self.b, "behaviour": self.behaviour, "structure": self.structure}


# --- the two sides ------------------------------------------------------------------------------------------

def parse_side(spec: str | Path, provider: str | None = None) -> Source:
    """`pkg`, `pkg@variant` or `model.onnx` as a Source; a package without a variant named runs the one
    the Predictor picks (the fastest accepted one on the providers `provider` resolves to)."""
    text = str(spec)
    path, variant = Path(text), None
    if not path.exists() and "@" in text:
        head, _, tail = text.rpartition("@")
        if head and Path(head).exists():
            path, variant = Path(head), tail
    if variant is not None and not path.is_dir():
        raise OnnxpackError(f"{path} is a single file; @{variant} names a variant of a package folder",
                            hint="pass PACKAGE@VARIANT, or the .onnx file alone")
    if variant == "":
        raise OnnxpackError(f"{text} names no variant after @", hint="pass PACKAGE@VARIANT, e.g. pkg@int8-static")
    if path.is_dir() and variant is None:
        variant = Package.open(path, check_files=False).default_variant(resolve_providers(provider))
    return resolve(path, variant, "diff")


def _describe(source: Source) -> dict[str, Any]:
    return source.to_dict() | {"title": source.title}


# --- structure ----------------------------------------------------------------------------------------------

def compare_structure(a: Source, b: Source) -> dict[str, Any]:
    """Everything that can be compared without running: graphs, weights, contracts, manifests."""
    ma, mb = load_model(a.path), load_model(b.path)
    ia, ib = _identity(ma, a.path), _identity(mb, b.path)
    ca, cb = _contract(ma, a.package), _contract(mb, b.package)
    sa, sb = _structure(ma), _structure(mb)
    wa, wb = _weights(ma), _weights(mb)
    opsets = sorted(set(ia["opsets"]) | set(ib["opsets"]))
    return {
        "identity": {"same_file": ia["sha256"] == ib["sha256"],
                     **{k: {"a": ia[k], "b": ib[k]} for k in ("sha256", "bytes", "ir_version", "producer")},
                     "opsets": {d: {"a": ia["opsets"].get(d), "b": ib["opsets"].get(d)} for d in opsets}},
        "ops": _op_changes(sa["op_types"], sb["op_types"]) | {"nodes": {"a": sa["nodes"], "b": sb["nodes"]}},
        "parameters": {k: {"a": wa[k], "b": wb[k]} for k in ("parameters", "bytes", "initializers")}
        | {"by_dtype": {"a": wa["by_dtype"], "b": wb["by_dtype"]}},
        "weights": compare_weights(ma, mb),
        "contract": {side: _io_changes(ca[side], cb[side]) for side in ("inputs", "outputs")},
        "manifest": compare_manifests(a, b),
    }


def _op_changes(a: dict[str, int], b: dict[str, int]) -> dict[str, Any]:
    ops = sorted(set(a) | set(b), key=lambda op: (-abs(b.get(op, 0) - a.get(op, 0)), op))
    return {"added": {op: b.get(op, 0) - a.get(op, 0) for op in ops if b.get(op, 0) > a.get(op, 0)},
            "removed": {op: a.get(op, 0) - b.get(op, 0) for op in ops if a.get(op, 0) > b.get(op, 0)},
            "a": a, "b": b}


def compare_weights(ma: onnx.ModelProto, mb: onnx.ModelProto) -> dict[str, Any]:
    """Initializers matched by name and shape, each with the largest |Δ| between its elements and that
    over the largest |weight| of A's tensor (relative); most moved first. Quantized graphs rename the
    weights they quantize, so few of theirs match."""
    a = {t.name: t for t in ma.graph.initializer}
    b = {t.name: t for t in mb.graph.initializer}
    rows, reshaped, not_compared = [], [], []
    for name in [n for n in a if n in b]:
        ta, tb = a[name], b[name]
        if list(ta.dims) != list(tb.dims):
            reshaped.append({"name": name, "a": list(ta.dims), "b": list(tb.dims)})
            continue
        xa, xb = numpy_helper.to_array(ta), numpy_helper.to_array(tb)
        numeric = all(np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_ for x in (xa, xb))
        if not numeric or (xa.dtype != xb.dtype and not all(np.issubdtype(x.dtype, np.floating) for x in (xa, xb))):
            # e.g. int8 against float: no common scale
            not_compared.append({"name": name, "a": str(xa.dtype), "b": str(xb.dtype)})
            continue
        rows.append(_tensor_change(name, xa, xb))
    rows.sort(key=lambda r: (r["relative"] is None, -(r["relative"] or 0), -r["max_abs_diff"]))
    return {
        "a": len(a), "b": len(b), "matched": len(rows), "identical": sum(r["max_abs_diff"] == 0 for r in rows),
        "only_a": len(a.keys() - b.keys()), "only_b": len(b.keys() - a.keys()),
        "shape_changed": reshaped, "not_compared": not_compared,
        "tensors": rows,
    }


def _tensor_change(name: str, xa: np.ndarray, xb: np.ndarray) -> dict[str, Any]:
    wide = np.float64 if xa.dtype != np.float32 or xb.dtype != np.float32 else np.float32
    fa, fb = xa.astype(wide, copy=False), xb.astype(wide, copy=False)
    delta = float(np.abs(fa - fb).max()) if fa.size else 0.0
    scale = float(np.abs(fa).max()) if fa.size else 0.0
    return {"name": name, "shape": list(xa.shape), "dtype": {"a": str(xa.dtype), "b": str(xb.dtype)},
            "max_abs_diff": delta, "relative": delta / scale if scale else (0.0 if delta == 0 else None)}


def _io_changes(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    by_a, by_b = {t["name"]: t for t in a}, {t["name"]: t for t in b}
    return {"a": a, "b": b, "same": a == b,
            "only_a": [n for n in by_a if n not in by_b], "only_b": [n for n in by_b if n not in by_a],
            "changed": [{"name": n, "a": by_a[n], "b": by_b[n]} for n in by_a if n in by_b and by_a[n] != by_b[n]]}


def compare_manifests(a: Source, b: Source) -> dict[str, Any]:
    """Manifest fields side by side (None for a bare .onnx file), and every variant's gate figures."""
    pa, pb = a.package, b.package
    fa, fb = _manifest_fields(a), _manifest_fields(b)
    fields = {}
    for key in fa or fb or {}:
        va, vb = (f[key] if f else None for f in (fa, fb))
        fields[key] = {"a": va, "b": vb, "same": va == vb}
    in_a, in_b = (p.variant_names() if p else [] for p in (pa, pb))
    names = list(dict.fromkeys(in_a + in_b))
    return {"packages": {"a": bool(pa), "b": bool(pb)}, "fields": fields,
            "variants": {name: {"a": _gate_figures(pa, name), "b": _gate_figures(pb, name)} for name in names},
            "added_variants": [n for n in in_b if n not in in_a],
            "removed_variants": [n for n in in_a if n not in in_b]}


def _manifest_fields(source: Source) -> dict[str, Any] | None:
    package = source.package
    if package is None:
        return None
    m = package.manifest
    return {"name": m.name, "labels": m.labels, "max_length": m.max_length, "problem_type": m.problem_type,
            "pairs": m.pairs, "thresholds": m.thresholds, "model_type": m.model_type, "exporter": m.exporter,
            "source_sha256": m.source.get("sha256"), "tokenizer_sha256": _tokenizer_hash(package),
            "tokenizer_vocab_size": _vocab_size(package), "model_vocab_size": m.architecture.get("vocab_size"),
            "variant": source.variant, "default_variant": package.default_variant()}


def _gate_figures(package: Package | None, name: str) -> dict[str, Any] | None:
    if package is None or name not in package.variant_names():
        return None
    figures = package.manifest.variants.get(name, {})
    return {k: figures[k] for k in GATE_FIGURES if k in figures}


def _tokenizer_hash(package: Package) -> str:
    return package.manifest.files.get(TOKENIZER) or sha256_file(package.tokenizer_path)


def _vocab_size(package: Package) -> int | None:
    try:
        return Tokenizer.from_file(str(package.tokenizer_path)).get_vocab_size()
    except Exception as e:
        log.warning("cannot read the tokenizer of %s: %s", package.root, str(e).splitlines()[0] if str(e) else e)
        return None


# --- labels -------------------------------------------------------------------------------------------------

def align_labels(labels_a: Sequence[str], labels_b: Sequence[str], mapping: Sequence[str] | None) -> list[int] | None:
    """For each of A's labels, the index of B's label it is: by name, or by `mapping` (`a=b` items;
    labels both sides name alike map to themselves). None when the sets differ and nothing maps them;
    a mapping that is not one-to-one over both label sets is one line."""
    if not mapping:
        if sorted(labels_a) != sorted(labels_b):
            return None
        return [list(labels_b).index(name) for name in labels_a]
    pairs: dict[str, str] = {}
    for item in mapping:
        left, _, right = (part.strip() for part in item.partition("="))
        if left not in labels_a:
            raise OnnxpackError(f"--map-labels maps {left!r}, which is not one of A's labels {list(labels_a)}",
                                hint="write A's label=B's label")
        if right not in labels_b:
            raise OnnxpackError(f"--map-labels maps {left!r} to {right!r}, which is not one of B's labels "
                                f"{list(labels_b)}", hint="write A's label=B's label")
        if left in pairs:
            raise OnnxpackError(f"--map-labels maps {left!r} twice", hint="map each of A's labels once")
        pairs[left] = right
    for name in labels_a:
        if name not in pairs and name in labels_b:
            pairs[name] = name
    unmapped = [name for name in labels_a if name not in pairs]
    if unmapped:
        raise OnnxpackError(f"--map-labels leaves A's label {unmapped[0]!r} unmapped; B's labels are {list(labels_b)}",
                            hint="map every label of A to one of B's")
    targets = list(pairs.values())
    twice = next((t for t in targets if targets.count(t) > 1), None)
    if twice is not None:
        raise OnnxpackError(f"--map-labels maps two of A's labels to B's {twice!r}", hint="map labels one to one")
    left_out = [name for name in labels_b if name not in targets]
    if left_out:
        raise OnnxpackError(f"--map-labels maps no label of A to B's {left_out[0]!r}", hint="map labels one to one")
    return [list(labels_b).index(pairs[name]) for name in labels_a]


def _refusal(a: Source, b: Source, config: DiffConfig) -> tuple[str | None, str | None, list[int] | None]:
    """(why the behaviour cannot be compared, a hint, the label alignment). A bad --map-labels raises."""
    pa, pb = a.package or b.package, b.package or a.package
    if pa is None:
        return ("running the two models needs a package's tokenizer, and A and B are both bare .onnx files",
                "pass a package as A or B (PACKAGE or PACKAGE@VARIANT)", None)
    ma, mb = pa.manifest, pb.manifest
    perm = align_labels(ma.labels, mb.labels, config.map_labels)
    if perm is None:
        return (f"A's labels {ma.labels} and B's {mb.labels} differ, so their answers cannot be compared",
                "map them with --map-labels A's=B's,... (e.g. bad=unacceptable,good=acceptable)", None)
    if ma.pairs != mb.pairs:
        return ("A reads " + ("sentence pairs" if ma.pairs else "single texts") + " and B "
                + ("sentence pairs" if mb.pairs else "single texts"), None, None)
    if (ma.problem_type == MULTI_LABEL) != (mb.problem_type == MULTI_LABEL):
        return ("one side is multi-label and the other gives one label per text", None, None)
    return None, None, perm


# --- behaviour ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Rows:
    texts: list[Text]
    labels: np.ndarray | None  # A's label ids (or 0/1 rows for multi-label); None for unlabelled text
    source: str


def load_rows(data: str | None, labels_a: Sequence[str], labels_b: Sequence[str], perm: Sequence[int],
              multi_label: bool, pairs: bool) -> Rows:
    """The rows to run: a labelled folder (as optimize reads it: the bundled CoLA by default), a
    labelled TSV/CSV file, or a text file of one text per line (pairs: first<TAB>second), unlabelled.
    Labels are named as A's, or as B's (then mapped to A's)."""
    path = Path(data) if data else None
    if path is not None and path.is_file() and not path.name.endswith(TABLE_SUFFIXES):
        return Rows(_text_lines(path, pairs), None, str(path))

    def read(names: Sequence[str]) -> tuple[list[Text], list, str]:
        if path is not None and path.is_file():
            table = read_table(path, multi_label=multi_label)
            split = to_ids(table, list(names), multi_label, "the packages' labels")
            return split.texts, split.labels, str(path)
        splits = load_splits(data, need_train=False, labels=names, multi_label=multi_label)
        check_row_kind(pairs, splits)
        return splits.validation.texts, splits.validation.labels, splits.source

    try:
        texts, ids, source = read(labels_a)
    except DataError:
        if list(labels_a) == list(labels_b):
            raise
        texts, ids, source = read(labels_b)  # the data names B's labels: to A's ids
        inverse = {j: i for i, j in enumerate(perm)}
        ids = [[row[j] for j in perm] for row in ids] if multi_label else [inverse[j] for j in ids]
    if pairs and texts and not isinstance(texts[0], tuple):
        raise DataError(f"{source} has single texts, but the models read sentence pairs",
                        hint="pass --data with pairs")
    return Rows(list(texts), np.array(ids), source)


def _text_lines(path: Path, pairs: bool) -> list[Text]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}", hint="pass a UTF-8 text file, one text per line") from None
    rows: list[Text] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if pairs:
            parts = line.split("\t")
            if len(parts) != 2 or not all(p.strip() for p in parts):
                raise DataError(f"{path}:{number} is not two texts separated by a tab, and the models read "
                                "sentence pairs", hint="write first<TAB>second on each line")
            rows.append((parts[0], parts[1]))
        else:
            rows.append(line)
    if not rows:
        raise DataError(f"{path} has no texts", hint="write one text per line")
    return rows


@dataclasses.dataclass
class _Run:
    logits: np.ndarray
    predictor: Predictor  # closed; its labels and thresholds turn logits into answers
    provider: str
    seconds: float


def _run(name: str, source: Source, package: Package, texts: Sequence[Text], batch_size: int, config: DiffConfig,
         progress: Progress) -> _Run:
    """Every row's logits, batched as optimize's gate batches them (length-sorted, `batch_size` rows)."""
    model_file = None if source.package else source.path
    started = time.perf_counter()
    with Predictor(package, provider=config.provider, threads=config.threads,
                   variant=source.variant or FP32, model_file=model_file) as predictor:
        width = len(predictor.labels)
        logits = np.zeros((len(texts), width), dtype=np.float32)
        done = 0
        progress(name, 0, len(texts))
        for batch, feed in predictor.encoded_batches(texts, batch_size):
            out = predictor.run(feed)
            if out.ndim != 2 or out.shape != (len(batch), width):
                raise OnnxpackError(f"{source.path} gives logits of shape {list(out.shape)} for {len(batch)} rows; "
                                    f"the package it runs with has {width} labels",
                                    hint="compare graphs of the same classifier")
            logits[batch] = out
            done += len(batch)
            progress(name, done, len(texts))
        provider = predictor.providers[0]
    return _Run(logits, predictor, provider, time.perf_counter() - started)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of the discordant pairs (rows one side gets
    right and the other wrong) against an even split."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / 2**n)


def compare_behaviour(a: Source, b: Source, perm: list[int], config: DiffConfig,
                      progress: Progress | None = None) -> dict[str, Any]:
    """Run both sides on the same rows; agreement, flips, metric, McNemar and logit differences."""
    progress = progress or (lambda side, done, total: None)
    pa, pb = a.package or b.package, b.package or a.package
    multi_label = pa.manifest.problem_type == MULTI_LABEL
    rows = load_rows(config.data, pa.manifest.labels, pb.manifest.labels, perm, multi_label, pa.manifest.pairs)
    batch_size = config.batch_size or _recorded_batch_size(b) or _recorded_batch_size(a) or OptimizeConfig.batch_size
    run_a = _run("A", a, pa, rows.texts, batch_size, config, progress)
    run_b = _run("B", b, pb, rows.texts, batch_size, config, progress)
    logits_b = run_b.logits[:, perm]  # B's columns in A's label order
    thresholds_a = run_a.predictor.thresholds if multi_label else None
    thresholds_b = [run_b.predictor.thresholds[j] for j in perm] if multi_label else None
    pred_a, pred_b = predictions(run_a.logits, thresholds_a), predictions(logits_b, thresholds_b)
    n = len(rows.texts)
    same = (pred_a == pred_b).reshape(n, -1).all(axis=1)  # as optimize's gate counts it
    flips = []
    for i in np.flatnonzero(~same).tolist():
        text = rows.texts[i]
        answers = [_answer(run, text, run.logits[i]) for run in (run_a, run_b)]
        flips.append({"row": i, "text": list(text) if isinstance(text, tuple) else text,
                      "label": _true_label(rows.labels[i], pa.manifest.labels) if rows.labels is not None else None,
                      "a": answers[0], "b": answers[1]})
    delta = np.abs(run_a.logits - logits_b)
    behaviour: dict[str, Any] = {
        "agreement": float(same.mean()), "n": n, "flipped": len(flips),
        "data": rows.source, "labelled": rows.labels is not None, "batch_size": batch_size,
        "max_abs_logit_diff": float(delta.max()) if delta.size else 0.0,
        "mean_abs_logit_diff": float(delta.mean()) if delta.size else 0.0,
        "metric": None, "mcnemar": None,
        "runs": {side: {"variant": src.variant, "file": str(src.path), "provider": run.provider,
                        "seconds": round(run.seconds, 2),
                        "rows_per_s": round(n / run.seconds, 1) if run.seconds else None}
                 for side, src, run in (("a", a, run_a), ("b", b, run_b))},
        "flips": flips,
    }
    if rows.labels is not None:
        k = len(pa.manifest.labels)
        score_a, score_b = scores(pred_a, rows.labels, k), scores(pred_b, rows.labels, k)
        metric = task_metric(multi_label)
        behaviour["metric"] = {"name": metric, "title": METRIC_NAMES[metric], "a": score_a[metric],
                               "b": score_b[metric], "change": score_b[metric] - score_a[metric],
                               "acc": {"a": score_a["acc"], "b": score_b["acc"]}}
        right_a = (pred_a == rows.labels).reshape(n, -1).all(axis=1)
        right_b = (pred_b == rows.labels).reshape(n, -1).all(axis=1)
        a_only, b_only = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
        behaviour["mcnemar"] = {"a_right_b_wrong": a_only, "a_wrong_b_right": b_only,
                                "p_value": mcnemar_exact(a_only, b_only)}
    return behaviour


def _recorded_batch_size(source: Source) -> int | None:
    if source.package is None:
        return None
    return source.package.manifest.variants.get(source.variant or FP32, {}).get("batch_size")


def _answer(run: _Run, text: Text, logits: np.ndarray) -> dict[str, Any]:
    answer = run.predictor.results([text], logits[None, :])[0]
    answer.pop("text")
    return answer


def _true_label(row: Any, labels: Sequence[str]) -> str | list[str]:
    if np.ndim(row):
        return [labels[i] for i, on in enumerate(row) if on]
    return labels[int(row)]


# --- the verb -----------------------------------------------------------------------------------------------

def diff(a: str | Path, b: str | Path, config: DiffConfig | None = None,
         progress: Progress | None = None) -> DiffResult:
    """Compare A with B: structure, then behaviour on data. Raises BehaviourRefused, carrying the
    structural result, when the two cannot be run on the same rows."""
    config = config or DiffConfig()
    config.validate()
    source_a, source_b = parse_side(a, config.provider), parse_side(b, config.provider)
    why, hint, perm = _refusal(source_a, source_b, config)  # a bad --map-labels fails here, before any work
    result = DiffResult(_describe(source_a), _describe(source_b), compare_structure(source_a, source_b), None,
                        config.min_agreement)
    if why is not None:
        raise BehaviourRefused(why, hint=hint, result=result)
    result.behaviour = compare_behaviour(source_a, source_b, perm, config, progress)
    return result


# --- the page -----------------------------------------------------------------------------------------------

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; padding: 0 1rem }
h1 { margin-bottom: .2rem } .sub { color: #666; margin-top: 0 }
table { border-collapse: collapse; margin: .6rem 0 1.4rem; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .7rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } .ok { color: #17803d } .bad { color: #b42318 } .changed { background: #fff7d6 }
code { background: #f3f3f3; padding: 0 .25rem; border-radius: 3px; white-space: pre-wrap; word-break: break-all }
"""


def _text(value: Any) -> str:
    """A value as plain text: lists joined, mappings as `key: value`, so every string shows as itself."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _cell(value: Any) -> str:
    return html.escape(_text(value))


def _table(headers: list[str], rows: list[list[Any]], changed: list[bool] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(("<tr class=changed>" if changed and changed[i] else "<tr>")
                   + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for i, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _answer_cell(answer: dict[str, Any]) -> str:
    labels = answer.get("labels")
    return f"{', '.join(labels) if labels is not None else answer['label']} ({answer['score']:.3f})"


def html_page(report: dict[str, Any]) -> str:
    """The whole report (DiffResult.to_dict()) as one self-contained page: no script, no request; every
    string escaped, and a Content-Security-Policy that lets only its own style apply."""
    a, b, s, be = report["a"], report["b"], report["structure"], report["behaviour"]
    parts = [f"<h1>{html.escape(a['title'])} → {html.escape(b['title'])}</h1>",
             f"<p class=sub>A: {html.escape(a['file'])} · B: {html.escape(b['file'])}</p>"]
    if be is not None:
        verdict = ("<span class=ok>passed</span>" if report["passed"] else "<span class=bad>under the bar</span>")
        parts.append(f"<h2>Behaviour: agreement {be['agreement']:.4f} (--min-agreement {report['min_agreement']:g}) "
                     f"{verdict}</h2>")
        parts.append(f"<p>{be['n']} rows of {html.escape(be['data'])}, batch size {be['batch_size']}; "
                     f"{be['flipped']} flipped.</p>")
        measures = [["agreement", be["agreement"], "", ""], ["max |Δ logit|", be["max_abs_logit_diff"], "", ""],
                    ["mean |Δ logit|", be["mean_abs_logit_diff"], "", ""]]
        if be["metric"]:
            m = be["metric"]
            measures += [[m["title"], m["a"], m["b"], m["change"]], ["accuracy", m["acc"]["a"], m["acc"]["b"],
                                                                     m["acc"]["b"] - m["acc"]["a"]]]
        if be["mcnemar"]:
            mc = be["mcnemar"]
            measures.append(["exact McNemar p", mc["p_value"], f"A right, B wrong: {mc['a_right_b_wrong']}",
                             f"A wrong, B right: {mc['a_wrong_b_right']}"])
        parts.append(_table(["measure", "A", "B", "change"], measures))
        parts.append(_table(["side", "variant", "file", "provider", "seconds", "rows/s"],
                            [[side.upper(), r["variant"], r["file"], r["provider"], r["seconds"], r["rows_per_s"]]
                             for side, r in be["runs"].items()]))
        if be["flips"]:
            parts.append("<h3>Flipped rows</h3>" + _table(
                ["row", "text", "true label", "A", "B", "A's scores", "B's scores"],
                [[f["row"], " | ".join(f["text"]) if isinstance(f["text"], list) else f["text"], f["label"],
                  _answer_cell(f["a"]), _answer_cell(f["b"]), f["a"]["scores"], f["b"]["scores"]]
                 for f in be["flips"]]))
    parts.append("<h2>Structure</h2>")
    ident = s["identity"]
    rows = [["file sha256", ident["sha256"]["a"], ident["sha256"]["b"]],
            ["bytes", ident["bytes"]["a"], ident["bytes"]["b"]],
            ["IR version", ident["ir_version"]["a"], ident["ir_version"]["b"]],
            *[[f"opset {d}", v["a"], v["b"]] for d, v in ident["opsets"].items()],
            ["producer", ident["producer"]["a"], ident["producer"]["b"]],
            ["nodes", s["ops"]["nodes"]["a"], s["ops"]["nodes"]["b"]],
            *[[k, v["a"], v["b"]] for k, v in s["parameters"].items() if k != "by_dtype"]]
    parts.append(_table(["", "A", "B"], rows, [r[1] != r[2] for r in rows]))
    ops = s["ops"]
    changed_ops = sorted(set(ops["added"]) | set(ops["removed"]))
    parts.append("<h3>Op types</h3>" + (_table(["op", "A", "B", "change"], [
        [op, ops["a"].get(op, 0), ops["b"].get(op, 0), f"{ops['b'].get(op, 0) - ops['a'].get(op, 0):+d}"]
        for op in changed_ops]) if changed_ops else "<p>The same op types, the same counts.</p>"))
    w = s["weights"]
    parts.append(f"<h3>Weights</h3><p>{w['matched']} tensors matched by name and shape (A has {w['a']}, B has "
                 f"{w['b']}); {w['identical']} identical; {w['only_a']} only in A, {w['only_b']} only in B; "
                 f"{len(w['shape_changed'])} reshaped; {len(w['not_compared'])} of different kinds not compared.</p>")
    moved = [t for t in w["tensors"] if t["max_abs_diff"]]
    if moved:
        parts.append(_table(["tensor", "shape", "dtype", "max |Δ|", "relative"],
                            [[t["name"], t["shape"], f"{t['dtype']['a']} → {t['dtype']['b']}", t["max_abs_diff"],
                              t["relative"]] for t in moved]))
    for side in ("inputs", "outputs"):
        c = s["contract"][side]
        by_b = {t["name"]: t for t in c["b"]}
        moved_io = set(c["only_a"]) | set(c["only_b"]) | {ch["name"] for ch in c["changed"]}
        names = [t["name"] for t in c["a"]] + c["only_b"]
        by_a = {t["name"]: t for t in c["a"]}
        parts.append(f"<h3>{side.capitalize()}</h3>" + _table(
            ["", "A", "B"], [[n, by_a.get(n), by_b.get(n)] for n in names], [n in moved_io for n in names]))
    m = s["manifest"]
    fields = m["fields"]
    parts.append("<h3>Manifests</h3>" + _table(["field", "A", "B"], [[k, v["a"], v["b"]] for k, v in fields.items()],
                                               [not v["same"] for v in fields.values()]))
    if m["variants"]:
        parts.append("<h3>Variants and their gate figures</h3>" + _table(
            ["variant", "A", "B"], [[name, v["a"], v["b"]] for name, v in m["variants"].items()],
            [v["a"] != v["b"] for v in m["variants"].values()]))
    style = f"<style>{STYLE}</style>"
    csp = html.escape(content_security_policy(style))
    title = html.escape(f"diff {a['title']} → {b['title']}")
    return (f'<!doctype html><html lang=en><head><meta charset=utf-8><meta http-equiv="Content-Security-Policy" '
            f'content="{csp}"><title>{title} · onnxpack</title>{style}</head><body>{"".join(parts)}</body></html>\n')
