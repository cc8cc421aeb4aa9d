"""The gRPC front end: the Open Inference Protocol's GRPCInferenceService, as Triton serves it,
so `tritonclient.grpc` works unchanged. It listens on its own port beside HTTP, in the same
process and event loop, on the same `Service`: one batcher, one admission, one set of limits.

Tensors come as typed `contents` or as `raw_input_contents` (the client's default, decoded as the
REST binary extension decodes its parts); answers go back as `raw_output_contents`, as Triton's do.
The request's `long_text` parameter is read as HTTP reads it; the answer's `truncated` and (under
chunk) `windows` parameters are JSON lists in `string_param`.
Every mistake gets a status and a message, never a crash: INVALID_ARGUMENT for bad tensors and
limits, NOT_FOUND for an unknown model, UNAVAILABLE while loading or when the queue is full, and
RESOURCE_EXHAUSTED (from gRPC itself) for a message over `max_body_bytes`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from onnxpack import __version__
from onnxpack.core.errors import OnnxpackError

from . import v2_binary
from .service import Service, Unavailable, UnknownModel
from .v2 import EXTENSIONS, V2, Tensor

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
# The InferTensorContents field holding each datatype's values.
CONTENTS = {"BYTES": "bytes_contents", "INT64": "int64_contents", "INT32": "int_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BOOL": "bool_contents", "UINT64": "uint64_contents", "UINT32": "uint_contents"}


class GrpcFrontend:
    """The gRPC server of one Service; the HTTP lifespan starts and stops it (Service.running)."""

    def __init__(self, service: Service, host: str, port: int) -> None:
        self.service = service
        self.address = f"{host}:{port}"
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        limit = self.service.config.max_body_bytes
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                               ("grpc.so_reuseport", 0)])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(self.service), self.server)
        try:
            self.server.add_insecure_port(self.address)
        except RuntimeError as e:
            raise OnnxpackError(f"gRPC cannot listen on {self.address}: {e}",
                                hint="pick another --grpc-port, or --grpc-port 0 for none") from None
        await self.server.start()
        log.info("gRPC (V2 GRPCInferenceService) on %s", self.address)

    async def stop(self, grace_s: float) -> None:
        if self.server is not None:
            await self.server.stop(grace_s)  # in-flight calls get grace_s to finish


def _rpc(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Maps the service's errors to gRPC statuses, and counts and times every call."""
    route = f"/{SERVICE_NAME}/{method.__name__}"

    @functools.wraps(method)
    async def call(self: _Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await method(self, request, context)
        except OnnxpackError as e:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(e)
        except UnknownModel as e:
            code, message = grpc.StatusCode.NOT_FOUND, str(e)
        except Unavailable as e:
            code, message = grpc.StatusCode.UNAVAILABLE, str(e)
        except Exception as e:  # noqa: BLE001 -- a bug, never the caller's input: say so, keep serving
            log.exception("gRPC %s failed", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, f"internal server error ({type(e).__name__})"
        finally:
            self.service.metrics.note(route, code.name, code != grpc.StatusCode.OK, time.perf_counter() - started)
        await context.abort(code, message)

    return call


class _Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: Service) -> None:
        self.service = service
        self.v2 = V2(service)

    @_rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.service.failed is None)

    @_rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready)

    @_rpc
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="onnxpack", version=__version__, extensions=list(EXTENSIONS))

    @_rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        self.service.check_model(request.name)
        return pb.ModelReadyResponse(ready=self.service.ready)

    @_rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        self.service.check_model(request.name)
        return pb.ModelMetadataResponse(**self.v2.metadata())

    @_rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        service = self.service
        service.check_model(request.model_name)
        async with service.admitted():
            call = self.v2.parse(_tensors(request), [(o.name, {k: _parameter(v) for k, v in o.parameters.items()})
                                                     for o in request.outputs] or None,
                                 {k: _parameter(v) for k, v in request.parameters.items()})
            answer = await service.infer(call.long_text, texts=call.texts, tokens=call.tokens)
        logits = answer.logits
        results = service.predictor.results(call.texts or [None] * len(logits), logits)
        response = pb.ModelInferResponse(model_name=service.manifest.name, id=request.id)
        if call.texts:
            response.parameters["truncated"].string_param = json.dumps(answer.truncated)
        if answer.windows is not None:  # a JSON list, as `truncated`: a V2 parameter holds one value
            response.parameters["windows"].string_param = json.dumps(answer.windows)
        for name, datatype, shape, values in self.v2.answer(logits, results, call):
            response.outputs.add(name=name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(v2_binary.tensor_bytes(datatype, values))
        return response


def _tensors(request: pb.ModelInferRequest) -> list[Tensor]:
    """The request's inputs with their values, from raw_input_contents or the typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise OnnxpackError(f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs")
    tensors = []
    for i, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        if raw:
            data = v2_binary.elements(raw[i], tensor.name, tensor.datatype, shape)
        elif tensor.datatype == "BYTES":
            try:
                data = [b.decode("utf-8") for b in tensor.contents.bytes_contents]
            except UnicodeDecodeError:
                raise OnnxpackError(f"input {tensor.name!r}: a text is not UTF-8") from None
        else:
            field = CONTENTS.get(tensor.datatype)
            data = list(getattr(tensor.contents, field)) if field else []
        tensors.append(Tensor(tensor.name, tensor.datatype, shape, data))
    return tensors


def _parameter(value: pb.InferParameter) -> Any:
    """An InferParameter's value, whichever field holds it."""
    field = value.WhichOneof("parameter_choice")
    return getattr(value, field) if field else None
