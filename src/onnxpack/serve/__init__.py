"""Serve a package: one process, one ONNX Runtime session, two protocols.

    service.py     the package, its limits and the model's lifecycle (load, warm up, drain)
    batcher.py     the micro-batcher every protocol shares: rows from many requests, few model calls
    admission.py   the cap on requests in progress, and the bounded queue behind it
    metrics.py     the Prometheus metrics
    v2.py          the Open Inference Protocol (KServe V2) apart from any transport
    v2_binary.py   its binary tensor data extension
    http/          HTTP: FastAPI (/predict, V2 REST, /metrics, a web page): schema, app, fast_path, middleware
    runner.py      uvicorn, as every onnxpack server runs on it: read deadlines, a bounded graceful shutdown
    grpc_api.py    gRPC: V2's GRPCInferenceService, beside HTTP on --grpc-port

The HTTP and gRPC modules never import each other's framework; this module puts them together.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from onnxpack.core.package import Package

from .http.app import build_app
from .runner import run, uvicorn_config
from .service import ServeConfig, Service

__all__ = ["ServeConfig", "create_app", "run", "uvicorn_config"]


def create_app(package_dir: str | Path | Package, config: ServeConfig | None = None) -> FastAPI:
    """The server for one package: the HTTP app, with the gRPC service beside it when
    `config.grpc_port` is set (it starts and stops with the app's lifespan)."""
    service = Service(package_dir, config)
    if service.config.grpc_port:
        from .grpc_api import GrpcFrontend  # gRPC only when asked for

        service.frontends.append(GrpcFrontend(service, service.config.host, service.config.grpc_port))
    return build_app(service)
