"""The hot path of `/predict` and V2 `infer`, ahead of FastAPI's routing, which costs as much CPU
as the model (docs/performance.md)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from onnxpack.core.errors import OnnxpackError

from ..service import RETRY_AFTER_S, Service, Unavailable
from ..v2 import V2
from .middleware import read_body, replay
from .schema import (
    INFER,
    PREDICT,
    InferRequest,
    infer_answer,
    predict_answer,
    predict_request,
)


class FastPath:
    """A well-formed request is validated with its route's own body model, batched and answered
    here, with the same admission, limits, answer and metrics as its route. Anything else, every
    mistake included, goes on with its body to the FastAPI route, whose error message it gets.

    Validating with the models (TypeAdapter.validate_json: parse and check in one pass, in Rust)
    costs a little more CPU than orjson and hand checks did, best of 25 on an Intel Xeon:
    1.5 against 0.9 us for a one-text /predict body, 2.3 against 2.1 us for eight texts,
    3.7 against 2.6 us for a one-text V2 body, 6.6 against 5.1 us for eight texts. A request
    costs the server about 400 us of CPU in all, so req/s does not move (scripts/loadtest.py,
    c=32, within its noise); and validation is written once, not twice."""

    def __init__(self, app: ASGIApp, service: Service, v2: V2, routes: dict[str, APIRoute]) -> None:
        self.app = app
        self.service = service
        self.v2 = v2
        self.routes = routes  # path -> the FastAPI route it stands in for (the metrics' route label)
        self.predict_body = TypeAdapter(predict_request(service))
        self.infer_body = TypeAdapter(InferRequest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope)
        if route is None or Headers(scope=scope).get("content-type", "").split(";")[0].strip() != "application/json":
            return await self.app(scope, receive, send)
        try:
            async with self.service.admitted():
                body = await read_body(receive)
                if body is None:
                    return
                answer = await (self._predict(body) if route == PREDICT else self._infer(body))
        except Unavailable as e:
            return await _send_json(send, 503, {"error": str(e)}, [(b"retry-after", str(RETRY_AFTER_S).encode())])
        except HTTPException as e:  # the body limit, while reading
            return await _send_json(send, e.status_code, {"error": str(e.detail)})
        except OnnxpackError as e:  # a well-formed request over a limit only reading it shows (chunk's windows)
            scope["route"] = self.routes[route]
            return await _send_json(send, 400, {"error": str(e)})
        if answer is not None:
            scope["route"] = self.routes[route]
            return await _send_json(send, 200, answer)
        await self.app(scope, replay(body, receive), send)

    def _route(self, scope: Scope) -> str | None:
        """The route a request is for, if the fast path answers it: a POST to /predict or to this model's infer."""
        path = scope["path"] if scope["type"] == "http" and scope["method"] == "POST" else ""
        if path == PREDICT:
            return PREDICT
        if path.startswith("/v2/models/") and path.endswith("/infer") and path[11:-6] == self.service.manifest.name:
            return INFER
        return None

    async def _predict(self, body: bytes) -> dict[str, Any] | None:
        try:
            texts, long_text = self.predict_body.validate_json(body).call(self.service)
        except (ValidationError, OnnxpackError):
            return None
        return predict_answer(self.service, texts, await self.service.infer(long_text, texts=texts))

    async def _infer(self, body: bytes) -> dict[str, Any] | None:
        try:
            request = self.infer_body.validate_json(body)
            call = request.parse(self.v2)
        except (ValidationError, OnnxpackError):
            return None
        answer = await self.service.infer(call.long_text, texts=call.texts, tokens=call.tokens)
        return infer_answer(self.service, self.v2, call, answer, request.id)


async def _send_json(send: Send, status: int, answer: Any, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = orjson.dumps(answer)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
