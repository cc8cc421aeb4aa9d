"""The server's Prometheus metrics, one set per server, shared by every protocol."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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


    def note(self, route: str, status: str, error: bool, seconds: float) -> None:
        """One answered request: counted by route and status, and timed."""
        self.requests.labels(route, status).inc()
        if error:
            self.errors.labels(route, status).inc()
        self.latency.labels(route).observe(seconds)
