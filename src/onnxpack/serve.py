"""Serve a package over HTTP: FastAPI on uvicorn, speaking the Open Inference Protocol (KServe V2).

One ONNX Runtime session per process, and the model never runs on the event loop:
each request's rows go to a `MicroBatcher`, whose worker thread gathers rows from
concurrent requests (up to `max_batch`, the oldest waiting at most `max_delay_ms`),
splits them into groups of similar length, runs the Predictor once per
group and answers every request with its own rows.

Bad input always gets a 4xx with the KServe V2 error body `{"error": "..."}`:
invalid JSON or UTF-8, lone surrogates, empty texts, too many or too long texts,
token ids outside the vocabulary, mismatched shapes, a body over `max_body_bytes`.
A text longer than the package's `max_length` tokens is truncated, as
`onnxpack predict` does, and the response lists it under `truncated`.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at
# definition time, and the /predict body model is built inside create_app from the limits.
import asyncio
import collections
import contextlib
import dataclasses
import html
import json
import importlib.resources
import logging
import math
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, create_model
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, untrusted, v2_binary
from .errors import OnnxpackError
from .package import Package
from .feed import Text, check_texts, columns, pad_rows, vocab_size
from .runtime import Predictor, resolve_providers, serving_variant

log = logging.getLogger(__name__)

TEXT_INPUT = "text"  # the V2 BYTES input; the token inputs are named as the package names them
TEXT_PAIR_INPUT = "text_pair"  # a pair model's second text, a BYTES tensor beside TEXT_INPUT
OUTPUTS = ("logits", "label", "score")
# A model call's fixed cost, in padded tokens: splitting a gathered batch into one more length group
# pays off when it saves more padding than this. Padding is what costs: on MiniLM-L6 (2 CPU cores,
# 32 CoLA texts per batch) one padded batch ran 2.6x slower than length groups, and any value from
# 4 to 16 ran equally fast.
CALL_COST_TOKENS = 8
RETRY_AFTER_S = 1


@dataclasses.dataclass
class ServeConfig:
    max_batch: int = 32  # rows per model call; 1 turns micro-batching off
    max_delay_ms: float = 5.0  # how long a row may wait in the queue for others to share its model call
    max_concurrency: int = 64  # requests being answered at once; more wait in the queue below
    max_queue: int = 256  # requests waiting for a slot; beyond that: 503 with Retry-After
    max_body_bytes: int = 1 << 20  # request body size (413 over it)
    max_texts: int = 128  # texts, or token rows, per request
    max_chars: int = 10_000  # characters per text (tokens past max_length are truncated anyway)
    provider: str | None = None  # ONNX Runtime execution provider (default: the runtime's choice)
    variant: str | None = None  # package variant (default: serving_variant)
    threads: int | None = None  # ONNX Runtime intra-op threads (default: ONNX Runtime's)
    # After SIGTERM, in-flight requests get this long; then the process ends even if a model call is stuck.
    grace_s: float = 30.0

    def check(self) -> None:
        for name in ("max_batch", "max_concurrency", "max_body_bytes", "max_texts", "max_chars"):
            if getattr(self, name) < 1:
                raise OnnxpackError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_queue < 0 or self.max_delay_ms < 0 or self.grace_s < 0:
            raise OnnxpackError("--max-queue, --max-delay-ms and --grace-s cannot be negative")


# ---- the micro-batcher: rows from many requests, one model call per length group ----

class _Job:
    """One request's rows; the worker fills `logits` and resolves `future` when its last row is done."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rows: int, labels: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[tuple[np.ndarray, list[int]]] = loop.create_future()
        self.logits = np.empty((rows, labels), dtype=np.float32)
        self.truncated: list[int] = []
        self.remaining = rows


@dataclasses.dataclass
class _Row:
    job: _Job
    index: int
    text: Text | None = None  # a text (or pair) to tokenize, or already tokenized rows
    tokens: dict[str, np.ndarray] | None = None  # input name -> this row's ids, unpadded
    queued_at: float = dataclasses.field(default_factory=time.monotonic)


class _Metrics:
    def __init__(self) -> None:
        # A registry per app, so several apps in one process (tests) keep separate counts.
        self.registry = CollectorRegistry()
        self.requests = Counter("onnxpack_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=self.registry)
        self.errors = Counter("onnxpack_request_errors", "HTTP requests answered with a 4xx or 5xx status",
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


class MicroBatcher:
    """Gathers rows from concurrent requests into few model calls, on one worker thread.

    The worker takes up to `max_batch` rows, holding the batch open for more until the oldest
    row has waited `max_delay_s` (rows that queued while the model was busy have waited long
    enough already, so under load the worker never idles). It tokenizes the texts among them
    in one call, splits the rows into groups of similar length (`length_groups`), pads each
    group to its own longest row and runs the Predictor once per group.
    """

    def __init__(self, predictor: Predictor, max_batch: int, max_delay_s: float, metrics: _Metrics) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.metrics = metrics
        self._rows: collections.deque[_Row] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="onnxpack-batcher", daemon=True)
        self._thread.start()

    async def infer(self, texts: Sequence[Text] | None = None,
                    tokens: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, list[int]]:
        """Logits for `texts` (or pairs), or for token rows (`{input name: batch × sequence}`), and
        the indices of texts that were truncated to the package's max_length."""
        n = len(texts) if texts is not None else len(tokens["input_ids"])
        job = _Job(asyncio.get_running_loop(), n, len(self.predictor.labels))
        rows = ([_Row(job, i, text=t) for i, t in enumerate(texts)] if texts is not None
                else [_Row(job, i, tokens={name: v[i] for name, v in tokens.items()}) for i in range(n)])
        with self._wake:
            if self._stopping:
                raise RuntimeError("the batcher is closed")
            self._rows.extend(rows)
            self.metrics.queue_depth.set(len(self._rows))
            self._wake.notify()
        return await job.future

    def close(self) -> None:
        """Answer the rows already queued, then stop the worker."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _take(self) -> list[_Row]:
        with self._wake:
            while not self._rows and not self._stopping:
                self._wake.wait()
            if not self._rows:  # stopping, and nothing left to answer
                return []
            deadline = self._rows[0].queued_at + self.max_delay_s
            while len(self._rows) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            batch = [self._rows.popleft() for _ in range(min(self.max_batch, len(self._rows)))]
            self.metrics.queue_depth.set(len(self._rows))
            return batch

    def _work(self) -> None:
        while batch := self._take():
            try:
                self._run(batch)
            except Exception as e:  # a bug or a runtime failure, never the user's input: fail those requests
                log.exception("model call failed")
                for job in {id(row.job): row.job for row in batch}.values():
                    job.loop.call_soon_threadsafe(_fail, job.future, e)

    def _run(self, batch: list[_Row]) -> None:
        names = self.predictor.input_names
        texts = [row.text for row in batch if row.text is not None]
        encodings = self.predictor.tokenizer.encode_batch(texts) if texts else []
        feed = iter(zip(encodings, *columns(encodings, names).values()))
        for row in batch:
            if row.text is not None:
                e, *values = next(feed)  # padded to the longest text here; keep only this row's tokens
                length = sum(e.attention_mask)
                row.tokens = {name: v[:length] for name, v in zip(names, values)}
                if e.overflowing:
                    row.job.truncated.append(row.index)
        for group in length_groups([len(row.tokens["input_ids"]) for row in batch], CALL_COST_TOKENS):
            rows = [batch[i] for i in group]
            feed = pad_rows([row.tokens for row in rows], names, self.predictor.package.manifest.pad_token_id)
            started = time.perf_counter()
            logits = self.predictor.run(feed)
            self.metrics.inference.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(len(rows))
            for k, row in enumerate(rows):
                job = row.job
                job.logits[row.index] = logits[k]
                job.remaining -= 1
                if job.remaining == 0:
                    job.loop.call_soon_threadsafe(_resolve, job.future, (job.logits, sorted(job.truncated)))


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():  # the client may have gone away and its request been cancelled
        future.set_result(value)


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


# ---- admission: a cap on requests in progress, a bounded queue behind it ----

class _Admission:
    """At most `limit` requests in progress; up to `queue` more wait their turn; beyond that, refuse."""

    def __init__(self, limit: int, queue: int, waiting: Gauge, in_progress: Gauge) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._queue = queue
        self._waiting = 0
        self._gauge = waiting
        self._in_progress = in_progress

    async def enter(self) -> bool:
        if self._slots.locked() and self._waiting >= self._queue:
            return False
        self._waiting += 1
        self._gauge.inc()
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
            self._gauge.dec()
        self._in_progress.inc()
        return True

    def leave(self) -> None:
        self._in_progress.dec()
        self._slots.release()


class _Service:
    """What the routes share: the package, its limits, the metrics and (once loaded) the batcher."""

    def __init__(self, package: Package, config: ServeConfig) -> None:
        self.package = package
        self.manifest = package.manifest
        self.config = config
        self.metrics = _Metrics()
        self.admission = _Admission(config.max_concurrency, config.max_queue, self.metrics.waiting,
                                    self.metrics.in_progress)
        self.vocab_size = vocab_size(package)
        self.predictor: Predictor | None = None
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.failed: str | None = None
        self.on_failure: Callable[[], None] | None = None  # set by run(): stop the server

    def load(self) -> None:
        """Create the session and run one warm-up inference (ONNX Runtime allocates its buffers on
        the first run); only then is the server ready. Runs in a thread, so `live` answers meanwhile."""
        try:
            predictor = Predictor(self.package, provider=self.config.provider, threads=self.config.threads,
                                  variant=self.config.variant)
            warm_up = ("warm-up", "warm-up") if predictor.pairs else "warm-up"
            predictor.predict_logits([warm_up])
            self.predictor = predictor
            self.batcher = MicroBatcher(predictor, self.config.max_batch, self.config.max_delay_ms / 1000, self.metrics)
            self.ready = True
            log.info("serving %s (%s variant, %s)", self.manifest.name, predictor.variant, predictor.providers[0])
        except Exception as e:  # noqa: BLE001 -- the server then exits with this one line (see run)
            self.failed = e.message if isinstance(e, OnnxpackError) else f"{type(e).__name__}: {e}"
            if self.on_failure:
                self.on_failure()

    def close(self) -> None:
        self.ready = False
        if self.batcher:
            self.batcher.close()
        if self.predictor:
            self.predictor.close()

    def check_model(self, name: str) -> None:
        if name != self.manifest.name:
            raise HTTPException(404, f"unknown model {name!r}; this server serves {self.manifest.name!r}")


# ---- request and response bodies (they make the OpenAPI schema) ----

class ErrorBody(BaseModel):
    error: str


class Prediction(BaseModel):
    text: str | tuple[str, str] = Field(description="the text, or the pair")
    label: str
    score: float
    scores: dict[str, float]
    labels: list[str] | None = Field(None, description="multi-label models: every label at or over its threshold")


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction] = Field(description="one per text, in order: what `onnxpack predict` prints")
    truncated: list[int] = Field(description="indices of texts cut to the package's max_length tokens")


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class InferInput(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(description="row-major, flat or nested")


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1, description=f"either {TEXT_INPUT!r} (BYTES, shape [batch]) or "
                                                               "the token inputs (INT64, shape [batch, sequence])")
    outputs: list[RequestedOutput] | None = Field(None, description=f"a subset of {', '.join(OUTPUTS)} (default: all)")


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float | str]


class InferResponse(BaseModel):
    model_name: str
    id: str | None = None
    parameters: dict[str, Any] = Field(description="`truncated`: indices of texts cut to max_length tokens")
    outputs: list[InferOutput]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    meaning = {400: "invalid input", 404: "unknown model", 413: "request body too large",
               503: "loading, or busy: retry after Retry-After seconds"}
    return {code: {"model": ErrorBody, "description": meaning[code]} for code in codes}


# ---- the app ----

def create_app(package_dir: str | Path, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app for one package. The model loads in the lifespan, in the background:
    `/v2/health/live` answers at once, `/v2/health/ready` once a warm-up inference has run."""
    config = config or ServeConfig()
    config.check()
    package = Package.open(package_dir)
    # Mistakes in the options show now, as one error line, not later in the background load; so does a
    # graph that is malformed, hostile, or cannot finish a first run within its time limit (untrusted.py).
    resolve_providers(config.provider)
    config = dataclasses.replace(config, variant=config.variant or serving_variant(package))
    untrusted.trust(package.variant_path(config.variant), package)
    service = _Service(package, config)
    model = package.manifest.name

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(asyncio.to_thread(service.load))
        try:
            yield
        finally:
            # uvicorn calls this after the last in-flight request is answered (graceful shutdown).
            await loading
            await asyncio.to_thread(service.close)

    app = FastAPI(title=f"onnxpack: {model}", version=__version__, lifespan=lifespan,
                  description="Text classification with an onnxpack package: `/predict` and the Open Inference "
                              "Protocol (KServe V2).")
    app.state.service = service
    app.add_middleware(_V2Body)
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(_MetricsMiddleware, metrics=service.metrics)
    _add_error_handlers(app)

    one_text = Annotated[str, StringConstraints(min_length=1, max_length=config.max_chars, pattern=r"\S")]
    texts_type = Annotated[list[one_text], Field(min_length=1, max_length=config.max_texts)]
    texts_adapter = TypeAdapter(texts_type)
    pairs_type = Annotated[list[tuple[one_text, one_text]], Field(min_length=1, max_length=config.max_texts)]
    predict_request = create_model(
        "PredictRequest", __config__=ConfigDict(extra="forbid"),
        texts=(texts_type | None, Field(None, description="texts to classify; each must contain a non-space character")),
        pairs=(pairs_type | None, Field(None, description="a pair model's (first, second) texts: [[a, b], ...]")))
    inference = APIRouter(route_class=_AdmittedRoute)
    page_html = importlib.resources.files(__package__).joinpath("serve.html").read_text(encoding="utf-8")
    page_html = page_html.replace("{{name}}", html.escape(model))

    @app.get("/", response_class=HTMLResponse, summary="A page to try the model in a browser")
    async def page() -> HTMLResponse:
        # Inline script and style only; the page makes no request beyond this server.
        return HTMLResponse(page_html, headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"})

    @inference.post("/predict", response_model=PredictResponse, responses=_errors(400, 413, 503),
                    summary="Classify texts: one object per text, as `onnxpack predict` prints them")
    async def predict(body: predict_request) -> JSONResponse:  # type: ignore[valid-type]
        if (body.texts is None) == (body.pairs is None):
            raise OnnxpackError("send either 'texts' or 'pairs'")
        texts = body.texts if body.texts is not None else body.pairs
        check_texts(texts, service.manifest.pairs)  # a pair model needs pairs, a single-text one texts
        logits, truncated = await service.batcher.infer(texts=texts)
        return JSONResponse({"model": model, "predictions": service.predictor.results(texts, logits),
                             "truncated": truncated})

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics",
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}})
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v2", response_model=ServerMetadata, summary="V2 server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "onnxpack", "version": __version__, "extensions": []}

    @app.get("/v2/health/live", response_model=Liveness, responses={503: {"model": Liveness}},
             summary="V2 liveness: the process is up (and the model did not fail to load)")
    async def live() -> JSONResponse:
        return JSONResponse({"live": service.failed is None}, 200 if service.failed is None else 503)

    @app.get("/v2/health/ready", response_model=Readiness, responses={503: {"model": Readiness}},
             summary="V2 readiness: the model is loaded and warmed up")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": service.ready}, 200 if service.ready else 503)

    @app.get("/v2/models/{name}", response_model=ModelMetadata, responses=_errors(404), summary="V2 model metadata")
    async def model_metadata(name: str) -> dict[str, Any]:
        service.check_model(name)
        m = service.manifest
        tokens = [{"name": t.name, "datatype": "INT64", "shape": [-1, -1]} for t in m.inputs]
        texts = [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in _text_inputs(m.pairs)]
        return {"name": m.name, "versions": [], "platform": "onnxruntime_onnx",
                "inputs": [*texts, *tokens],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, len(m.labels)]},
                            {"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "score", "datatype": "FP32", "shape": [-1]}]}

    @app.get("/v2/models/{name}/ready", response_model=Readiness,
             responses={**_errors(404), 503: {"model": Readiness}}, summary="V2 model readiness")
    async def model_ready(name: str) -> JSONResponse:
        service.check_model(name)
        return JSONResponse({"ready": service.ready}, 200 if service.ready else 503)

    @inference.post("/v2/models/{name}/infer", response_model=InferResponse, responses=_errors(400, 404, 413, 503),
                    summary="V2 inference: text as a BYTES tensor, or input_ids/attention_mask as INT64 tensors")
    async def infer(name: str, body: InferRequest) -> JSONResponse:
        service.check_model(name)
        wanted = _requested_outputs(body)
        inputs = _inputs_by_name(body, service)
        parameters: dict[str, Any] = {}
        if TEXT_INPUT in inputs:
            columns_ = []
            for name in _text_inputs(service.manifest.pairs):
                flat = _flat_data(inputs[name], "BYTES", ([None], [None, 1]))
                try:
                    columns_.append(texts_adapter.validate_python(flat))
                except ValidationError as e:
                    raise OnnxpackError(f"input {name!r}: {_describe(e.errors(), 'data')}") from None
            if len({len(c) for c in columns_}) > 1:
                raise OnnxpackError(f"inputs {TEXT_INPUT!r} and {TEXT_PAIR_INPUT!r} hold different numbers of texts")
            texts = list(zip(*columns_)) if len(columns_) == 2 else columns_[0]
            logits, parameters["truncated"] = await service.batcher.infer(texts=texts)
        else:
            texts = None
            logits, _ = await service.batcher.infer(tokens=_token_inputs(inputs, service))
        results = service.predictor.results(texts or [None] * len(logits), logits)
        tensors = {"logits": ("FP32", list(logits.shape), logits.ravel().tolist()),
                   "label": ("BYTES", [len(results)], [r["label"] for r in results]),
                   "score": ("FP32", [len(results)], [r["score"] for r in results])}
        outputs = [{"name": n, "datatype": dt, "shape": shape, "data": data}
                   for n, (dt, shape, data) in tensors.items() if n in wanted]
        response = {"model_name": model, "parameters": parameters, "outputs": outputs}
        if body.id is not None:
            response["id"] = body.id
        return JSONResponse(response)

    app.include_router(inference)
    _drop_unused_422(app)
    return app


class _AdmittedRoute(APIRoute):
    """Inference routes: refused while loading; over the concurrency cap they queue, and over the
    queue they are refused. Runs before FastAPI reads the body, so a waiting request holds none."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handle = super().get_route_handler()

        async def admitted(request: Request) -> Response:
            service: _Service = request.app.state.service
            if not service.ready:
                return _unavailable("the model is not ready yet" if not service.failed else "the model failed to load")
            if not await service.admission.enter():
                return _unavailable(f"busy: {service.config.max_concurrency} requests in progress and "
                                    f"{service.config.max_queue} waiting")
            try:
                return await handle(request)
            finally:
                service.admission.leave()

        return admitted


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, 503, headers={"Retry-After": str(RETRY_AFTER_S)})


def _requested_outputs(body: InferRequest) -> set[str]:
    if body.outputs is None:
        return set(OUTPUTS)
    names = {o.name for o in body.outputs}
    if unknown := sorted(names - set(OUTPUTS)):
        raise OnnxpackError(f"unknown output {unknown[0]!r}; known: {', '.join(OUTPUTS)}")
    return names


def _text_inputs(pairs: bool) -> tuple[str, ...]:
    return (TEXT_INPUT, TEXT_PAIR_INPUT) if pairs else (TEXT_INPUT,)


def _inputs_by_name(body: InferRequest, service: _Service) -> dict[str, InferInput]:
    token_names = [t.name for t in service.manifest.inputs]
    text_names = _text_inputs(service.manifest.pairs)
    inputs: dict[str, InferInput] = {}
    for tensor in body.inputs:
        if tensor.name not in (*text_names, *token_names):
            raise OnnxpackError(f"unknown input {tensor.name!r}; known: {', '.join([*text_names, *token_names])}")
        if tensor.name in inputs:
            raise OnnxpackError(f"input {tensor.name!r} given twice")
        inputs[tensor.name] = tensor
    given_texts = [n for n in text_names if n in inputs]
    if given_texts and len(inputs) > len(given_texts):
        raise OnnxpackError(f"send either the text inputs ({', '.join(text_names)}) or the token inputs "
                            f"({', '.join(token_names)}), not both")
    if given_texts and len(given_texts) < len(text_names):
        raise OnnxpackError(f"this model reads sentence pairs: send both {TEXT_INPUT!r} and {TEXT_PAIR_INPUT!r}")
    if TEXT_PAIR_INPUT in inputs and TEXT_INPUT not in inputs:
        raise OnnxpackError(f"missing input {TEXT_INPUT!r}: {TEXT_PAIR_INPUT!r} is the second text of a pair")
    if not given_texts and (missing := [n for n in token_names if n not in inputs]):
        raise OnnxpackError(f"missing input {missing[0]!r}: token inputs need all of {', '.join(token_names)}")
    return inputs


def _flat_data(tensor: InferInput, datatype: str, shapes: tuple[list[int | None], ...]) -> list[Any]:
    """The tensor's data as one flat list, after checking datatype, shape and element count.
    `shapes` are the accepted shapes, None standing for any size."""
    if tensor.datatype != datatype:
        raise OnnxpackError(f"input {tensor.name!r} must be {datatype}, got {tensor.datatype!r}")
    if not any(len(s) == len(tensor.shape) and all(d is None or d == got for d, got in zip(s, tensor.shape))
               for s in shapes):
        accepted = " or ".join(str(["n" if d is None else d for d in s]).replace("'", "") for s in shapes)
        raise OnnxpackError(f"input {tensor.name!r} has shape {tensor.shape}; expected {accepted}")
    flat = tensor.data
    for _ in range(len(tensor.shape) - 1):  # V2 JSON allows nested rows as well as one flat list
        if flat and all(isinstance(x, list) for x in flat):
            flat = [y for x in flat for y in x]
    if len(flat) != math.prod(tensor.shape):
        raise OnnxpackError(f"input {tensor.name!r} has {len(flat)} values for shape {tensor.shape}")
    return flat


def _token_inputs(inputs: dict[str, InferInput], service: _Service) -> dict[str, np.ndarray]:
    """The token inputs as int64 arrays (batch × sequence), checked against the package."""
    config, manifest = service.config, service.manifest
    arrays = {}
    for name, tensor in inputs.items():
        flat = _flat_data(tensor, "INT64", ([None, None],))
        if not all(type(x) is int for x in flat):  # bool is an int subclass; JSON true is not a token id
            raise OnnxpackError(f"input {name!r} must hold integers")
        try:
            arrays[name] = np.array(flat, dtype=np.int64).reshape(tensor.shape)
        except OverflowError:
            raise OnnxpackError(f"input {name!r} holds a value outside int64") from None
    ids = arrays["input_ids"]
    mask = arrays.get("attention_mask", np.ones_like(ids))
    if mask.shape != ids.shape:
        raise OnnxpackError(f"attention_mask has shape {list(mask.shape)} but input_ids has {list(ids.shape)}")
    batch, length = ids.shape
    if not 1 <= batch <= config.max_texts:
        raise OnnxpackError(f"input_ids has {batch} rows; expected 1 to {config.max_texts}")
    if not 1 <= length <= manifest.max_length:
        raise OnnxpackError(f"input_ids has {length} tokens per row; this model takes 1 to {manifest.max_length}",
                            hint="truncate to the model's max_length, or send text")
    if ids.min() < 0 or ids.max() >= service.vocab_size:
        bad = int(ids[(ids < 0) | (ids >= service.vocab_size)][0])
        raise OnnxpackError(f"input_ids holds {bad}, outside the vocabulary (0 to {service.vocab_size - 1})")
    if not np.isin(mask, (0, 1)).all():
        raise OnnxpackError("attention_mask must hold only 0 and 1")
    for name, values in arrays.items():
        if values.shape != ids.shape:
            raise OnnxpackError(f"{name} has shape {list(values.shape)} but input_ids has {list(ids.shape)}")
    if "token_type_ids" in arrays and not np.isin(arrays["token_type_ids"], (0, 1)).all():
        raise OnnxpackError("token_type_ids must hold only 0 and 1")
    return arrays


# ---- errors, metrics, schema ----

def _describe(errors: Sequence[Any], root: str = "") -> str:
    """Pydantic's errors as one line: where (`texts[3]`), then what."""
    parts = []
    for e in errors[:3]:
        if e["type"] == "json_invalid":
            parts.append(f"invalid JSON at character {e['loc'][-1]}: {e.get('ctx', {}).get('error', e['msg'])}")
            continue
        where = root + "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in e["loc"] if x != "body")
        where = where.lstrip(".")
        what = "is empty or only spaces" if e["type"] == "string_pattern_mismatch" else e["msg"]
        if tuple(e["loc"]) == ("body",) and e["type"] in ("model_attributes_type", "model_type", "dict_type"):
            what = "the body must be a JSON object, sent with Content-Type: application/json"
        parts.append(f"{where}: {what}" if where else what)
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as the KServe V2 body `{"error": "..."}`; the user's mistakes as 4xx."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _describe(exc.errors())}, 400)

    @app.exception_handler(OnnxpackError)
    async def user_error(request: Request, exc: OnnxpackError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.__cause__ is not None:  # FastAPI's "error parsing the body": say why (bad UTF-8, nesting, ...)
            message += f": {exc.__cause__}"
        return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal server error ({type(exc).__name__})"}, 500)


class _V2Body:
    """V2 inference bodies as Triton's own clients send them: JSON without a Content-Type, and the
    binary tensor data extension (v2_binary), turned into the plain JSON the one handler reads; the
    answer goes back in binary where the request asks for it. Inside _BodyLimit, so its limit holds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/v2/models/")
                and scope["path"].endswith("/infer")):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        try:
            body = b""
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            if v2_binary.HEADER in headers:
                request = v2_binary.decode_request(body, headers[v2_binary.HEADER])
            else:  # plain JSON: parsed here only when it may ask for binary outputs (the handler parses it anyway)
                request = _json_or_none(body) if b'"binary_data' in body else None
        except HTTPException as e:  # the body limit, while reading
            return await JSONResponse({"error": str(e.detail)}, e.status_code)(scope, receive, send)
        except OnnxpackError as e:
            return await JSONResponse({"error": e.message}, 400)(scope, receive, send)
        if v2_binary.HEADER in headers:
            body = json.dumps(request).encode()
        kept = [(k, v) for k, v in scope["headers"]
                if k not in (b"content-type", b"content-length", v2_binary.HEADER.encode())]
        scope = {**scope, "headers": kept + [(b"content-type", b"application/json"),
                                              (b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        binary = v2_binary.wants_binary(request) if isinstance(request, dict) else set()
        await self.app(scope, replay, _binary_answer(send, binary) if binary else send)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # the handler answers it with its usual 4xx


def _binary_answer(send: Send, binary: set[str] | bool) -> Send:
    """Re-encode a 200 JSON answer in the binary extension's form."""
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            if message["status"] != 200:
                start.clear()
                await send(message)
            return
        if not start:
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body, header_length = v2_binary.encode_response(json.loads(b"".join(chunks)), binary)
        headers = [(k, v) for k, v in start.get("headers", []) if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(body)).encode()),
                    (v2_binary.HEADER.encode(), str(header_length).encode())]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return wrapped


class _BodyLimit:
    """413 for a request body over `limit` bytes: at once when Content-Length says so, else as soon
    as the streamed body passes it. (Starlette's own limit answers in plain text, not JSON.)"""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body over {self.limit} bytes"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            return await JSONResponse({"error": message}, 413, headers={"Connection": "close"})(scope, receive, send)
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            got = await receive()
            received += len(got.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, message)  # FastAPI passes it on to the JSON error handler
            return got

        await self.app(scope, receive_within_limit, send)


class _MetricsMiddleware:
    """Counts every response and times it, labelled by the route's template (not the raw path)."""

    def __init__(self, app: ASGIApp, metrics: _Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def _drop_unused_422(app: FastAPI) -> None:
    """FastAPI documents a 422 on every route with a body; validation errors here are 400s."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            for operations in generate()["paths"].values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


HEADER_TIMEOUT_S = 10  # a request's headers must arrive within this (slow-loris clients are cut off)
BODY_TIMEOUT_S = 30  # and its body within this after them


def _timed_protocol() -> type:
    """uvicorn's httptools protocol with read deadlines, which uvicorn lacks: a connection that sends
    its headers (or body) too slowly gets 408 and is closed, so slow clients cannot hold the server."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class TimedProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def _expect(self, seconds: float | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(seconds, self._too_slow) if seconds else None

        def _too_slow(self) -> None:
            if not self.transport.is_closing():
                body = b'{"error": "the request came too slowly"}'
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._expect(HEADER_TIMEOUT_S)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._expect(HEADER_TIMEOUT_S)

        def on_headers_complete(self) -> None:
            self._expect(BODY_TIMEOUT_S)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._expect(None)
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._expect(None)
            super().connection_lost(exc)

    return TimedProtocol


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False) -> None:
    """Serve until SIGINT or SIGTERM: uvicorn then stops accepting connections, finishes the
    requests in flight and runs the lifespan's shutdown, which drains the batcher. A model call that
    never returns cannot hold the process: `grace_s` after the signal it exits anyway. A model that
    fails to load ends the server with that one line (OnnxpackError), as Triton's --exit-on-error."""
    import uvicorn

    service: _Service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:
                threading.Thread(target=_exit_after, args=(service.config.grace_s + 2,), daemon=True).start()
            super().handle_exit(sig, frame)

    server = Server(uvicorn_config(app, host, port, access_log))
    service.on_failure = lambda: setattr(server, "should_exit", True)
    threading.Thread(target=_exit_unless_ready, args=(service, untrusted.PROBE_TIMEOUT_S), daemon=True).start()
    server.run()
    if service.failed:
        raise OnnxpackError(f"could not serve {service.package.root}: {service.failed}")


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False,
                   log_level: str = "info") -> Any:
    """How every onnxpack server runs on uvicorn: read deadlines, and a bounded graceful shutdown."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, access_log=access_log, http=_timed_protocol(),
                          timeout_graceful_shutdown=app.state.service.config.grace_s, log_level=log_level)


def _exit_unless_ready(service: _Service, seconds: float) -> None:
    """A warm-up (the first inference) over the first-run time limit ends the server: a stuck model
    call cannot be interrupted, so the process exits with one line."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if service.ready or service.failed:
            return
        time.sleep(0.2)
    print(f"error: the warm-up inference of {service.package.root} did not finish within {seconds:.0f} s",
          file=sys.stderr)
    os._exit(1)


def _exit_after(seconds: float) -> None:
    time.sleep(seconds)
    print(f"error: shutdown took over {seconds:.0f} s (a model call did not return); exiting", file=sys.stderr)
    os._exit(1)
