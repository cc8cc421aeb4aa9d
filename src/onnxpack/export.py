"""Export a checkpoint to a package: model.onnx + tokenizer + manifest.json.

The export checks itself against PyTorch on batches of 1, 3 and 17 sentences of very
different lengths (proving the dynamic batch and sequence axes) before the package
appears, atomically, under its final name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch

from . import __version__
from ._registry import Registry
from .errors import OnnxpackError, ParityError
from .model import TextClassifier, load_checkpoint
from .package import Manifest, Package, TensorSpec, atomic_dir, check_target, hash_files, now, sha256_file
from .package import write_manifest
from .package import MODEL

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
DYNAMIC_AXES = {0: "batch", 1: "sequence"}
# Sentences of very different lengths for the self-check; batches of 1, 3 and 17 of them.
CHECK_SENTENCES = (
    "Go.",
    "The cat sat on the mat.",
    "Colourless green ideas sleep furiously, said the linguist, and the students wrote it down carefully "
    "in their notebooks before the lecture moved on to the next and much longer example of the evening.",
    "Who do you think that left?",
    "John seems to be happy.",
    "The more you read, the more you learn.",
    "Her.",
    "Mary gave the book to John and John gave it back to Mary the next day.",
    "What did you see the man who bought?",
    "I wonder whether to go.",
    "The horse raced past the barn fell.",
    "Bill's story about Sue and Max's about Kathy both amazed me.",
    "They are easy to please.",
    "It is easy to please them.",
    "Sue is eager to please and so is Bill, but neither of them has ever said so to anyone at all.",
    "Many.",
    "The ideas that the professor who the students admired proposed were rejected by the committee.",
)
CHECK_BATCH_SIZES = (1, 3, 17)


@dataclasses.dataclass
class ExportConfig:
    exporter: str = "torchscript"  # see EXPORTERS; torchscript gives the graph ORT's fusions know best
    opset: int = 18
    atol: float = 1e-4  # the self-check's max allowed |logit difference|
    max_length: int | None = None  # None: the training max_length, else the model's position limit
    name: str | None = None  # the package's model name; None: the output folder's name


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How one architecture is exported."""

    inputs: tuple[str, ...] = INPUT_NAMES
    # Position ids RoBERTa starts at pad_token_id + 1, so it fits 2 fewer tokens than it has positions.
    position_offset: int = 0

    def max_tokens(self, config: Any) -> int:
        return config.max_position_embeddings - self.position_offset


ARCHITECTURES: Registry[ModelSpec] = Registry("model type")
ARCHITECTURES.register("bert")(ModelSpec())
ARCHITECTURES.register("distilbert")(ModelSpec())
ARCHITECTURES.register("roberta")(ModelSpec(position_offset=2))

Exporter = Callable[[torch.nn.Module, tuple[torch.Tensor, ...], Path, int], None]
EXPORTERS: Registry[Exporter] = Registry("exporter")


class LogitsModel(torch.nn.Module):
    """(input_ids, attention_mask) -> logits, the signature every package has."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _dynamic_axes() -> dict[str, dict[int, str]]:
    return {name: DYNAMIC_AXES for name in INPUT_NAMES} | {OUTPUT_NAME: {0: "batch"}}


@EXPORTERS.register("torchscript")
def export_torchscript(module: torch.nn.Module, sample: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    torch.onnx.export(module, sample, str(path), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                      dynamic_axes=_dynamic_axes(), opset_version=opset, dynamo=False)


@EXPORTERS.register("dynamo")
def export_dynamo(module: torch.nn.Module, sample: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    dims = {i: torch.export.Dim(name) for i, name in DYNAMIC_AXES.items()}
    program = torch.onnx.export(module, sample, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                                dynamic_shapes={name: dims for name in INPUT_NAMES}, opset_version=opset,
                                dynamo=True, verbose=False)
    program.save(str(path))


@EXPORTERS.register("lightning")
def export_lightning(module: torch.nn.Module, sample: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    # Lightning's LightningModule.to_onnx; TextClassifier.forward already returns logits.
    classifier = TextClassifier(module.model).eval()
    classifier.to_onnx(str(path), input_sample=sample, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                       dynamic_axes=_dynamic_axes(), opset_version=opset, dynamo=False)


def export(checkpoint: str | Path, out: str | Path, config: ExportConfig | None = None,
           force: bool = False) -> Package:
    """Export `checkpoint` (a Lightning .ckpt from `train` or a Hugging Face folder) to a package at `out`."""
    config = config or ExportConfig()
    exporter = EXPORTERS.get(config.exporter)
    out = Path(out)
    check_target(out, force)
    model, tokenizer, source = load_checkpoint(checkpoint)
    spec = ARCHITECTURES.get(model.config.model_type)
    limit = spec.max_tokens(model.config)
    if config.max_length is not None and not 1 < config.max_length <= limit:
        raise OnnxpackError(f"max_length {config.max_length} does not fit the model: it takes 2 to {limit} tokens",
                            hint=f"pass --max-length {limit} or less")
    # Eager attention exports as plain MatMul/Softmax, a pattern ORT's attention fusion recognises.
    model.set_attn_implementation("eager")
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    max_length = min(config.max_length or source["train_config"].get("max_length") or tokenizer.model_max_length,
                     limit)
    wrapper = LogitsModel(model).eval()

    with atomic_dir(out, force=force) as tmp:
        sample = _encode(tokenizer, list(CHECK_SENTENCES[:2]), max_length)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' own deprecation chatter
            exporter(wrapper, sample, tmp / MODEL, config.opset)
        _stamp_metadata(tmp / MODEL, labels, max_length)
        self_check_diff = _self_check(wrapper, tokenizer, tmp / MODEL, max_length, config.atol)
        tokenizer.save_pretrained(tmp)
        proto = onnx.load(str(tmp / MODEL), load_external_data=False)
        manifest = Manifest(
            name=config.name or out.name, labels=labels, max_length=int(max_length),
            inputs=[_tensor_spec(v) for v in proto.graph.input],
            outputs=[_tensor_spec(v) for v in proto.graph.output],
            opset=_default_opset(proto), ir_version=proto.ir_version, exporter=config.exporter,
            model_type=model.config.model_type, pad_token_id=int(tokenizer.pad_token_id),
            source={"path": source["path"], "kind": source["kind"], "sha256": _source_sha256(Path(source["path"]))},
            libraries=_library_versions(), files=hash_files(tmp), architecture=_architecture(model.config),
            history=[{"step": "export", "exporter": config.exporter, "opset": config.opset, "at": now()}],
            parity={"check": "export self-check", "batch_sizes": list(CHECK_BATCH_SIZES),
                    "max_abs_diff": self_check_diff, "atol": config.atol, "at": now()},
            onnxpack_version=__version__,
        )
        write_manifest(tmp, manifest)
    return Package.open(out)


def _encode(tokenizer: Any, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                    return_token_type_ids=False)
    return enc["input_ids"], enc["attention_mask"]


def _self_check(wrapper: torch.nn.Module, tokenizer: Any, path: Path, max_length: int, atol: float) -> float:
    """The worst |logit difference| over batches of 1, 3 and 17; raises ParityError beyond atol."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    failures, worst = [], 0.0
    for size in CHECK_BATCH_SIZES:
        input_ids, attention_mask = _encode(tokenizer, list(CHECK_SENTENCES[:size]), max_length)
        with torch.no_grad():
            expected = wrapper(input_ids, attention_mask).numpy()
        (got,) = session.run([OUTPUT_NAME], {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        diff = float(np.abs(got - expected).max())
        worst = max(worst, diff)
        log.info("self-check batch %d x %d tokens: max |diff| %.2e", size, input_ids.shape[1], diff)
        if not diff <= atol:
            failures.append(f"batch {size}x{input_ids.shape[1]}: max |diff| {diff:.2e}")
    if failures:
        raise ParityError(f"exported model disagrees with PyTorch beyond atol {atol:g}: {'; '.join(failures)}; "
                          "nothing was written", hint="try another --exporter or --opset")
    return worst


def _stamp_metadata(path: Path, labels: list[str], max_length: int) -> None:
    """Labels and max length inside the .onnx itself, so any viewer shows what the model means."""
    proto = onnx.load(str(path))
    props = {"onnxpack.task": "text-classification", "onnxpack.labels": json.dumps(labels),
             "onnxpack.max_length": str(max_length), "onnxpack.version": __version__}
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = proto.producer_name or "pytorch"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return TensorSpec(name=value.name, dtype=dtype, dims=[d.dim_param or d.dim_value for d in tensor.shape.dim])


def _architecture(config: Any) -> dict[str, int]:
    # DistilBERT names these differently; attribute_map makes both spellings work.
    return {"num_heads": config.num_attention_heads, "hidden_size": config.hidden_size,
            "num_layers": config.num_hidden_layers, "vocab_size": config.vocab_size}


def _default_opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _source_sha256(path: Path) -> str:
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path)}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _library_versions() -> dict[str, str]:
    import lightning
    import transformers

    return {"onnxpack": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "lightning": lightning.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}
