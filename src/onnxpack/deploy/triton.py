"""A Triton model repository that takes raw text: what `onnxpack export-serving` writes.

    <name>/               the package's ONNX graph on Triton's onnxruntime backend, with labels.txt
                          on its logits so Triton's classification extension names the classes
    <name>_tokenizer/     the package's tokenizer.json in a Python-backend model (text -> tokens)
    <name>_postprocess/   a Python-backend model (logits -> label, score)
    <name>_text/          the ensemble clients call: text (TYPE_STRING) in; logits, label, score out

Every config.pbtxt is built as Triton's own `ModelConfig` protobuf (from tritonclient) and parsed
back without unknown fields before anything is renamed into place. `validate` also checks what the
parse cannot: dims against the ONNX graph, max_batch_size against its dynamic axis, and the
ensemble's wiring. The tokenizer pads every row to the package's max_length, because Triton's
dynamic batcher merges only requests of the same shape (docs/serving.md weighs the cost).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

from onnxpack.core import untrusted
from onnxpack.core.atomic import AtomicDir
from onnxpack.core.config import ServingConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import MULTI_LABEL, Manifest, Package, graph_files
from onnxpack.deploy import compat

MODELS_SOURCE = Path(__file__).parent / "triton_models"  # the Python-backend model.py files we copy
LABELS_FILE = "labels.txt"
ONNX_TYPES = {onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32",
              onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}
TEXT, TEXT_PAIR = "text", "text_pair"  # the same tensor names as `onnxpack serve`'s V2 route


def model_names(name: str) -> dict[str, str]:
    """The four model names of a repository for the package named `name`."""
    return {"model": name, "tokenizer": f"{name}_tokenizer", "postprocess": f"{name}_postprocess",
            "ensemble": f"{name}_text"}


def triton_name(package_name: str) -> str:
    """A model name Triton and URLs take: letters, digits, `-` and `_`."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", package_name).strip("_-")
    return name or "model"


@cache
def model_config_pb2() -> ModuleType:
    """Triton's ModelConfig protobuf module, loaded from tritonclient's file: importing it through
    `tritonclient.grpc` would need grpcio, which writing a repository does not."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise OnnxpackError("export-serving needs tritonclient to validate Triton's config.pbtxt",
                            hint="pip install 'onnxpack[triton]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("onnxpack_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def write_repository(package_dir: str | Path, out: str | Path, config: ServingConfig | None = None) -> dict[str, Any]:
    """Write the repository into `out` atomically and validate it; returns what was written.

    `out` must be missing, empty, or hold only this package's four models (a rerun replaces them)."""
    config = config or ServingConfig()
    config.validate()
    target = compat.parse_target(config.target or compat.newest_triton())
    if target.kind != "triton":
        raise OnnxpackError(f"--target {config.target} is not a Triton release", hint="pass --target triton==YY.MM")
    package = Package.open(package_dir)
    package.require_onnx("export-serving")
    names = model_names(triton_name(package.name))
    out = Path(out)
    _check_folder(out, set(names.values()))
    if not out.parent.is_dir():
        raise OnnxpackError(f"--triton {out}: folder {out.parent} does not exist", hint="create it first")
    variant = config.variant or package.default_variant(
        ["CUDAExecutionProvider" if config.gpu else "CPUExecutionProvider"], batch_invariant=True)
    graph = package.variant_path(variant)
    untrusted.trust(graph, package)
    compat.require(package, target, variant)
    m = package.manifest
    length = config.pad_to or m.max_length
    if not 2 <= length <= m.max_length:
        raise OnnxpackError(f"--pad-to {length} must be between 2 and the package's max_length {m.max_length}")
    proto = onnx.load(str(graph), load_external_data=False)
    inputs = [(t.name, _triton_type(t.type.tensor_type.elem_type, t.name)) for t in proto.graph.input]
    layout = _Layout(names, m, inputs, [TEXT, TEXT_PAIR] if m.pairs else [TEXT], length)
    model_config_pb2()  # without tritonclient this fails here, before any folder is made
    with AtomicDir(out, force=True) as tmp:
        _write_models(tmp, layout, graph, package.tokenizer_path, config)
        validate(tmp)
    return {"repository": str(out), "models": names, "variant": variant, "graph": graph.name,
            "pad_to": length, "text_inputs": layout.text_inputs, "target": str(target),
            "triton_version": target.version}


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What the four models' configs are built from."""

    names: dict[str, str]  # model_names()
    manifest: Manifest
    inputs: list[tuple[str, str]]  # the graph's inputs: (name, Triton type)
    text_inputs: list[str]  # the ensemble's string inputs: text, and text_pair for a pair model
    length: int  # every row is padded (and cut) to this many tokens


def _write_models(root: Path, layout: _Layout, graph: Path, tokenizer_path: Path, config: ServingConfig) -> None:
    """The four model folders: config.pbtxt, version folder 1/ with the graph or model.py, labels.txt."""
    names, labels = layout.names, layout.manifest.labels
    model_dir = root / names["model"]
    (model_dir / "1").mkdir(parents=True)
    for path in graph_files(graph):  # an external-data file keeps the name the graph refers to
        shutil.copyfile(path, model_dir / "1" / ("model.onnx" if path == graph else path.name))
    for folder in (model_dir, root / names["ensemble"]):  # the classification extension on either
        folder.mkdir(parents=True, exist_ok=True)
        (folder / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    model_source = "onnx_model.py" if config.model_backend == "python" else None
    for config_pb, source in ((_onnx_model_config(layout, config), model_source),
                              (_tokenizer_config(layout, config), "tokenizer.py"),
                              (_postprocess_config(layout, config), "postprocess.py"),
                              (_ensemble_config(layout, config), None)):
        folder = root / config_pb.name
        (folder / "1").mkdir(parents=True, exist_ok=True)  # an ensemble needs its empty version folder too
        (folder / "config.pbtxt").write_text(_text_format(config_pb), encoding="utf-8")
        if source:
            shutil.copyfile(MODELS_SOURCE / source, folder / "1" / "model.py")
    shutil.copyfile(tokenizer_path, root / names["tokenizer"] / "1" / "tokenizer.json")


def _onnx_model_config(layout: _Layout, config: ServingConfig) -> Any:
    """The graph, on Triton's onnxruntime backend or in a Python-backend model."""
    pb = model_config_pb2()
    return pb.ModelConfig(
        name=layout.names["model"], backend=config.model_backend, max_batch_size=config.max_batch,
        input=[pb.ModelInput(name=n, data_type=pb.DataType.Value(t), dims=[-1]) for n, t in layout.inputs],
        output=[_logits_output(layout)],
        dynamic_batching=pb.ModelDynamicBatching(max_queue_delay_microseconds=config.max_queue_delay_us),
        instance_group=[pb.ModelInstanceGroup(
            count=config.instances,
            kind=pb.ModelInstanceGroup.KIND_GPU if config.gpu else pb.ModelInstanceGroup.KIND_CPU)],
        parameters=_parameters(threads=0) if config.model_backend == "python" else {})


def _tokenizer_config(layout: _Layout, config: ServingConfig) -> Any:
    """Text in, the graph's inputs out, every row `layout.length` tokens."""
    pb = model_config_pb2()
    m = layout.manifest
    return pb.ModelConfig(
        name=layout.names["tokenizer"], backend="python", max_batch_size=config.max_batch,
        input=_string_inputs(layout),
        output=[pb.ModelOutput(name=n, data_type=pb.DataType.Value(t), dims=[layout.length]) for n, t in layout.inputs],
        dynamic_batching=pb.ModelDynamicBatching(max_queue_delay_microseconds=config.max_queue_delay_us),
        instance_group=[pb.ModelInstanceGroup(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)],
        parameters=_parameters(tokenizer_file="tokenizer.json", max_length=layout.length,
                               pad_token_id=m.pad_token_id))


def _postprocess_config(layout: _Layout, config: ServingConfig) -> Any:
    """Logits in; label and score (and for multi-label, every label over its threshold) out."""
    pb = model_config_pb2()
    m = layout.manifest
    return pb.ModelConfig(
        name=layout.names["postprocess"], backend="python", max_batch_size=config.max_batch,
        input=[pb.ModelInput(name="logits", data_type=pb.TYPE_FP32, dims=[len(m.labels)])],
        output=_label_outputs(layout),
        instance_group=[pb.ModelInstanceGroup(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)],
        parameters=_parameters(labels=json.dumps(m.labels), problem_type=m.problem_type,
                               thresholds=json.dumps(m.thresholds or [])))


def _ensemble_config(layout: _Layout, config: ServingConfig) -> Any:
    """The model clients call: tokenizer, then the graph, then postprocess."""
    pb = model_config_pb2()
    names, inputs, label_outputs = layout.names, layout.inputs, _label_outputs(layout)
    step = pb.ModelEnsembling.Step
    return pb.ModelConfig(
        name=names["ensemble"], platform="ensemble", max_batch_size=config.max_batch, input=_string_inputs(layout),
        output=[_logits_output(layout)] + label_outputs,
        ensemble_scheduling=pb.ModelEnsembling(step=[
            step(model_name=names["tokenizer"], model_version=-1, input_map={n: n for n in layout.text_inputs},
                 output_map={n: n for n, _ in inputs}),
            step(model_name=names["model"], model_version=-1, input_map={n: n for n, _ in inputs},
                 output_map={"logits": "logits"}),
            step(model_name=names["postprocess"], model_version=-1, input_map={"logits": "logits"},
                 output_map={o.name: o.name for o in label_outputs})]))


def _string_inputs(layout: _Layout) -> list[Any]:
    pb = model_config_pb2()
    return [pb.ModelInput(name=n, data_type=pb.TYPE_STRING, dims=[1]) for n in layout.text_inputs]


def _logits_output(layout: _Layout) -> Any:
    """Logits, with labels.txt for Triton's classification extension."""
    pb = model_config_pb2()
    return pb.ModelOutput(name="logits", data_type=pb.TYPE_FP32, dims=[len(layout.manifest.labels)],
                          label_filename=LABELS_FILE)


def _label_outputs(layout: _Layout) -> list[Any]:
    pb = model_config_pb2()
    outputs = [pb.ModelOutput(name="label", data_type=pb.TYPE_STRING, dims=[1]),
               pb.ModelOutput(name="score", data_type=pb.TYPE_FP32, dims=[1])]
    if layout.manifest.problem_type == MULTI_LABEL:
        outputs.append(pb.ModelOutput(name="labels", data_type=pb.TYPE_STRING, dims=[1]))
    return outputs


def _parameters(**values: Any) -> dict[str, Any]:
    pb = model_config_pb2()
    return {k: pb.ModelParameter(string_value=str(v)) for k, v in values.items()}


def _text_format(message: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(message)


def _triton_type(elem_type: int, name: str) -> str:
    if elem_type not in ONNX_TYPES:
        raise OnnxpackError(f"graph tensor {name!r} has ONNX type {onnx.TensorProto.DataType.Name(elem_type)}, "
                            "which export-serving does not map to Triton", hint="re-export the package")
    return ONNX_TYPES[elem_type]


def _check_folder(out: Path, ours: set[str]) -> None:
    """Refuse a folder that holds anything but this package's models: another model, or files."""
    if out.exists() and not out.is_dir():
        raise OnnxpackError(f"--triton {out} is a file", hint="name a folder for the model repository")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if foreign:
            raise OnnxpackError(f"--triton {out} already holds {', '.join(foreign[:3])}"
                                f"{' ...' if len(foreign) > 3 else ''}, which this package did not write",
                                hint="name an empty or new folder; export-serving replaces only its own models")


# --- validation: Triton's parse, then what the parse does not check --------------------------------------

def read_config(path: Path) -> Any:
    """A config.pbtxt parsed into Triton's ModelConfig, refusing unknown fields."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2().ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise OnnxpackError(f"{path} is not a valid Triton model config: {e}") from None


def validate(repository: str | Path) -> dict[str, Any]:
    """Check a repository as Triton would load it; returns {model name: ModelConfig}."""
    repository = Path(repository)
    configs = {}
    for folder in sorted(p for p in repository.iterdir() if p.is_dir()):
        path = folder / "config.pbtxt"
        if not path.is_file():
            raise OnnxpackError(f"{folder} has no config.pbtxt")
        config = read_config(path)
        if config.name and config.name != folder.name:
            raise OnnxpackError(f"{path} names the model {config.name!r}, but its folder is {folder.name!r}")
        if config.HasField("model_operations"):
            raise OnnxpackError(f"{path} asks to load custom operations (model_operations)",
                                hint="onnxpack never loads op libraries a model asks for")
        if not (folder / "1").is_dir():
            raise OnnxpackError(f"{folder} has no version folder 1/")
        _check_labels(folder, config)
        configs[folder.name] = config
    for name, config in configs.items():
        if config.backend == "python" and not (repository / name / "1" / "model.py").is_file():
            raise OnnxpackError(f"{name}: a Python-backend model needs 1/model.py")
        if config.backend == "onnxruntime" or (repository / name / "1" / "model.onnx").is_file():
            _check_onnx(repository / name, config)
        elif config.platform == "ensemble":
            _check_ensemble(config, configs)
        elif config.backend != "python":
            raise OnnxpackError(f"{name}: backend {config.backend or config.platform!r} is not one export-serving writes")
    return configs


def _check_onnx(folder: Path, config: Any) -> None:
    """The config's tensors against the graph: names, types, dims without the batch axis, and a
    dynamic first axis wherever max_batch_size > 0."""
    pb = model_config_pb2()
    path = folder / "1" / (config.default_model_filename or "model.onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    for kind, declared, actual in (("input", config.input, graph.input), ("output", config.output, graph.output)):
        tensors = {t.name: t for t in actual}
        if sorted(t.name for t in declared) != sorted(tensors):
            raise OnnxpackError(f"{config.name}: config {kind}s {sorted(t.name for t in declared)} are not the "
                                f"graph's {sorted(tensors)}")
        for t in declared:
            graph_type = tensors[t.name].type.tensor_type
            if pb.DataType.Name(t.data_type) != _triton_type(graph_type.elem_type, t.name):
                raise OnnxpackError(f"{config.name}: {kind} {t.name} is {pb.DataType.Name(t.data_type)} in the config "
                                    f"but {onnx.TensorProto.DataType.Name(graph_type.elem_type)} in the graph")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in graph_type.shape.dim]
            if config.max_batch_size > 0:
                if not dims or dims[0] != -1:
                    raise OnnxpackError(f"{config.name}: max_batch_size {config.max_batch_size} needs a dynamic "
                                        f"first axis, but {kind} {t.name} has dims {dims}")
                dims = dims[1:]
            if len(dims) != len(t.dims) or any(g != -1 and c != g for c, g in zip(t.dims, dims)):
                raise OnnxpackError(f"{config.name}: {kind} {t.name} has dims {list(t.dims)} in the config "
                                    f"but {dims} in the graph (without the batch axis)")


def _check_labels(folder: Path, config: Any) -> None:
    """A labels file, where an output names one, holds one label per class."""
    for t in config.output:
        if t.label_filename:
            if Path(t.label_filename).name != t.label_filename:
                raise OnnxpackError(f"{config.name}: label_filename {t.label_filename!r} must be a file in the model's folder")
            labels_path = folder / t.label_filename
            labels = labels_path.read_text(encoding="utf-8").splitlines() if labels_path.is_file() else None
            if labels is None or len(labels) != t.dims[-1]:
                raise OnnxpackError(f"{config.name}: {t.label_filename} is missing or does not hold one label "
                                    f"per logit ({t.dims[-1]})")


def _check_ensemble(config: Any, configs: dict[str, Any]) -> None:
    """Every step's model exists and is fed all its inputs from tensors made earlier, with the same
    type and compatible dims; every ensemble output is made by a step."""
    tensors = {t.name: (t.data_type, list(t.dims)) for t in config.input}
    for step in config.ensemble_scheduling.step:
        model = configs.get(step.model_name)
        if model is None:
            raise OnnxpackError(f"{config.name}: step model {step.model_name!r} is not in the repository")
        if model.max_batch_size < config.max_batch_size:
            raise OnnxpackError(f"{config.name}: max_batch_size {config.max_batch_size} exceeds step "
                                f"{model.name}'s {model.max_batch_size}")
        wanted = {t.name: t for t in model.input}
        if set(step.input_map) != set(wanted):
            raise OnnxpackError(f"{config.name}: step {model.name} maps inputs {sorted(step.input_map)}, "
                                f"but the model takes {sorted(wanted)}")
        for model_input, tensor in step.input_map.items():
            if tensor not in tensors:
                raise OnnxpackError(f"{config.name}: step {model.name} reads {tensor!r} before any step makes it")
            _same_tensor(config.name, tensor, tensors[tensor], (wanted[model_input].data_type,
                                                                list(wanted[model_input].dims)))
        made = {t.name: t for t in model.output}
        for model_output, tensor in step.output_map.items():
            if model_output not in made:
                raise OnnxpackError(f"{config.name}: step {model.name} has no output {model_output!r}")
            if tensor in tensors:
                raise OnnxpackError(f"{config.name}: tensor {tensor!r} is made twice")
            tensors[tensor] = (made[model_output].data_type, list(made[model_output].dims))
    for t in config.output:
        if t.name not in tensors:
            raise OnnxpackError(f"{config.name}: no step makes output {t.name!r}")
        _same_tensor(config.name, t.name, tensors[t.name], (t.data_type, list(t.dims)))


def _same_tensor(where: str, name: str, made: tuple[int, list[int]], wanted: tuple[int, list[int]]) -> None:
    (made_type, made_dims), (wanted_type, wanted_dims) = made, wanted
    fits = len(made_dims) == len(wanted_dims) and all(-1 in (a, b) or a == b for a, b in zip(made_dims, wanted_dims))
    if made_type != wanted_type or not fits:
        pb = model_config_pb2()
        raise OnnxpackError(f"{where}: tensor {name!r} is {pb.DataType.Name(made_type)} {made_dims} where it is "
                            f"made but {pb.DataType.Name(wanted_type)} {wanted_dims} where it is read")
