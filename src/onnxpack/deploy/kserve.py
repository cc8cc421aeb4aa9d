"""A KServe InferenceService for a Triton repository that `export-serving` wrote.

KServe's Triton runtime (`kserve-tritonserver`) serves the repository at `storageUri` over the
Open Inference Protocol (V2), the protocol `onnxpack serve` speaks; clients call the `<name>_text`
ensemble. `validate` checks the document against the fields KServe documents for
`serving.kserve.io/v1beta1` predictors (https://kserve.github.io/website/, "InferenceService").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from onnxpack.core.atomic import atomic_write_text
from onnxpack.core.errors import OnnxpackError

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
RUNTIME = "kserve-tritonserver"  # the ClusterServingRuntime KServe installs for Triton
STORAGE_SCHEMES = ("gs://", "s3://", "pvc://", "https://", "http://", "hdfs://", "webhdfs://", "oci://")
# Kubernetes object names (DNS-1035 labels): what KServe accepts as an InferenceService name.
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
MODEL_FIELDS = {"modelFormat", "protocolVersion", "runtime", "runtimeVersion", "storageUri", "resources", "args",
                "env", "ports"}


def service_name(model_name: str) -> str:
    """A DNS-1035 name for the service from a Triton model name."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")
    name = name if name[:1].isalpha() else f"m-{name}"
    return name[:63].rstrip("-") or "onnxpack-model"


def inference_service(model_name: str, storage_uri: str, triton_version: str | None, gpu: bool,
                      cpus: int = 2, memory: str = "4Gi") -> dict[str, Any]:
    """The InferenceService document, as a dict."""
    resources = {"cpu": str(cpus), "memory": memory, **({"nvidia.com/gpu": "1"} if gpu else {})}
    model: dict[str, Any] = {
        "modelFormat": {"name": "triton"},
        "protocolVersion": "v2",
        "runtime": RUNTIME,
        "storageUri": storage_uri,
        "resources": {"requests": resources, "limits": dict(resources)},
    }
    if triton_version:  # the image tag the compatibility check was run against
        model["runtimeVersion"] = f"{triton_version}-py3"
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": service_name(model_name),
                         "annotations": {"onnxpack/entry-model": f"{model_name}_text"}},
            "spec": {"predictor": {"model": model}}}


def validate(document: Any) -> None:
    """Refuse a document KServe would reject: the fields its v1beta1 InferenceService documents."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise OnnxpackError(f"the InferenceService is invalid: {what}")

    need(isinstance(document, dict), "it is not a mapping")
    need(document.get("apiVersion") == API_VERSION, f"apiVersion must be {API_VERSION}")
    need(document.get("kind") == KIND, f"kind must be {KIND}")
    name = (document.get("metadata") or {}).get("name")
    need(isinstance(name, str) and bool(DNS_1035.match(name)), f"metadata.name {name!r} is not a DNS-1035 label")
    model = ((document.get("spec") or {}).get("predictor") or {}).get("model")
    need(isinstance(model, dict), "spec.predictor.model is missing")
    unknown = set(model) - MODEL_FIELDS
    need(not unknown, f"spec.predictor.model has unknown fields {sorted(unknown)}")
    need((model.get("modelFormat") or {}).get("name") == "triton", "modelFormat.name must be triton")
    need(model.get("protocolVersion") == "v2", "protocolVersion must be v2 (the Open Inference Protocol)")
    uri = model.get("storageUri")
    need(isinstance(uri, str) and uri.startswith(STORAGE_SCHEMES),
         f"storageUri {uri!r} must start with one of {', '.join(STORAGE_SCHEMES)}")
    for part in ("requests", "limits"):
        values = (model.get("resources") or {}).get(part, {})
        need(isinstance(values, dict) and all(isinstance(v, str) for v in values.values()),
             f"resources.{part} must map names to quantity strings")


def check_path(path: str | Path) -> None:
    """Refuse an output path in a missing folder (called before the repository is written)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OnnxpackError(f"--kserve {path}: folder {path.parent} does not exist", hint="create it first")
    if path.is_dir():
        raise OnnxpackError(f"--kserve {path} is a folder", hint="name a .yaml file")


def write(path: str | Path, document: dict[str, Any]) -> None:
    """Validate, dump, re-read and validate again, then write atomically."""
    path = Path(path)
    check_path(path)
    validate(document)
    text = yaml.safe_dump(document, sort_keys=False)
    validate(yaml.safe_load(text))
    atomic_write_text(path, text)
