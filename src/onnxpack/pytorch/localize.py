"""Where does an export diverge? PyTorch module outputs against the ONNX values of the nodes named
after each module, on one batch; the first module (in the order modules finish) whose output
differs beyond the tolerance is where the export went wrong.

torch.onnx names a node after the module that made it (`/model/bert/encoder/layer.1/output/dense/MatMul`),
so a module's output in the graph is a value made inside its scope and read outside it. Only the
torch side (export's self-check, verify) uses this.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from onnxpack.core import onnxfile


@dataclasses.dataclass
class ModuleDiff:
    module: str  # the PyTorch module's qualified name
    onnx_value: str  # the ONNX value compared with its output
    max_abs_diff: float


@dataclasses.dataclass
class Localization:
    first: ModuleDiff | None  # the first module beyond the tolerance, None when none is
    compared: list[ModuleDiff]  # every module matched to an ONNX value, in the order they finished
    atol: float

    def describe(self) -> str:
        if self.first is not None:
            return (f"first diverging module: {self.first.module} (max_abs_diff {self.first.max_abs_diff:.2e}, "
                    f"ONNX value {self.first.onnx_value})")
        if not self.compared:
            return "no module could be matched to the ONNX graph's node names"
        worst = max(self.compared, key=lambda d: d.max_abs_diff)
        return (f"no module differs beyond {self.atol:g} over {len(self.compared)} compared; the largest: "
                f"{worst.module} ({worst.max_abs_diff:.2e})")


def localize(module: torch.nn.Module, onnx_path: Path, feed: dict[str, np.ndarray], atol: float) -> Localization:
    """Compare every submodule's output with the ONNX graph on `feed` (the graph's inputs, in the
    order `module.forward` takes them)."""
    outputs: dict[str, torch.Tensor] = {}
    order: list[str] = []

    def hook(name: str):
        def record(_module, _inputs, output) -> None:
            tensor = output if isinstance(output, torch.Tensor) else next(
                (o for o in (output.values() if isinstance(output, dict) else output if isinstance(output, tuple) else [])
                 if isinstance(o, torch.Tensor)), None)
            if tensor is not None and tensor.is_floating_point():
                outputs[name] = tensor.detach().float().numpy()
                order.append(name)
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in module.named_modules() if name]
    try:
        with torch.no_grad():
            module(*(torch.from_numpy(v) for v in feed.values()))
    finally:
        for handle in handles:
            handle.remove()

    graph = onnx.load(str(onnx_path))
    candidates = _module_outputs(graph, order)
    values = _run_with_outputs(graph, onnx_path, feed, sorted({v for vs in candidates.values() for v in vs}))
    compared: list[ModuleDiff] = []
    first = None
    for name in dict.fromkeys(order):
        expected = outputs[name]
        match = next((v for v in candidates.get(name, []) if values.get(v) is not None
                      and values[v].shape == expected.shape), None)
        if match is None:
            continue
        diff = ModuleDiff(name, match, float(np.abs(values[match].astype(np.float32) - expected).max()))
        compared.append(diff)
        if first is None and not diff.max_abs_diff <= atol:
            first = diff
    return Localization(first=first, compared=compared, atol=atol)


def _scope(module_name: str) -> str:
    """torch.onnx's node-name prefix for a module: `model.bert.encoder.layer.1` -> `/model/bert/encoder/layer.1/`."""
    parts, out = module_name.split("."), []
    for part in parts:  # a list index joins its container's name: layer.1, not layer/1
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}.{part}"
        else:
            out.append(part)
    return "/" + "/".join(out) + "/"


def _module_outputs(graph: onnx.ModelProto, modules: list[str]) -> dict[str, list[str]]:
    """Per module, the values made by its nodes and read by a node outside it (or a graph output),
    the last made first."""
    readers: dict[str, list[str]] = {}
    for node in graph.graph.node:
        for value in node.input:
            readers.setdefault(value, []).append(node.name)
    graph_outputs = {o.name for o in graph.graph.output}
    result: dict[str, list[str]] = {}
    for name in dict.fromkeys(modules):
        scope = _scope(name)
        made = [out for node in graph.graph.node if node.name.startswith(scope) for out in node.output]
        leaving = [v for v in made if v in graph_outputs or any(not r.startswith(scope) for r in readers.get(v, []))]
        if leaving:
            result[name] = list(reversed(leaving))
    return result


def _run_with_outputs(graph: onnx.ModelProto, onnx_path: Path, feed: dict[str, np.ndarray],
                      names: list[str]) -> dict[str, np.ndarray]:
    """The graph's values `names` on `feed`: each made a graph output, typed by shape inference."""
    inferred = onnx.shape_inference.infer_shapes(graph)
    types = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    existing = {o.name for o in graph.graph.output}
    for name in names:
        if name not in existing and name in types:  # a value shape inference could not type is left out
            graph.graph.output.append(types[name])
    with tempfile.TemporaryDirectory(prefix="onnxpack-localize-") as tmp:
        path = Path(tmp) / onnx_path.name
        onnxfile.save(graph, path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every value
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        wanted = [o.name for o in session.get_outputs() if o.name in set(names)]
        return dict(zip(wanted, session.run(wanted, feed)))
