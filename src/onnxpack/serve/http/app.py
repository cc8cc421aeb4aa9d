"""The HTTP front end: FastAPI on uvicorn, `/predict` and the Open Inference Protocol (KServe V2)
over REST, JSON or the binary tensor data extension, plus `/metrics` and a web page.

Bad input always gets a 4xx with the KServe V2 error body `{"error": "..."}`:
invalid JSON or UTF-8, lone surrogates, empty texts, too many or too long texts,
token ids outside the vocabulary, mismatched shapes, a body over `max_body_bytes`.
A text longer than the package's `max_length` tokens is truncated, as
`onnxpack predict` does, and the response lists it under `truncated`.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at
# definition time, and the /predict body model is built inside build_app from the limits.
import asyncio
import contextlib
import dataclasses
import html
import importlib.resources
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from onnxpack import __version__
from onnxpack.core import untrusted
from onnxpack.core.errors import OnnxpackError
from onnxpack.runtime.feed import check_texts

from .. import v2_binary
from ..metrics import Metrics
from ..service import (
    RETRY_AFTER_S,
    Service,
    Unavailable,
    UnknownModel,
    exit_after,
    exit_unless_ready,
)
from ..v2 import (
    EXTENSIONS,
    OUTPUTS,
    TEXT_INPUT,
    V2,
    Call,
    describe_errors,
    text_type,
    texts_type,
)

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

def build_app(service: Service) -> FastAPI:
    """The FastAPI app for one service. The model loads in the lifespan, in the background:
    `/v2/health/live` answers at once, `/v2/health/ready` once a warm-up inference has run."""
    model = service.manifest.name
    v2 = V2(service)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service.running():
            yield

    app = FastAPI(title=f"onnxpack: {model}", version=__version__, lifespan=lifespan,
                  description="Text classification with an onnxpack package: `/predict` and the Open Inference "
                              "Protocol (KServe V2).")
    app.state.service = service
    hot_routes: dict[str, APIRoute] = {}  # filled below, once the routes exist
    app.add_middleware(_FastPath, service=service, v2=v2, routes=hot_routes)
    app.add_middleware(_V2Body)
    app.add_middleware(_BodyLimit, limit=service.config.max_body_bytes)
    app.add_middleware(_MetricsMiddleware, metrics=service.metrics)
    _add_error_handlers(app)

    pairs_type = Annotated[list[tuple[text_type(service.config), text_type(service.config)]],
                           Field(min_length=1, max_length=service.config.max_texts)]
    predict_request = create_model(
        "PredictRequest", __config__=ConfigDict(extra="forbid"),
        texts=(texts_type(service.config) | None,
               Field(None, description="texts to classify; each must contain a non-space character")),
        pairs=(pairs_type | None, Field(None, description="a pair model's (first, second) texts: [[a, b], ...]")))
    inference = APIRouter(route_class=_AdmittedRoute)
    page_html = importlib.resources.files("onnxpack.serve").joinpath("serve.html").read_text(encoding="utf-8")
    page_html = page_html.replace("{{name}}", html.escape(model))

    @app.get("/", response_class=HTMLResponse, summary="A page to try the model in a browser")
    async def page() -> HTMLResponse:
        # Inline script and style only; the page makes no request beyond this server.
        return HTMLResponse(page_html, headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"})

    @inference.post(_PREDICT, response_model=PredictResponse, responses=_errors(400, 413, 503),
                    summary="Classify texts: one object per text, as `onnxpack predict` prints them")
    async def predict(body: predict_request) -> JSONResponse:  # type: ignore[valid-type]
        if (body.texts is None) == (body.pairs is None):
            raise OnnxpackError("send either 'texts' or 'pairs'")
        texts = body.texts if body.texts is not None else body.pairs
        check_texts(texts, service.manifest.pairs)  # a pair model needs pairs, a single-text one texts
        logits, truncated = await service.batcher.infer(texts=texts)
        return JSONResponse(_predict_answer(service, texts, logits, truncated))

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics",
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}})
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v2", response_model=ServerMetadata, summary="V2 server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "onnxpack", "version": __version__, "extensions": [*EXTENSIONS, *v2_binary.EXTENSIONS]}

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
        return v2.metadata()

    @app.get("/v2/models/{name}/ready", response_model=Readiness,
             responses={**_errors(404), 503: {"model": Readiness}}, summary="V2 model readiness")
    async def model_ready(name: str) -> JSONResponse:
        service.check_model(name)
        return JSONResponse({"ready": service.ready}, 200 if service.ready else 503)

    @inference.post(_INFER, response_model=InferResponse, responses=_errors(400, 404, 413, 503),
                    summary="V2 inference: text as a BYTES tensor, or input_ids/attention_mask as INT64 tensors")
    async def infer(name: str, body: InferRequest) -> JSONResponse:
        service.check_model(name)
        call = v2.parse(body.inputs, None if body.outputs is None else [(o.name, o.parameters) for o in body.outputs])
        logits, truncated = await service.batcher.infer(texts=call.texts, tokens=call.tokens)
        return JSONResponse(_infer_answer(service, v2, call, logits, truncated, body.id))

    app.include_router(inference)
    hot_routes.update({route.path: route for route in inference.routes})
    _drop_unused_422(app)
    return app


class _AdmittedRoute(APIRoute):
    """Inference routes take a slot from the service's admission (see Service.admitted). Runs before
    FastAPI reads the body, so a request waiting in the queue holds none."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handle = super().get_route_handler()

        async def admitted(request: Request) -> Response:
            service: Service = request.app.state.service
            try:
                async with service.admitted():
                    return await handle(request)
            except Unavailable as e:
                return JSONResponse({"error": str(e)}, 503, headers={"Retry-After": str(RETRY_AFTER_S)})

        return admitted


# ---- errors, metrics, schema ----

def _add_error_handlers(app: FastAPI) -> None:
    """Every error as the KServe V2 body `{"error": "..."}`; the user's mistakes as 4xx."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": describe_errors(exc.errors())}, 400)

    @app.exception_handler(OnnxpackError)
    async def user_error(request: Request, exc: OnnxpackError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, 400)

    @app.exception_handler(UnknownModel)
    async def unknown_model(request: Request, exc: UnknownModel) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, 404)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.__cause__ is not None:  # FastAPI's "error parsing the body": say why (bad UTF-8, nesting, ...)
            message += f": {exc.__cause__}"
        return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal server error ({type(exc).__name__})"}, 500)


_PREDICT = "/predict"
_INFER = "/v2/models/{name}/infer"


def _predict_answer(service: Service, texts: list[Any], logits: Any, truncated: list[int]) -> dict[str, Any]:
    return {"model": service.manifest.name, "predictions": service.predictor.results(texts, logits),
            "truncated": truncated}


def _infer_answer(service: Service, v2: V2, call: Call, logits: Any, truncated: list[int],
                  request_id: str | None) -> dict[str, Any]:
    results = service.predictor.results(call.texts or [None] * len(logits), logits)
    outputs = [{"name": n, "datatype": dt, "shape": shape, "data": data if isinstance(data, list) else data.ravel().tolist()}
               for n, dt, shape, data in v2.answer(logits, results, call)]
    answer = {"model_name": service.manifest.name, "parameters": {"truncated": truncated} if call.texts else {},
              "outputs": outputs}
    if request_id is not None:
        answer["id"] = request_id
    return answer


@dataclasses.dataclass
class _JsonTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


class _FastPath:
    """The hot path of `/predict` and V2 `infer`, ahead of FastAPI's routing and validation, which
    cost as much CPU as the model (docs/performance.md). A well-formed request is parsed with
    orjson, checked, batched and answered here, with the same admission, limits, answer and
    metrics as its route. Anything else, every mistake included, goes on with its body to the
    FastAPI route, whose error message it gets: the checks here only ever accept less."""

    def __init__(self, app: ASGIApp, service: Service, v2: V2, routes: dict[str, APIRoute]) -> None:
        self.app = app
        self.service = service
        self.v2 = v2
        self.routes = routes
        config = service.config
        self.max_texts, self.max_chars = config.max_texts, config.max_chars

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" and scope["method"] == "POST" else ""
        if path == _PREDICT:
            route = _PREDICT
        elif path.startswith("/v2/models/") and path.endswith("/infer") and path[11:-6] == self.service.manifest.name:
            route = _INFER
        else:
            return await self.app(scope, receive, send)
        if Headers(scope=scope).get("content-type", "").split(";")[0].strip() != "application/json":
            return await self.app(scope, receive, send)
        service = self.service
        try:
            async with service.admitted():
                body = await _read_body(receive)
                if body is None:
                    return
                answer = await (self._predict(body) if route == _PREDICT else self._infer(body))
        except Unavailable as e:
            return await _send_json(send, 503, {"error": str(e)}, [(b"retry-after", str(RETRY_AFTER_S).encode())])
        except HTTPException as e:  # the body limit, while reading
            return await _send_json(send, e.status_code, {"error": str(e.detail)})
        if answer is not None:
            scope["route"] = self.routes[route]  # for the metrics' route label
            return await _send_json(send, 200, answer)
        await self.app(scope, _replay(body, receive), send)

    def _text(self, value: Any) -> bool:
        return type(value) is str and 0 < len(value) <= self.max_chars and not value.isspace()

    def _rows(self, value: Any) -> bool:
        return type(value) is list and 0 < len(value) <= self.max_texts

    async def _predict(self, body: bytes) -> dict[str, Any] | None:
        request = _loads(body)
        if type(request) is not dict or len(request) != 1:
            return None
        if self.service.manifest.pairs:
            pairs = request.get("pairs")
            if not (self._rows(pairs) and all(type(p) is list and len(p) == 2 and self._text(p[0]) and self._text(p[1])
                                              for p in pairs)):
                return None
            texts = [tuple(p) for p in pairs]
        else:
            texts = request.get("texts")
            if not (self._rows(texts) and all(self._text(t) for t in texts)):
                return None
        logits, truncated = await self.service.batcher.infer(texts=texts)
        return _predict_answer(self.service, texts, logits, truncated)

    async def _infer(self, body: bytes) -> dict[str, Any] | None:
        request = _loads(body)
        if not (type(request) is dict and request.keys() <= {"id", "inputs", "outputs", "parameters"}
                and type(request.get("id", "")) is str and type(request.get("parameters", {})) is dict
                and type(inputs := request.get("inputs")) is list):
            return None
        tensors = []
        for tensor in inputs:
            if not (type(tensor) is dict and tensor.keys() <= {"name", "shape", "datatype", "parameters", "data"}
                    and type(tensor.get("name")) is str and type(tensor.get("datatype")) is str
                    and type(tensor.get("data")) is list and type(tensor.get("parameters", {})) is dict
                    and type(shape := tensor.get("shape")) is list and all(type(d) is int and d >= 0 for d in shape)):
                return None
            tensors.append(_JsonTensor(tensor["name"], tensor["datatype"], shape, tensor["data"]))
        outputs = request.get("outputs")
        if outputs is not None and not (type(outputs) is list and all(
                type(o) is dict and o.keys() <= {"name", "parameters"} and type(o.get("name")) is str
                and type(o.get("parameters", {})) is dict for o in outputs)):
            return None
        try:
            call = self.v2.parse(tensors, None if outputs is None else [(o["name"], o.get("parameters")) for o in outputs])
        except OnnxpackError:
            return None
        logits, truncated = await self.service.batcher.infer(texts=call.texts, tokens=call.tokens)
        return _infer_answer(self.service, self.v2, call, logits, truncated, request.get("id"))


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; None when the client went away."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already read body again, then whatever the client sends next."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


async def _send_json(send: Send, status: int, answer: Any, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = orjson.dumps(answer)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


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
            body = await _read_body(receive)
            if body is None:
                return
            if v2_binary.HEADER in headers:
                request = v2_binary.decode_request(body, headers[v2_binary.HEADER])
            else:  # plain JSON: parsed here only when it may ask for binary outputs (the handler parses it anyway)
                request = _loads(body) if b'"binary_data' in body else None  # None: the handler answers its 4xx
        except HTTPException as e:  # the body limit, while reading
            return await JSONResponse({"error": str(e.detail)}, e.status_code)(scope, receive, send)
        except OnnxpackError as e:
            return await JSONResponse({"error": e.message}, 400)(scope, receive, send)
        if v2_binary.HEADER in headers:
            body = json.dumps(request).encode()
        kept = [(k, v) for k, v in scope["headers"]
                if k not in (b"content-type", b"content-length", v2_binary.HEADER.encode())]
        scope["headers"] = kept + [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        binary = v2_binary.wants_binary(request) if isinstance(request, dict) else set()
        await self.app(scope, _replay(body, receive), _binary_answer(send, binary) if binary else send)


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

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
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
            self.metrics.note(getattr(scope.get("route"), "path", "unmatched"), str(status), status >= 400,
                              time.perf_counter() - started)


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

    service: Service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:
                threading.Thread(target=exit_after, args=(service.config.grace_s + 2,), daemon=True).start()
            super().handle_exit(sig, frame)

    server = Server(uvicorn_config(app, host, port, access_log))
    service.on_failure = lambda: setattr(server, "should_exit", True)
    threading.Thread(target=exit_unless_ready, args=(service, untrusted.PROBE_TIMEOUT_S), daemon=True).start()
    server.run()
    if service.failed:
        raise OnnxpackError(f"could not serve {service.package.root}: {service.failed}")


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False,
                   log_level: str = "info") -> Any:
    """How every onnxpack server runs on uvicorn: read deadlines, and a bounded graceful shutdown."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, access_log=access_log, http=_timed_protocol(),
                          timeout_graceful_shutdown=app.state.service.config.grace_s, log_level=log_level)
