"""Look inside an ONNX model or package: identity, contract, structure, weights, compute, validity.

`summarize(path)` returns a JSON-ready dict (the ONNX-proto helpers it reads with live in
core.onnxfile). Everything here is read from the graph alone (plus one trial load in ONNX Runtime).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from onnxpack.core import untrusted
from onnxpack.core.config import InspectConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.onnxfile import (
    all_nodes,
    check,
    constant_tensors,
    count_macs,
    dtype_name,
    load_model,
    node_key,
    op_histogram,
    tensor_bytes,
    value_spec,
)
from onnxpack.core.ortformat import is_ort_file
from onnxpack.core.package import FP32, Package, not_onnx, sha256_file

log = logging.getLogger(__name__)

LARGEST = 10  # how many of the biggest weight tensors the report lists
DEFAULT_SEQ = 128  # sequence length for compute when neither --seq nor the model states a max length


@dataclasses.dataclass
class Source:
    """Where a model came from: a bare .onnx file, or one variant of a package."""

    path: Path  # the .onnx file
    package: Package | None = None
    variant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "package": str(self.package.root) if self.package else None,
                "variant": self.variant}

    @property
    def title(self) -> str:
        return f"{self.package.name} · {self.variant} ({self.path.name})" if self.package else self.path.name


def resolve(path: str | Path, variant: str | None = None, command: str = "inspect") -> Source:
    """A package directory (one of its variants; default fp32, the exported graph) or an .onnx file;
    an ORT-format package or file is refused in one line naming `command`."""
    path = Path(path)
    if path.is_dir():
        package = Package.open(path)
        package.require_onnx(command)
        variant = variant or FP32
        untrusted.trust(package.variant_path(variant), package)
        return Source(package.variant_path(variant), package, variant)
    if not path.is_file():
        raise OnnxpackError(f"{path} does not exist", hint="pass a package folder or an .onnx file")
    if variant:
        raise OnnxpackError(f"--variant needs a package folder; {path} is a single file")
    if is_ort_file(path):
        raise not_onnx(path, command, package=False)
    untrusted.trust(path)
    return Source(path)


# --- the report ---------------------------------------------------------------------------------------------

def summarize(path: str | Path, config: InspectConfig | None = None) -> dict[str, Any]:
    """Everything `onnxpack inspect` shows, as a JSON-ready dict."""
    config = config or InspectConfig()
    config.validate()
    source = resolve(path, config.variant)
    model = load_model(source.path, load_weights=False)  # sizes come from dims; no need for the bytes
    contract = _contract(model, source.package)
    batch, seq = config.batch, config.seq or contract["max_length"] or DEFAULT_SEQ
    return {
        "source": source.to_dict(),
        "identity": _identity(model, source.path),
        "contract": contract,
        "structure": _structure(model),
        "weights": _weights(model),
        "compute": _compute(model, batch, seq),
        "validity": _validity(source),
    }


def _identity(model: onnx.ModelProto, path: Path) -> dict[str, Any]:
    return {
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p),
        "model_version": model.model_version,
        "doc_string": model.doc_string,
        "metadata_props": {p.key: p.value for p in model.metadata_props},
    }


def _contract(model: onnx.ModelProto, package: Package | None) -> dict[str, Any]:
    initializers = {t.name for t in model.graph.initializer}  # IR < 4 lists weights as inputs too
    contract: dict[str, Any] = {
        "inputs": [value_spec(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [value_spec(v) for v in model.graph.output],
        "labels": None, "max_length": None, "from": None,
    }
    if package:
        contract.update(labels=package.manifest.labels, max_length=package.manifest.max_length, **{"from": "manifest"})
        return contract
    # A bare .onnx file that onnxpack wrote still says what it is (see docs/package-format.md).
    props = {p.key: p.value for p in model.metadata_props}
    try:
        if "onnxpack.labels" in props:
            contract.update(labels=json.loads(props["onnxpack.labels"]), **{"from": "metadata_props"})
        if "onnxpack.max_length" in props:
            contract.update(max_length=int(props["onnxpack.max_length"]), **{"from": "metadata_props"})
    except ValueError:
        log.warning("ignoring malformed onnxpack.* metadata_props")
    return contract


def _structure(model: onnx.ModelProto) -> dict[str, Any]:
    nested = all_nodes(model.graph)
    custom = collections.Counter(n.domain for n in nested if n.domain not in ("", "ai.onnx"))
    return {
        "nodes": len(model.graph.node),
        "nodes_in_subgraphs": len(nested) - len(model.graph.node),
        "op_types": op_histogram(model),
        "custom_domains": dict(custom.most_common()),
        "functions": [f"{f.domain}.{f.name}" for f in model.functions],
    }


def _weights(model: onnx.ModelProto) -> dict[str, Any]:
    """Initializers by name: a tensor that several nodes read (tied weights) is counted once."""
    uses = collections.Counter(name for n in all_nodes(model.graph) for name in n.input)
    by_dtype: dict[str, dict[str, int]] = {}
    tensors = []
    for t in model.graph.initializer:
        dtype = dtype_name(t.data_type)
        row = {"name": t.name, "dtype": dtype, "shape": list(t.dims), "parameters": math.prod(t.dims),
               "bytes": tensor_bytes(t), "uses": uses[t.name]}
        tensors.append(row)
        totals = by_dtype.setdefault(dtype, {"tensors": 0, "parameters": 0, "bytes": 0})
        for key in ("parameters", "bytes"):
            totals[key] += row[key]
        totals["tensors"] += 1
    constants = constant_tensors(model.graph)
    return {
        "parameters": sum(r["parameters"] for r in tensors),
        "bytes": sum(r["bytes"] for r in tensors),
        "initializers": len(tensors),
        "shared": sorted(({"name": r["name"], "uses": r["uses"]} for r in tensors if r["uses"] > 1),
                         key=lambda r: -r["uses"]),
        "unused": [r["name"] for r in tensors if not r["uses"]],
        "by_dtype": dict(sorted(by_dtype.items(), key=lambda kv: -kv[1]["bytes"])),
        "largest": sorted(tensors, key=lambda r: -r["bytes"])[:LARGEST],
        # Constant nodes hold shapes and scalars in exported graphs: listed apart, not counted as parameters.
        "constant_nodes": {"count": len(constants), "parameters": sum(math.prod(t.dims) for t in constants),
                           "bytes": sum(tensor_bytes(t) for t in constants)},
    }


def _compute(model: onnx.ModelProto, batch: int, seq: int) -> dict[str, Any]:
    macs, unsized = count_macs(model, batch, seq)
    ops = {node_key(i, n): n.op_type for i, n in enumerate(model.graph.node)}
    by_op: collections.Counter[str] = collections.Counter()
    for name, n in macs.items():
        by_op[ops[name]] += n
    total = sum(macs.values())
    return {
        "batch": batch, "seq": seq, "macs": total, "flops": 2 * total,
        "by_op": dict(by_op.most_common()),
        "nodes": [{"name": name, "op": ops[name], "macs": n, "flops": 2 * n}
                  for name, n in sorted(macs.items(), key=lambda kv: -kv[1])],
        "unsized": unsized,
        "counted_ops": "matrix products (MatMul, Gemm and their fused/quantized forms, Conv, Attention); "
                       "elementwise ops are linear in tensor size and left out",
    }


def _validity(source: Source) -> dict[str, Any]:
    validity: dict[str, Any] = {"checker": {"ok": True, "error": None}}
    try:
        # By path, so models with external data (or over 2 GB) are checked too.
        check(source.path)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        validity["checker"] = {"ok": False, "error": _first_line(e)}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # loading is the question
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(source.path), options, providers=["CPUExecutionProvider"])
        validity["onnxruntime"] = {"version": ort.__version__, "loads": True, "error": None}
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises several pybind types; any failure is the finding
        validity["onnxruntime"] = {"version": ort.__version__, "loads": False, "error": _first_line(e)}
    package = source.package
    validity["parity"] = package.manifest.parity if package else None
    if package and source.variant in package.manifest.variants:
        figures = package.manifest.variants[source.variant]
        validity["variant_gate"] = {k: figures[k] for k in ("n", "mcc", "mcc_drop", "agreement", "max_abs_diff", "at")
                                    if k in figures}
    return validity


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
