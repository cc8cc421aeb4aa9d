"""What a server is, whatever the protocol: its package and limits, the model's lifecycle
(load in the background, warm up, drain on shutdown) and the admission of inference requests.

`http/` and `grpc_api` are two front ends on one `Service`: the same batcher, the same
limits and the same metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

from onnxpack.core import untrusted
from onnxpack.core.config import ServeConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import Package
from onnxpack.runtime.feed import vocab_size
from onnxpack.runtime.predictor import Predictor, resolve_providers, serving_variant

from .admission import Admission
from .batcher import MicroBatcher
from .metrics import Metrics

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1  # what a refused request is told to wait


class Unavailable(Exception):
    """The model is loading, failed to load, or every slot and queue place is taken: retry later."""


class UnknownModel(Exception):
    """A request named a model this server does not serve."""


class Frontend(Protocol):
    """A protocol served beside HTTP (gRPC): started once the event loop runs, stopped before the model."""

    async def start(self) -> None: ...

    async def stop(self, grace_s: float) -> None: ...


class Service:
    """One package served: its limits, the metrics and (once loaded) the predictor and batcher."""

    def __init__(self, package_dir: str | Path | Package, config: ServeConfig | None = None) -> None:
        """Opens the package and checks the options and the graph now, so mistakes show as one error
        line before anything listens; a graph that is malformed, hostile, or cannot finish a first run
        within its time limit is refused here (untrusted.py)."""
        config = config or ServeConfig()
        config.validate()
        self.package = package_dir if isinstance(package_dir, Package) else Package.open(package_dir)
        resolve_providers(config.provider)
        self.config = dataclasses.replace(config, variant=config.variant or serving_variant(self.package, config.provider))
        untrusted.trust(self.package.variant_path(self.config.variant), self.package)
        self.manifest = self.package.manifest
        self.metrics = Metrics()
        self.admission: Admission | None = None  # made on the event loop (start)
        self.vocab_size = vocab_size(self.package)
        self.predictor: Predictor | None = None
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.failed: str | None = None
        self.on_failure: Callable[[], None] | None = None  # set by the runner: stop the server
        self.frontends: list[Frontend] = []

    # ---- lifecycle ----

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """On the server's event loop: load the model in the background (liveness answers meanwhile),
        start the other front ends; at the end stop them, then drain the batcher."""
        self.admission = Admission(self.config.max_concurrency, self.config.max_queue, self.metrics.waiting,
                                   self.metrics.in_progress)
        loading = asyncio.create_task(asyncio.to_thread(self.load))
        started: list[Frontend] = []
        try:
            for frontend in self.frontends:
                try:
                    await frontend.start()
                except OnnxpackError as e:  # its port is taken: the server ends with this one line (see run)
                    self._fail(e.message)
                    break
                started.append(frontend)
            yield
        finally:
            # HTTP calls this after its last in-flight request is answered (graceful shutdown).
            for frontend in reversed(started):
                await frontend.stop(self.config.grace_s)
            await loading
            await asyncio.to_thread(self.close)

    def load(self) -> None:
        """Create the session and run one warm-up inference (ONNX Runtime allocates its buffers on
        the first run); only then is the server ready. Runs in a thread, so `live` answers meanwhile."""
        try:
            config = self.config
            threads = config.threads or (max(1, (os.cpu_count() or 1) // config.instances) if config.instances > 1
                                         else None)
            predictor = Predictor(self.package, provider=config.provider, threads=threads, variant=config.variant)
            predictor.predict_logits([("warm-up", "warm-up") if predictor.pairs else "warm-up"])
            self.predictor = predictor
            self.batcher = MicroBatcher(predictor, config.max_batch, config.max_delay_ms / 1000, self.metrics,
                                        config.instances)
            self.ready = True
            log.info("serving %s (%s variant, %s, %d instance(s) of %s thread(s))", self.manifest.name,
                     self.predictor.variant, self.predictor.providers[0], config.instances, threads or "all")
        except Exception as e:  # noqa: BLE001 -- the server then exits with this one line (see run)
            self._fail(e.message if isinstance(e, OnnxpackError) else f"{type(e).__name__}: {e}")

    def _fail(self, message: str) -> None:
        self.failed = message
        if self.on_failure:
            self.on_failure()

    def close(self) -> None:
        self.ready = False
        if self.batcher:
            self.batcher.close()
        if self.predictor:
            self.predictor.close()

    # ---- requests ----

    def check_model(self, name: str) -> None:
        if name != self.manifest.name:
            raise UnknownModel(f"unknown model {name!r}; this server serves {self.manifest.name!r}")

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """An inference request's slot: refused while loading; over the concurrency cap it queues,
        and over the queue it is refused."""
        if not self.ready:
            raise Unavailable("the model is not ready yet" if not self.failed else "the model failed to load")
        if not await self.admission.enter():
            raise Unavailable(f"busy: {self.config.max_concurrency} requests in progress and "
                              f"{self.config.max_queue} waiting")
        try:
            yield
        finally:
            self.admission.leave()


# ---- watchdogs: a stuck model call cannot be interrupted, so the process exits with one line ----

def exit_unless_ready(service: Service, seconds: float) -> None:
    """A warm-up (the first inference) over the first-run time limit ends the server."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if service.ready or service.failed:
            return
        time.sleep(0.2)
    print(f"error: the warm-up inference of {service.package.root} did not finish within {seconds:.0f} s",
          file=sys.stderr)
    os._exit(1)


def exit_after(seconds: float) -> None:
    """Started at SIGTERM: a shutdown that outlasts `seconds` (a model call did not return) ends the process."""
    time.sleep(seconds)
    print(f"error: shutdown took over {seconds:.0f} s (a model call did not return); exiting", file=sys.stderr)
    os._exit(1)
