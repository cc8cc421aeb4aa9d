"""Logits into scores: softmax for one label per text, sigmoid for multi-label, and the logits of a
long text's windows into the text's."""

from __future__ import annotations

import numpy as np


def aggregate_windows(window_logits: np.ndarray, owner: np.ndarray, count: int, how: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(logits per text, windows per text) from the logits of windows, `owner[i]` the text of window i:
    the mean or the max of a text's windows' logits, per label."""
    windows = np.bincount(owner, minlength=count)
    if how == "max":
        logits = np.full((count, window_logits.shape[1]), -np.inf, dtype=np.float32)
        np.maximum.at(logits, owner, window_logits)
    else:
        logits = np.zeros((count, window_logits.shape[1]), dtype=np.float32)
        np.add.at(logits, owner, window_logits)
        logits /= windows[:, None].astype(np.float32)
    return logits, windows


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)
