"""metrics.py: the numpy MCC/accuracy that optimize and bench use equal torchmetrics' values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional import accuracy, matthews_corrcoef

from onnxpack.core.metrics import mcc, scores


@pytest.mark.parametrize("num_classes", [2, 3])
def test_matches_torchmetrics(num_classes):
    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, num_classes, 400)
    pred = np.where(rng.random(400) < 0.6, labels, rng.integers(0, num_classes, 400))
    task = "binary" if num_classes == 2 else "multiclass"
    expected_mcc = float(matthews_corrcoef(torch.tensor(pred), torch.tensor(labels), task=task, num_classes=num_classes))
    expected_acc = float(accuracy(torch.tensor(pred), torch.tensor(labels), task=task, num_classes=num_classes))
    got = scores(pred, labels, num_classes)
    assert got["mcc"] == pytest.approx(expected_mcc, abs=1e-6)
    assert got["acc"] == pytest.approx(expected_acc, abs=1e-6)


def test_extremes():
    labels = np.array([0, 1, 1, 0, 1])
    assert mcc(labels, labels, 2) == pytest.approx(1.0)
    assert mcc(1 - labels, labels, 2) == pytest.approx(-1.0)
    assert mcc(np.ones(5, dtype=int), labels, 2) == 0.0  # one class predicted: undefined, reported as 0
