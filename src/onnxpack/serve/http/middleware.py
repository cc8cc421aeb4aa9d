"""The ASGI middlewares around the HTTP app (the fast path aside): the body limit, V2 bodies as
Triton's clients send them, and the metrics; and reading a body so the app can read it again."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from onnxpack.core.errors import OnnxpackError

from .. import v2_binary
from ..metrics import Metrics


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body; None when the client went away."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already read body again, then whatever the client sends next."""
    replayed = False

    async def replay_body() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay_body


class V2Body:
    """V2 inference bodies as Triton's own clients send them: JSON without a Content-Type, and the
    binary tensor data extension (v2_binary), turned into the plain JSON the one handler reads; the
    answer goes back in binary where the request asks for it. Inside BodyLimit, so its limit holds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/v2/models/")
                and scope["path"].endswith("/infer")):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        try:
            body = await read_body(receive)
            if body is None:
                return
            if v2_binary.HEADER in headers:
                request = v2_binary.decode_request(body, headers[v2_binary.HEADER])
            else:  # plain JSON: parsed here only when it may ask for binary outputs (the handler parses it anyway)
                request = _json_or_none(body) if b'"binary_data' in body else None  # None: the handler answers its 4xx
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
        await self.app(scope, replay(body, receive), _binary_answer(send, binary) if binary else send)


def _json_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


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


class BodyLimit:
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


class MetricsMiddleware:
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
