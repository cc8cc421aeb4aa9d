"""The micro-batcher: rows from many concurrent requests, few model calls, on one worker thread.

Every protocol (HTTP, gRPC) hands its rows to the same `MicroBatcher`; the model never runs on
the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Sequence

import numpy as np

from onnxpack.runtime.feed import Text, columns, pad_rows
from onnxpack.runtime.monitor import text_quantities, token_quantities, unknown_token_id
from onnxpack.runtime.predictor import Predictor

from .metrics import Metrics

log = logging.getLogger(__name__)

# A model call's fixed cost, in padded tokens: splitting a gathered batch into one more length group
# pays off when it saves more padding than this. Padding is what costs: on MiniLM-L6 (2 CPU cores,
# 32 CoLA texts per batch) one padded batch ran 2.6x slower than length groups, and any value from
# 4 to 16 ran equally fast.
CALL_COST_TOKENS = 8


# Per text row: (tokens read, unknown tokens among them, truncated), runtime.monitor's quantities
Stats = tuple[int, int, bool]


class _Job:
    """One request's rows; the worker fills `logits` and resolves `future` when its last row is done."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rows: int, labels: int, observe: bool) -> None:
        self.loop = loop
        self.future: asyncio.Future[tuple[np.ndarray, list[int], list[Stats]]] = loop.create_future()
        self.logits = np.empty((rows, labels), dtype=np.float32)
        self.truncated: list[int] = []
        self.observe = observe  # texts answered (counted on /metrics), not windows or explain's rows
        self.stats: list[Stats] = [(0, 0, False)] * rows if observe else []
        self.remaining = rows


@dataclasses.dataclass
class _Row:
    job: _Job
    index: int
    text: Text | None = None  # a text (or pair) to tokenize, or already tokenized rows
    tokens: dict[str, np.ndarray] | None = None  # input name -> this row's ids, unpadded
    stats: Stats | None = None  # an observed row's quantities, once known
    queued_at: float = dataclasses.field(default_factory=time.monotonic)


class MicroBatcher:
    """Gathers rows from concurrent requests into few model calls, run by one or more model instances.

    A gathering thread takes up to `max_batch` rows, holding the batch open for more until the
    oldest row has waited `max_delay_s` (rows that queued while the model was busy have waited
    long enough already, so under load nothing idles). It tokenizes the texts among them in one
    call, splits the rows into groups of similar length (`length_groups`) and queues the groups.
    Each instance (a thread calling the one session) takes the next group,
    pads it to its own longest row and runs it. The gatherer takes the next batch once every
    queued group is taken and an instance is free.
    """

    def __init__(self, predictor: Predictor, max_batch: int, max_delay_s: float, metrics: Metrics,
                 instances: int = 1) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.metrics = metrics
        self.unk_id = unknown_token_id(predictor.tokenizer)
        self._rows: collections.deque[_Row] = collections.deque()
        self._groups: collections.deque[list[_Row]] = collections.deque()  # prepared, not yet taken by an instance
        lock = threading.Lock()
        self._gatherer_wake = threading.Condition(lock)  # rows arrived, an instance is free, or stopping
        self._instance_wake = threading.Condition(lock)  # groups are ready, or stopping
        self._finishing = threading.Lock()  # instances answer rows of the same job
        self._stopping = False
        self._gathered_all = False
        self._idle = 0  # instances waiting for a group
        self._threads = [threading.Thread(target=self._gather, name="onnxpack-batcher", daemon=True)]
        # One session, run from several threads at once: ONNX Runtime allows it, and the weights stay shared.
        self._threads += [threading.Thread(target=self._call, name=f"onnxpack-instance-{i}", daemon=True)
                          for i in range(instances)]
        for thread in self._threads:
            thread.start()

    async def infer(self, texts: Sequence[Text] | None = None, tokens: dict[str, np.ndarray] | None = None,
                    rows: Sequence[dict[str, np.ndarray]] | None = None,
                    observe: bool = False) -> tuple[np.ndarray, list[int], list[Stats]]:
        """Logits for `texts` (or pairs), for token inputs (`{input name: batch × sequence}`), or for
        token `rows` (each `{input name: its ids}`, unpadded: chunking's windows), the indices of
        texts that were truncated to the package's max_length, and, with `observe` (texts or token
        inputs answered as they are), each text's quantities, which the model calls also count on
        /metrics."""
        observe = observe and rows is None
        stats: list[Stats] = []
        if tokens is not None:
            rows = [{name: v[i] for name, v in tokens.items()} for i in range(len(tokens["input_ids"]))]
            if observe:
                stats = token_quantities(tokens, self.unk_id).rows()
        n = len(texts) if texts is not None else len(rows)
        job = _Job(asyncio.get_running_loop(), n, len(self.predictor.labels), observe)
        rows = ([_Row(job, i, text=t) for i, t in enumerate(texts)] if texts is not None
                else [_Row(job, i, tokens=row, stats=stats[i] if stats else None) for i, row in enumerate(rows)])
        if stats:
            job.stats = stats
        with self._gatherer_wake:
            if self._stopping:
                raise RuntimeError("the batcher is closed")
            queued = len(self._rows)
            self._rows.extend(rows)
            self.metrics.queue_depth.set(len(self._rows))
            # The gatherer waits for the first row, then for a full batch (or its deadline): waking
            # it for every row between costs a thread switch per request for nothing.
            if queued == 0 or queued < self.max_batch <= len(self._rows):
                self._gatherer_wake.notify()
        return await job.future

    def close(self) -> None:
        """Answer the rows already queued, then stop the threads."""
        with self._gatherer_wake:
            self._stopping = True
            self._gatherer_wake.notify_all()
            self._instance_wake.notify_all()
        for thread in self._threads:
            thread.join()

    # ---- the gathering thread ----

    def _take(self) -> list[_Row]:
        with self._gatherer_wake:
            # Gather when an instance is free to run what is gathered: rows that arrive meanwhile
            # join this batch instead of forming small ones behind it.
            while (not self._rows or self._groups or not self._idle) and not self._stopping:
                self._gatherer_wake.wait()
            if not self._rows:  # stopping, and nothing left to answer
                return []
            deadline = self._rows[0].queued_at + self.max_delay_s
            while len(self._rows) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._gatherer_wake.wait(left)
            batch = [self._rows.popleft() for _ in range(min(self.max_batch, len(self._rows)))]
            self.metrics.queue_depth.set(len(self._rows))
            return batch

    def _gather(self) -> None:
        while batch := self._take():
            try:
                groups = self._prepare(batch)
            except Exception as e:  # a bug or a tokenizer failure, never the user's input: fail those requests
                log.exception("preparing a batch failed")
                _fail_jobs(batch, e)
                continue
            with self._instance_wake:
                self._groups.extend(groups)
                self._instance_wake.notify(len(groups))
        with self._instance_wake:
            self._gathered_all = True
            self._instance_wake.notify_all()

    def _prepare(self, batch: list[_Row]) -> list[list[_Row]]:
        """Tokenize the batch's texts in one call; split its rows into length groups."""
        names = self.predictor.input_names
        texts = [row.text for row in batch if row.text is not None]
        encodings = self.predictor.tokenizer.encode_batch(texts) if texts else []
        padded = columns(encodings, names)
        quantities = text_quantities(encodings, self.unk_id, padded).rows() if texts else []
        feed = iter(zip(quantities, *padded.values()))
        for row in batch:
            if row.text is not None:
                stats, *values = next(feed)  # padded to the longest text here; keep only this row's tokens
                row.tokens = {name: v[:stats[0]] for name, v in zip(names, values)}
                if stats[2]:
                    row.job.truncated.append(row.index)
                if row.job.observe:
                    row.stats = row.job.stats[row.index] = stats
        groups = length_groups([len(row.tokens["input_ids"]) for row in batch], CALL_COST_TOKENS)
        return [[batch[i] for i in group] for group in groups]

    # ---- the instances' threads ----

    def _call(self) -> None:
        predictor = self.predictor
        pad = predictor.package.manifest.pad_token_id
        while True:
            with self._instance_wake:
                self._idle += 1
                self._gatherer_wake.notify()  # it waits for a free instance
                while not self._groups and not (self._stopping and self._gathered_all):
                    self._instance_wake.wait()
                self._idle -= 1
                if not self._groups:
                    return
                rows = self._groups.popleft()
                if not self._groups:
                    self._gatherer_wake.notify()  # it waits for the queue to empty
            try:
                feed = pad_rows([row.tokens for row in rows], predictor.input_names, pad)
                started = time.perf_counter()
                logits = predictor.run(feed)
                self.metrics.inference.observe(time.perf_counter() - started)
                self.metrics.batch_size.observe(len(rows))
            except Exception as e:  # a runtime failure: fail those requests, keep serving
                log.exception("model call failed")
                _fail_jobs(rows, e)
                continue
            if self.metrics.predictions is not None:  # counted before answered: an answer seen is on /metrics
                self._observe(rows, logits)
            done: dict[asyncio.AbstractEventLoop, list[_Job]] = collections.defaultdict(list)
            with self._finishing:
                for k, row in enumerate(rows):
                    job = row.job
                    job.logits[row.index] = logits[k]
                    job.remaining -= 1
                    if job.remaining == 0:
                        done[job.loop].append(job)
            for loop, jobs in done.items():  # one wake-up of each event loop per call, not one per request
                with contextlib.suppress(RuntimeError):  # that loop has closed: no one waits for the answer
                    loop.call_soon_threadsafe(_resolve_all, jobs)

    def _observe(self, rows: list[_Row], logits: np.ndarray) -> None:
        """Hand a model call's answered texts to /metrics' counts (bucketed later, many calls at once)."""
        stats = [row.stats for row in rows if row.stats is not None]
        if not stats:
            return
        if len(stats) < len(rows):
            logits = logits[[k for k, row in enumerate(rows) if row.stats is not None]]
        try:
            self.metrics.predictions.observe(logits, stats)
        except Exception:  # noqa: BLE001 -- a counting bug must not stop the model's thread
            log.exception("counting answers for /metrics failed")


def _fail_jobs(rows: list[_Row], error: BaseException) -> None:
    for job in {id(row.job): row.job for row in rows}.values():
        with contextlib.suppress(RuntimeError):  # its loop has closed
            job.loop.call_soon_threadsafe(_fail, job.future, error)


def _resolve_all(jobs: list[_Job]) -> None:
    for job in jobs:
        if not job.future.done():  # the client may have gone away and its request been cancelled
            job.future.set_result((job.logits, sorted(job.truncated), job.stats))


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def length_groups(lengths: Sequence[int], call_cost: int) -> list[list[int]]:
    """Indices of rows split into groups of similar length (longest first), each to be padded to
    its own longest: the split that minimises padded tokens plus `call_cost` per model call."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    n = len(order)
    # best[j]: the cheapest way to run the first j rows of `order`; cut[j]: where its last group starts.
    best, cut = [0.0] + [math.inf] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + call_cost + (j - i) * lengths[order[i]]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    while n:
        groups.append(order[cut[n]:n])
        n = cut[n]
    return groups[::-1]
