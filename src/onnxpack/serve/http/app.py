"""The FastAPI app: its routes and its error handlers.

Bad input always gets a 4xx with the KServe V2 error body `{"error": "..."}`:
invalid JSON or UTF-8, lone surrogates, empty texts, too many or too long texts,
token ids outside the vocabulary, mismatched shapes, a body over `max_body_bytes`.
A text longer than the package's `max_length` tokens is truncated, as
`onnxpack predict` does, and the response lists it under `truncated`; or, under
`long_text` chunk (the server's default or the request's), read whole in windows.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at
# definition time, and the /predict body model is built inside _inference_routes from the limits.
import contextlib
import html
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from onnxpack import __version__
from onnxpack.core import page as try_page
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.htmlsafe import content_security_policy
from onnxpack.core.package import MULTI_LABEL

from .. import v2_binary
from ..service import RETRY_AFTER_S, Service, Unavailable, UnknownModel
from ..v2 import EXTENSIONS, V2, describe_errors
from .fast_path import FastPath
from .middleware import BodyLimit, MetricsMiddleware, V2Body
from .schema import (
    EXPLAIN,
    INFER,
    PREDICT,
    ExplainResponse,
    InferRequest,
    InferResponse,
    Liveness,
    ModelMetadata,
    PredictResponse,
    Readiness,
    ServerMetadata,
    error_responses,
    infer_answer,
    predict_answer,
    predict_request,
)

# FastAPI 0.16x asks OpenTelemetry on every request whether tracing is set up; serve exports its
# own Prometheus metrics, so it opts out (older FastAPI has no such option and no such cost).
_NO_TELEMETRY: dict[str, Any] = ({"telemetry": {"tracing": False, "metrics": False, "logs": False}}
                                 if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})


def build_app(service: Service) -> FastAPI:
    """The FastAPI app for one service. The model loads in the lifespan, in the background:
    `/v2/health/live` answers at once, `/v2/health/ready` once a warm-up inference has run."""
    v2 = V2(service)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service.running():
            yield

    app = FastAPI(title=f"onnxpack: {service.manifest.name}", version=__version__, lifespan=lifespan, **_NO_TELEMETRY,
                  docs_url=None, redoc_url=None,  # served by _page_and_metrics, with the title escaped
                  description="Text classification with an onnxpack package: `/predict` and the Open Inference "
                              "Protocol (KServe V2).")
    app.state.service = service
    inference = _inference_routes(service, v2)
    app.add_middleware(FastPath, service=service, v2=v2, routes={route.path: route for route in inference.routes})
    app.add_middleware(V2Body)
    app.add_middleware(BodyLimit, limit=service.config.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    _add_error_handlers(app)
    app.include_router(_page_and_metrics(service))
    app.include_router(_v2_metadata(service, v2))
    app.include_router(inference)
    _drop_unused_422(app)
    return app


def _inference_routes(service: Service, v2: V2) -> APIRouter:
    """`/predict`, `/explain` and V2 `infer`: the routes that take an admission slot (the fast path stands in for
    /predict and infer)."""
    inference = APIRouter(route_class=_AdmittedRoute)
    predict_body = predict_request(service)

    @inference.post(PREDICT, response_model=PredictResponse, responses=error_responses(400, 413, 503),
                    summary="Classify texts: one object per text, as `onnxpack predict` prints them")
    async def predict(body: predict_body) -> JSONResponse:  # type: ignore[valid-type]
        texts, long_text = body.call(service)
        return JSONResponse(predict_answer(service, texts, await service.infer(long_text, texts=texts)))

    @inference.post(EXPLAIN, response_model=ExplainResponse, responses=error_responses(400, 413, 503),
                    summary="Which words moved each answer: the body of /predict, each word's attribution "
                            "(leave-one-word-out occlusion)")
    async def explain(body: predict_body) -> JSONResponse:  # type: ignore[valid-type]
        texts, long_text = body.call(service)
        return JSONResponse({"model": service.manifest.name,
                             "explanations": await service.explain(long_text, texts)})

    @inference.post(INFER, response_model=InferResponse, responses=error_responses(400, 404, 413, 503),
                    summary="V2 inference: text as a BYTES tensor, or input_ids/attention_mask as INT64 tensors")
    async def infer(name: str, body: InferRequest) -> JSONResponse:
        service.check_model(name)
        call = body.parse(v2)
        answer = await service.infer(call.long_text, texts=call.texts, tokens=call.tokens)
        return JSONResponse(infer_answer(service, v2, call, answer, body.id))

    return inference


def _page_and_metrics(service: Service) -> APIRouter:
    router = APIRouter()
    manifest, multi_label = service.manifest, service.manifest.problem_type == MULTI_LABEL
    # What the page needs to know of the model and the server, in a JSON data block (not run, so no
    # hash): it shows two boxes for a pair model, label chips and thresholds for a multi-label one, and
    # its long-text switch where the server allows chunk.
    model = {"labels": list(manifest.labels), "pairs": bool(manifest.pairs), "multi_label": multi_label,
             "thresholds": list(manifest.thresholds or []) if multi_label else None,
             "max_length": manifest.max_length, "long_text": service.config.long_text,
             "chunk": service.config.max_windows > 1, "explain": True, "browser": False}
    page_html = try_page.render(manifest.name, model)
    # The page's own inline script and style, by hash (taken from the template, before the name is put
    # in), and fetch() to this server: nothing else runs, loads or frames it. Labels and texts come
    # from /predict and /explain as JSON and go in through textContent.
    headers = {"Content-Security-Policy": content_security_policy(try_page.template(), served=True, connect_self=True),
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

    @router.get("/", response_class=HTMLResponse, summary="A page to try the model in a browser")
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html, headers=headers)

    # FastAPI's own /docs and /redoc put the app's title (the package's name) into <title> unescaped.
    title = html.escape(f"onnxpack: {service.manifest.name}")

    @router.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json",
                                   title=f"{title} - Swagger UI")

    @router.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json", title=f"{title} - ReDoc")

    @router.get("/metrics", response_class=Response, summary="Prometheus metrics",
                responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}})
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _v2_metadata(service: Service, v2: V2) -> APIRouter:
    """V2's health and metadata routes."""
    router = APIRouter()

    @router.get("/v2", response_model=ServerMetadata, summary="V2 server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "onnxpack", "version": __version__, "extensions": [*EXTENSIONS, *v2_binary.EXTENSIONS]}

    @router.get("/v2/health/live", response_model=Liveness, responses={503: {"model": Liveness}},
                summary="V2 liveness: the process is up (and the model did not fail to load)")
    async def live() -> JSONResponse:
        return JSONResponse({"live": service.failed is None}, 200 if service.failed is None else 503)

    @router.get("/v2/health/ready", response_model=Readiness, responses={503: {"model": Readiness}},
                summary="V2 readiness: the model is loaded and warmed up")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": service.ready}, 200 if service.ready else 503)

    @router.get("/v2/models/{name}", response_model=ModelMetadata, responses=error_responses(404),
                summary="V2 model metadata")
    async def model_metadata(name: str) -> dict[str, Any]:
        service.check_model(name)
        return v2.metadata()

    @router.get("/v2/models/{name}/ready", response_model=Readiness,
                responses={**error_responses(404), 503: {"model": Readiness}}, summary="V2 model readiness")
    async def model_ready(name: str) -> JSONResponse:
        service.check_model(name)
        return JSONResponse({"ready": service.ready}, 200 if service.ready else 503)

    return router


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
