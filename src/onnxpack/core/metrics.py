"""Classification scores in numpy, for the stages that run without torch (optimize, bench).

Training logs the same scores through torchmetrics; a test holds the two to the same values.
"""

from __future__ import annotations

import numpy as np


def mcc(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Matthews correlation coefficient (Gorodkin's multiclass form; the usual one for two classes)."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(confusion, (np.asarray(labels), np.asarray(pred)), 1)
    t, p = confusion.sum(1), confusion.sum(0)  # true and predicted counts per class
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt(s * s - p @ p) * np.sqrt(s * s - t @ t)
    return float((c * s - t @ p) / denominator) if denominator else 0.0


def scores(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """{"mcc", "acc"} of predicted label ids against the true ones; for multi-label (2-D 0/1 rows)
    also "f1", the micro-F1 over every (row, label) decision, "mcc" over the same decisions and
    "acc" the share of rows whose whole label set is right."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.ndim == 2:
        tp = float((pred & labels).sum())
        predicted, actual = float(pred.sum()), float(labels.sum())
        f1 = 2 * tp / (predicted + actual) if predicted + actual else 1.0
        return {"mcc": mcc(pred.ravel(), labels.ravel(), 2), "acc": float((pred == labels).all(axis=1).mean()),
                "f1": f1}
    return {"mcc": mcc(pred, labels, num_classes), "acc": float((pred == labels).mean())}


METRIC_NAMES = {"mcc": "MCC", "f1": "micro-F1"}


def task_metric(multi_label: bool) -> str:
    """The score a task is judged by: micro-F1 for multi-label, MCC otherwise."""
    return "f1" if multi_label else "mcc"


def predictions(logits: np.ndarray, thresholds: list[float] | None) -> np.ndarray:
    """Label ids (argmax), or with per-label thresholds a 0/1 row per text (sigmoid >= threshold)."""
    if thresholds:
        return (1.0 / (1.0 + np.exp(-logits)) >= np.asarray(thresholds)).astype(np.int64)
    return logits.argmax(-1)
