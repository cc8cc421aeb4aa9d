"""PyTorch vs ONNX Runtime on every validation row: logits, labels, MCC on both sides."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from onnxpack.core.atomic import atomic_write_text
from onnxpack.core.config import VerifyConfig
from onnxpack.core.data import load_splits
from onnxpack.core.errors import CheckpointError, ParityError
from onnxpack.core.metrics import predictions, scores
from onnxpack.core.package import now
from onnxpack.runtime.feed import Text, check_row_kind
from onnxpack.runtime.monitor import reference_profile
from onnxpack.runtime.predictor import Predictor, serving_variant

from .export import LogitsModel
from .localize import localize
from .model import load_checkpoint


@dataclasses.dataclass
class ParityReport:
    n: int
    max_abs_diff: float
    max_rel_diff: float  # |onnx - torch| / max(|torch|, 1e-3), the worst logit
    agreement: float
    torch: dict[str, float]  # {"mcc", "acc"} of PyTorch's predictions
    onnx: dict[str, float]  # the same for ONNX Runtime's
    tokenizer_mismatches: int  # rows the package tokenizer encodes differently from the checkpoint's
    atol: float
    min_agreement: float
    passed: bool
    failures: list[str]
    provider: str
    # Where the worst batch diverges: {"first": {"module", "onnx_value", "max_abs_diff"} | None, "summary"};
    # run when max_abs_diff fails, or on request (--localize).
    localization: dict[str, Any] | None
    checkpoint: str
    data: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def verify(package_dir: str | Path, data: str | None = None, checkpoint: str | Path | None = None,
           config: VerifyConfig | None = None, json_out: str | Path | None = None,
           progress: Callable[[int], None] | None = None) -> ParityReport:
    """Compare the package with its source checkpoint on the whole validation split.

    Writes the report (to `json_out` and into the manifest's `parity`) even when it fails,
    then raises one ParityError naming every failed check.
    """
    config = config or VerifyConfig()
    config.validate()
    predictor = Predictor(package_dir, provider=config.provider, variant=config.variant)
    package = predictor.package
    checkpoint = checkpoint or package.manifest.source.get("path")
    if not checkpoint or not Path(checkpoint).exists():
        raise CheckpointError(f"the package's source checkpoint {checkpoint} is not there",
                              hint="pass --checkpoint PATH to the checkpoint it was exported from")
    model, hf_tokenizer, _ = load_checkpoint(checkpoint)
    splits = load_splits(data, need_train=False, labels=predictor.labels, multi_label=predictor.multi_label)
    check_row_kind(predictor.pairs, splits)
    run = _run_both(predictor, model, hf_tokenizer, splits.validation.texts, config.batch_size, progress)
    report = _report(predictor, run, np.array(splits.validation.labels), config, str(checkpoint), splits.source)
    if report.max_abs_diff > config.atol or config.localize:
        found = localize(LogitsModel(model, tuple(run.worst_feed)), package.variant_path(predictor.variant),
                         run.worst_feed, max(config.atol, 0.0))
        report.localization = {"first": dataclasses.asdict(found.first) if found.first else None,
                               "summary": found.describe()}
    report.failures = _failures(report, config)
    report.passed = not report.failures

    if json_out:
        atomic_write_text(Path(json_out), json.dumps(report.to_dict(), indent=2) + "\n")
    package.update_manifest(parity={k: v for k, v in report.to_dict().items() if k != "failures"},
                            reference=_reference(predictor, run.onnx_logits, splits.validation.texts, config,
                                                 splits.source))
    if not report.passed:
        raise ParityError(f"{package.root} fails verification on {report.n} rows: {'; '.join(report.failures)}",
                          report=report)
    return report


def _reference(predictor: Predictor, logits: np.ndarray, texts: list[Text], config: VerifyConfig,
               data: str) -> dict[str, Any]:
    """The reference profile `monitor` and the server compare live answers with: what the variant
    `serve` runs answers on the validation set (the verified variant's logits when it is that one)."""
    served = serving_variant(predictor.package, config.provider)
    if served != predictor.variant:
        with Predictor(predictor.package, provider=config.provider, variant=served) as other:
            logits = other.predict_logits(texts, config.batch_size)
    return reference_profile(predictor.package, texts, logits, served, data)


@dataclasses.dataclass
class _BothRuns:
    """Both engines' logits for every row, and what the report and localization need of the batches."""

    torch_logits: np.ndarray
    onnx_logits: np.ndarray
    tokenizer_mismatches: int
    worst_feed: dict[str, np.ndarray]  # the batch whose logits differ the most: where localize looks


def _run_both(predictor: Predictor, model: Any, hf_tokenizer: Any, texts: list[Text], batch_size: int,
              progress: Callable[[int], None] | None) -> _BothRuns:
    """Each batch through ONNX Runtime and PyTorch on the same feed, and through both tokenizers."""
    torch_logits = np.zeros((len(texts), len(predictor.labels)), dtype=np.float32)
    onnx_logits = np.zeros_like(torch_logits)
    mismatches, worst_diff, worst_feed = 0, -1.0, None
    for batch, feed in predictor.encoded_batches(texts, batch_size):
        onnx_logits[batch] = predictor.run(feed)
        with torch.inference_mode():
            torch_logits[batch] = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        if (batch_diff := float(np.abs(onnx_logits[batch] - torch_logits[batch]).max())) > worst_diff:
            worst_diff, worst_feed = batch_diff, feed
        mismatches += _tokenizer_mismatches(predictor, hf_tokenizer, [texts[i] for i in batch], feed)
        if progress:
            progress(len(batch))
    return _BothRuns(torch_logits, onnx_logits, mismatches, worst_feed)


def _tokenizer_mismatches(predictor: Predictor, hf_tokenizer: Any, texts: list[Text],
                          feed: dict[str, np.ndarray]) -> int:
    """Rows of one batch whose token ids (padding aside) differ from the checkpoint's tokenizer's."""
    if predictor.pairs:
        reference = hf_tokenizer([a for a, _ in texts], [b for _, b in texts], truncation=True,
                                 max_length=predictor.max_length)["input_ids"]
    else:
        reference = hf_tokenizer(texts, truncation=True, max_length=predictor.max_length)["input_ids"]
    return sum(ref != list(ids[:int(mask.sum())])
               for ref, ids, mask in zip(reference, feed["input_ids"], feed["attention_mask"]))


def _report(predictor: Predictor, run: _BothRuns, labels: np.ndarray, config: VerifyConfig, checkpoint: str,
            data: str) -> ParityReport:
    """The differences and both sides' scores; not yet judged (passed, failures, localization)."""
    torch_logits, onnx_logits = run.torch_logits, run.onnx_logits
    diff = np.abs(onnx_logits - torch_logits)
    thresholds = predictor.thresholds if predictor.multi_label else None
    torch_pred, onnx_pred = predictions(torch_logits, thresholds), predictions(onnx_logits, thresholds)
    num_classes = len(predictor.labels)
    return ParityReport(
        n=len(labels), max_abs_diff=float(diff.max()),
        max_rel_diff=float((diff / np.maximum(np.abs(torch_logits), 1e-3)).max()),
        agreement=float((torch_pred == onnx_pred).reshape(len(labels), -1).all(axis=1).mean()),
        torch=scores(torch_pred, labels, num_classes), onnx=scores(onnx_pred, labels, num_classes),
        tokenizer_mismatches=int(run.tokenizer_mismatches), atol=config.atol, min_agreement=config.min_agreement,
        passed=True, failures=[], provider=predictor.providers[0], localization=None, checkpoint=checkpoint,
        data=data, at=now())


def _failures(report: ParityReport, config: VerifyConfig) -> list[str]:
    """Every check the report fails, each as one clause of the error."""
    failures = []
    if report.max_abs_diff > config.atol:
        failures.append(f"max_abs_diff {report.max_abs_diff:.2e} > atol {config.atol:g}; "
                        f"{report.localization['summary']}")
    if report.agreement < config.min_agreement:
        failures.append(f"agreement {report.agreement:.4f} < {config.min_agreement:g}")
    if report.tokenizer_mismatches:
        failures.append(f"the package tokenizer encodes {report.tokenizer_mismatches} rows differently "
                        "from the checkpoint's")
    return failures
