"""The server's Prometheus metrics, one set per server, shared by every protocol."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from onnxpack.runtime.monitor import Profile, answers


class Metrics:
    """Counts, latencies, batch sizes and queue depths of one server."""

    def __init__(self) -> None:
        # A registry per app, so several apps in one process (tests) keep separate counts.
        self.registry = CollectorRegistry()
        self.requests = Counter("onnxpack_requests", "Requests answered, by route (HTTP path template or gRPC method) and status",
                                ["route", "status"], registry=self.registry)
        self.errors = Counter("onnxpack_request_errors", "Requests answered with an error (HTTP 4xx or 5xx, or a gRPC status other than OK)",
                              ["route", "status"], registry=self.registry)
        self.latency = Histogram("onnxpack_request_latency_seconds", "Time from request to response, by route",
                                 ["route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch_size = Histogram("onnxpack_batch_size", "Rows per model call", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.inference = Histogram("onnxpack_inference_seconds", "Time of one model call (tokenizing excluded)",
                                   registry=self.registry,
                                   buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
        self.queue_depth = Gauge("onnxpack_queue_depth", "Rows waiting for the model", registry=self.registry)
        self.waiting = Gauge("onnxpack_requests_waiting", "Requests waiting for a slot (over --max-concurrency)",
                             registry=self.registry)
        self.in_progress = Gauge("onnxpack_requests_in_progress", "Inference requests holding a slot",
                                 registry=self.registry)
        self.predictions: PredictionMetrics | None = None  # the answers' quantities (serve --prediction-metrics)


    def note(self, route: str, status: str, error: bool, seconds: float) -> None:
        """One answered request: counted by route and status, and timed."""
        self.requests.labels(route, status).inc()
        if error:
            self.errors.labels(route, status).inc()
        self.latency.labels(route).observe(seconds)


class PredictionMetrics:
    """What the server answers, as `onnxpack monitor` reads it from a log: counts per predicted label,
    the predicted label's score and the texts' lengths as histograms with the package's reference
    profile's bucket edges, and unknown tokens, tokens and truncated texts as counters.

    Cheap on the hot path: a model call only hands its logits and its texts' quantities over (a list
    append under a lock); they are bucketed with numpy FLUSH_ROWS texts at a time, or when /metrics
    is read, and written out by a custom collector (prometheus_client's Histogram would take a
    Python call and a lock per text and per metric)."""

    FLUSH_ROWS = 4096

    def __init__(self, profile: Profile, multi_label: bool, registry: CollectorRegistry) -> None:
        self._profile = profile  # empty; the edges are the reference's (or the defaults)
        self.multi_label = multi_label
        self._lock = threading.Lock()
        self._pending: list[tuple[np.ndarray, list[tuple[int, int, bool]]]] = []
        self._pending_rows = 0
        registry.register(self)

    def observe(self, logits: np.ndarray, stats: list[tuple[int, int, bool]]) -> None:
        """Answers to texts: their logits, and per text (tokens, unknown tokens, truncated) as
        runtime.monitor.text_quantities counts them."""
        with self._lock:
            self._pending.append((logits, stats))
            self._pending_rows += len(stats)
            if self._pending_rows >= self.FLUSH_ROWS:
                self._flush()

    def profile(self) -> Profile:
        """Every answer so far, bucketed."""
        with self._lock:
            self._flush()
            return self._profile

    def _flush(self) -> None:
        if not self._pending:
            return
        logits = np.concatenate([logits for logits, _ in self._pending])
        table = np.array([row for _, stats in self._pending for row in stats], dtype=np.int64).reshape(-1, 3)
        self._pending.clear()
        self._pending_rows = 0
        label, score = answers(logits, self.multi_label)
        self._profile.add(label, score, table[:, 0], table[:, 1], table[:, 2].astype(bool))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._flush()
            p = self._profile
            labels, label_counts = p.labels, p.label_counts.tolist()
            score_counts, score_sums = p.score_counts.cumsum(axis=1).tolist(), p.score_sums.tolist()
            length_counts = p.length_counts.cumsum().tolist()
            tokens, unknown, truncated = p.tokens, p.unknown_tokens, p.truncated
        predictions = CounterMetricFamily("onnxpack_predictions", "Texts answered, by predicted label",
                                          labels=["label"])
        scores = HistogramMetricFamily("onnxpack_prediction_score", "The predicted label's score, by label "
                                       "(buckets: the package's reference profile's)", labels=["label"])
        for name, count, cumulative, total in zip(labels, label_counts, score_counts, score_sums):
            predictions.add_metric([name], count)
            scores.add_metric([name], _buckets(p.score_edges, cumulative), total)
        lengths = HistogramMetricFamily("onnxpack_text_tokens", "Tokens per text as the model reads it (its first "
                                        "window, special tokens included; buckets: the reference profile's)")
        lengths.add_metric([], _buckets(p.length_edges, length_counts), tokens)
        yield predictions
        yield scores
        yield lengths
        yield CounterMetricFamily("onnxpack_tokens", "Tokens read (the sum of onnxpack_text_tokens)", value=tokens)
        yield CounterMetricFamily("onnxpack_unknown_tokens", "Tokens that are the tokenizer's unknown token",
                                  value=unknown)
        yield CounterMetricFamily("onnxpack_truncated_texts", "Texts longer than max_length tokens (cut under "
                                  "truncate, read in more than one window under chunk)", value=truncated)


def _buckets(edges: list[float], cumulative: list[int]) -> list[tuple[str, int]]:
    return [(f"{edge:g}", count) for edge, count in zip(edges, cumulative)] + [("+Inf", cumulative[-1])]
