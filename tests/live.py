"""Live servers for the tests: a real uvicorn server on a free loopback port, and how to talk to it.
Shared by the serve, gRPC, task and format tests."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn

from onnxpack.core.config import ServeConfig
from onnxpack.runtime.predictor import Predictor
from onnxpack.serve import uvicorn_config

HOST = "127.0.0.1"
# A server without its gRPC service: ServeConfig serves gRPC on 8001 by default, as the CLI does, and
# tests that run servers side by side must not all take that port.
HTTP_ONLY = ServeConfig(grpc_port=0)
TEXTS = ["the book was written by john", "go", "him saw she",
         "the professor who the students that the dean hired admired resigned after the long meeting"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll a readiness condition (a health endpoint, a metric), never longer than `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/v2/health/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def running(app, wait_ready: bool = True) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yields the base URL."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    server = uvicorn.Server(uvicorn_config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://{HOST}:{sock.getsockname()[1]}"
    try:
        wait_until(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        if wait_ready:
            wait_until(lambda: ready(base), what="the model to load")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def metric(base: str, name: str, **labels: str) -> float:
    """One sample from /metrics (0 when absent)."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        key, _, value = line.rpartition(" ")
        if not line.startswith("#") and _sorted_labels(key) == want:
            return float(value)
    return 0.0


def _sorted_labels(key: str) -> str:
    if "{" not in key:
        return key
    name, _, rest = key.partition("{")
    return name + "{" + ",".join(sorted(rest.rstrip("}").split(","))) + "}"


def post(base: str, path: str, body=None, raw: bytes | None = None, headers: dict | None = None) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{base}{path}", content=content, timeout=30,
                      headers={"Content-Type": "application/json", **(headers or {})})


class Gate:
    """Holds the model's calls until opened; `entered` tells a call is waiting."""

    def __init__(self, open_: bool) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        if open_:
            self.opened.set()

    def predictor_class(self) -> type[Predictor]:
        gate = self

        class GatedPredictor(Predictor):
            def run(self, feed):
                gate.entered.set()
                assert gate.opened.wait(30), "the test never opened the gate"
                return super().run(feed)

        return GatedPredictor
