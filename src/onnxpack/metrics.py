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
    """{"mcc", "acc"} of predicted label ids against the true ones."""
    return {"mcc": mcc(pred, labels, num_classes), "acc": float((np.asarray(pred) == np.asarray(labels)).mean())}
