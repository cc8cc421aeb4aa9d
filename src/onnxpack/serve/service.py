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
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from onnxpack.core import untrusted
from onnxpack.core.config import LONG_TEXT_MODES, ServeConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.families import ATTENTION_MASK
from onnxpack.core.package import MULTI_LABEL, Package
from onnxpack.runtime.feed import (
    Text,
    chunking_tokenizer,
    default_stride,
    encode_windows,
    vocab_size,
)
from onnxpack.runtime import explain as occlusion
from onnxpack.runtime.monitor import TextQuantities, default_profile, unknown_token_id, window_quantities
from onnxpack.runtime.predictor import Predictor, resolve_providers, serving_variant
from onnxpack.runtime.scores import aggregate_windows

from .admission import Admission
from .batcher import MicroBatcher, Stats
from .metrics import Metrics, PredictionMetrics
from .prediction_log import PredictionLog

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1  # what a refused request is told to wait
# Under chunk a text may have max_windows x max_length x this many characters. The window count is the
# real limit; this one only bounds the tokenizer's work before windows can be counted, so it must let
# through any text that fits in max_windows windows: English runs at about 4 to 5 characters a WordPiece
# or BPE token (its space included), and 10 leaves room for long rare words, numbers and runs of spaces.
# (A longer run per token is possible, a 100-letter word read as one [UNK], but no real text is made of them.)
CHARS_PER_TOKEN = 10


class Unavailable(Exception):
    """The model is loading, failed to load, or every slot and queue place is taken: retry later."""


class UnknownModel(Exception):
    """A request named a model this server does not serve."""


@dataclasses.dataclass
class Answer:
    """The model's answer to one request, whatever the protocol."""

    logits: np.ndarray  # per text (or token row)
    truncated: list[int]  # texts cut to max_length (truncate only)
    windows: list[int] | None = None  # under chunk: the windows each text was read in
    stats: list[Stats] = dataclasses.field(default_factory=list)  # per text: (tokens, unknown tokens, truncated)


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
        max_length = self.manifest.max_length
        stride = default_stride(max_length) if self.config.stride is None else self.config.stride
        # Read once, and checked now (a stride too wide for the window is one line before anything listens).
        self.chunker = chunking_tokenizer(self.package.tokenizer_path, max_length, self.manifest.pad_token_id,
                                          stride, self.manifest.pairs)
        self.max_chars = {"truncate": self.config.max_chars,
                          "chunk": self.config.max_windows * max_length * CHARS_PER_TOKEN}
        self.metrics = Metrics()
        multi_label = self.manifest.problem_type == MULTI_LABEL
        if self.config.prediction_metrics:  # bucketed as the reference profile (the defaults without one)
            self.metrics.predictions = PredictionMetrics(default_profile(self.package), multi_label,
                                                         self.metrics.registry)
        # A folder it cannot write to is refused here, in one line, before anything listens.
        self.prediction_log = (PredictionLog(self.config.log_predictions, self.manifest.labels, multi_label,
                                             self.config.log_texts, int(self.config.log_max_mb * 1_000_000),
                                             self.config.log_max_age_s, self.metrics.registry)
                               if self.config.log_predictions else None)
        self.unk_id = unknown_token_id(self.chunker)
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
        if self.prediction_log:
            self.prediction_log.start()
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
        """After the last request: the batcher answers what is queued, then the prediction log writes
        every answer made and puts its last file in place."""
        self.ready = False
        if self.batcher:
            self.batcher.close()
        if self.predictor:
            self.predictor.close()
        if self.prediction_log:
            self.prediction_log.close()

    # ---- requests ----

    def check_model(self, name: str) -> None:
        if name != self.manifest.name:
            raise UnknownModel(f"unknown model {name!r}; this server serves {self.manifest.name!r}")

    def long_text(self, value: Any, name: str = "long_text") -> str:
        """A request's long_text (None: the server's default), checked."""
        if value is None:
            return self.config.long_text
        if value not in LONG_TEXT_MODES:
            raise OnnxpackError(f"{name} must be {' or '.join(LONG_TEXT_MODES)}, got {value!r:.40}")
        return value

    def check_chars(self, texts: Sequence[Text], long_text: str, root: str) -> None:
        """Every text (each text of a pair) within long_text's character limit; `root` names them (texts[3])."""
        limit = self.max_chars[long_text]
        for i, text in enumerate(texts):
            parts = text if isinstance(text, (tuple, list)) else (text,)
            for j, part in enumerate(parts):
                if len(part) <= limit:
                    continue
                where = f"{root}[{i}]" + (f"[{j}]" if len(parts) > 1 else "")
                if long_text == "chunk":
                    raise OnnxpackError(f"{where}: at most {limit} characters per text under long_text chunk, got "
                                        f"{len(part)} (--max-windows {self.config.max_windows} windows of "
                                        f"{self.manifest.max_length} tokens, {CHARS_PER_TOKEN} characters a token)")
                raise OnnxpackError(f"{where}: at most {limit} characters per text, got {len(part)} (long_text chunk "
                                    f"takes up to {self.max_chars['chunk']})")

    async def infer(self, long_text: str, texts: Sequence[Text] | None = None,
                    tokens: dict[str, np.ndarray] | None = None) -> Answer:
        """Logits for texts (or pairs), or for token rows (read as they are, one window each).

        chunk: the texts are tokenized into windows off the event loop and counted against
        max_windows before any model work; the windows go through the one batcher as token rows,
        so windows of different requests share model calls; a text's logits are then the mean (or
        max) of its windows'. A text of one window gets the logits truncate gives it."""
        if long_text == "chunk" and texts is not None:
            rows, owner, quantities = await asyncio.to_thread(self._windows, texts)
            window_logits, *_ = await self.batcher.infer(rows=rows)
            logits, windows = aggregate_windows(window_logits, owner, len(texts), self.config.aggregate)
            answer = Answer(logits, [], windows.tolist(), quantities.rows())
            if self.metrics.predictions is not None:
                self.metrics.predictions.observe(logits, answer.stats)
        else:
            logits, truncated, stats = await self.batcher.infer(texts=texts, tokens=tokens, observe=True)
            answer = Answer(logits, truncated, [1] * len(logits) if long_text == "chunk" else None, stats)
        if self.prediction_log:
            self.prediction_log.append(texts, answer.logits, answer.stats, answer.windows)
        return answer

    async def explain(self, long_text: str, texts: Sequence[Text]) -> list[dict[str, Any]]:
        """`predictor.explain`'s answers, its occlusion rows run through the one batcher (so they share
        model calls with other requests). The rows are planned off the event loop and counted first:
        over max_words words (or, under chunk, max_windows windows) per request is one line."""
        plans = await asyncio.to_thread(self._occlusions, long_text, texts)
        logits, *_ = await self.batcher.infer(rows=[row for plan in plans for row in plan.rows])
        answers, at = [], 0
        for plan in plans:
            answers.append(occlusion.explanation(self.predictor, plan, logits[at:at + len(plan.rows)],
                                               self.config.aggregate))
            at += len(plan.rows)
        return answers

    def _occlusions(self, long_text: str, texts: Sequence[Text]) -> list[occlusion.Occlusion]:
        plans = occlusion.plan(self.predictor, texts, long_text, self.config.stride, self.config.max_words)
        words = sum(len(set(plan.row_word[plan.row_word >= 0].tolist())) for plan in plans)
        if words > self.config.max_words:
            raise OnnxpackError(f"this request has {words} words to explain; the server explains at most "
                                f"{self.config.max_words} per request (--max-words)",
                                hint="send fewer or shorter texts per request")
        if long_text == "chunk":
            self._check_windows(sum(plan.windows for plan in plans))
        return plans

    def _check_windows(self, count: int) -> None:
        if count > self.config.max_windows:
            raise OnnxpackError(f"this request makes {count} windows of {self.manifest.max_length} tokens "
                                f"under long_text chunk; the server takes at most {self.config.max_windows} per "
                                "request (--max-windows)", hint="send fewer or shorter texts per request")

    def _windows(self, texts: Sequence[Text]) -> tuple[list[dict[str, np.ndarray]], np.ndarray, TextQuantities]:
        """Every window of every text as an unpadded token row, the text of each, and the texts'
        quantities; OnnxpackError when the request makes more than max_windows. (The body limit
        bounds the tokenizer's work.)"""
        names = self.predictor.input_names
        feed, owner = encode_windows(self.chunker, texts, names, self.manifest.pad_token_id)
        self._check_windows(len(owner))
        lengths = feed[ATTENTION_MASK].sum(axis=1)
        rows = [{name: feed[name][k, :lengths[k]] for name in names} for k in range(len(owner))]
        return rows, owner, window_quantities(feed, owner, len(texts), self.unk_id)

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
