"""The int8 cascade's graph and its fitted margin, on hand-made graphs whose answers numpy can check."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpack.runtime import cascade

LABELS = 3
SEQ = 5


def _linear_classifier(weights: np.ndarray, name: str) -> onnx.ModelProto:
    """logits = float(input_ids) @ weights, masked by attention_mask: a stand-in for a classifier graph
    (the int8 one and its float partner differ only in their weights)."""
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["kept"]),
        helper.make_node("Cast", ["kept"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", weights.shape[1]])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


@pytest.fixture
def graphs():
    rng = np.random.default_rng(0)
    exact = rng.normal(size=(SEQ, LABELS)) / 4
    rough = exact + rng.normal(size=exact.shape) / 8  # the "int8" graph: close, not equal
    return _linear_classifier(rough, "int8"), _linear_classifier(exact, "float")


def _feed(rows: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 4, size=(rows, SEQ))
    mask = np.ones_like(ids)
    mask[rows // 2:, SEQ - 2:] = 0  # some padded rows
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("tau", [0.0, 0.05, 0.2, cascade.TAU_MAX])
def test_unsure_rows_get_the_float_graphs_logits_and_the_rest_keep_int8s(graphs, tau):
    int8, fallback = graphs
    feed = _feed(40)
    rough, exact = _run(int8, feed), _run(fallback, feed)
    got = _run(cascade.cascade_graph(int8, fallback, tau), feed)
    unsure = cascade.margins(rough) < tau
    assert 0 < unsure.sum() < len(unsure) or tau in (0.0, cascade.TAU_MAX)
    np.testing.assert_array_equal(got[unsure], exact[unsure])
    np.testing.assert_array_equal(got[~unsure], rough[~unsure])


def test_the_cascade_answers_a_row_alone_as_it_does_in_a_batch(graphs):
    model = cascade.cascade_graph(*graphs, 0.1)
    feed = _feed(16)
    together = _run(model, feed)
    alone = np.concatenate([_run(model, {k: v[i:i + 1] for k, v in feed.items()}) for i in range(16)])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_multi_label_margin_is_the_distance_to_the_nearest_threshold(graphs):
    int8, fallback = graphs
    thresholds = [0.5, 0.3, 0.7]
    feed = _feed(40)
    rough, exact = _run(int8, feed), _run(fallback, feed)
    margin = cascade.margins(rough, thresholds)
    p = 1 / (1 + np.exp(-rough))
    np.testing.assert_allclose(margin, np.abs(p - thresholds).min(axis=1), rtol=1e-6)
    got = _run(cascade.cascade_graph(int8, fallback, 0.1, thresholds), feed)
    unsure = margin < 0.1
    assert 0 < unsure.sum() < len(unsure)
    np.testing.assert_array_equal(got[unsure], exact[unsure])
    np.testing.assert_array_equal(got[~unsure], rough[~unsure])


def test_two_label_margin_is_the_distance_of_the_score_from_one_half():
    logits = np.array([[0.0, 0.0], [0.0, 2.0], [3.0, -1.0]], dtype=np.float32)
    p = 1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0])))
    np.testing.assert_allclose(cascade.margins(logits), np.abs(p - 0.5), rtol=1e-6)


def test_fit_tau_sends_back_just_enough_flips_to_reach_the_target():
    rng = np.random.default_rng(3)
    exact = rng.normal(size=(1000, 2)).astype(np.float32)
    rough = exact + rng.normal(scale=0.3, size=exact.shape).astype(np.float32)
    flipped = exact.argmax(1) != rough.argmax(1)
    assert flipped.sum() > 20
    for target in (1.0, 0.999, 0.99):
        tau = cascade.fit_tau(exact, rough, target)
        kept_flips = flipped & (cascade.margins(rough) >= tau)
        assert 1 - kept_flips.mean() >= target  # reaches the target ...
        smaller = cascade.fit_tau(exact, rough, target) * 0.98  # ... and a smaller tau would not
        assert 1 - (flipped & (cascade.margins(rough) >= smaller)).mean() < target or tau == 0
    assert cascade.fit_tau(exact, exact, 1.0) == 0.0  # no flips: nothing needs to go back
    share = cascade.fallback_share(rough, cascade.fit_tau(exact, rough, 1.0))
    assert flipped.mean() < share < 1
