"""Export a checkpoint to a package: model.onnx + tokenizer + manifest.json.

The export checks itself against PyTorch on batches of 1, 3 and 17 sentences of very
different lengths (proving the dynamic batch and sequence axes) before the package
appears, atomically, under its final name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch

from onnxpack import __version__
from onnxpack.core import onnxfile, untrusted
from onnxpack.core.atomic import AtomicDir, check_target
from onnxpack.core.config import ExportConfig
from onnxpack.core.errors import OnnxpackError, ParityError
from onnxpack.core.families import family
from onnxpack.core.package import (
    DEFAULT_THRESHOLD,
    FP32,
    MODEL,
    MULTI_LABEL,
    SINGLE_LABEL,
    TOKENIZER,
    Manifest,
    Package,
    TensorSpec,
    graph_files,
    hash_files,
    now,
    sha256_file,
    write_manifest,
)
from onnxpack.core.registry import Registry
from onnxpack.deploy import compat
from onnxpack.runtime.feed import encode, package_tokenizer

from .localize import localize
from .model import TextClassifier, load_checkpoint

log = logging.getLogger(__name__)

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


def check_texts(size: int, pairs: bool) -> list[Any]:
    """The self-check's first `size` sentences; for a pair model, each with another as its second text."""
    texts = list(CHECK_SENTENCES[:size])
    return [(t, CHECK_SENTENCES[-1 - i]) for i, t in enumerate(texts)] if pairs else texts


Exporter = Callable[[torch.nn.Module, tuple[torch.Tensor, ...], Path, int], None]
EXPORTERS: Registry[Exporter] = Registry("exporter")


class LogitsModel(torch.nn.Module):
    """(input_ids, attention_mask[, token_type_ids]) -> logits: the graph's inputs, in order."""

    def __init__(self, model: torch.nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).logits


def _dynamic_axes(input_names: tuple[str, ...]) -> dict[str, dict[int, str]]:
    return {name: DYNAMIC_AXES for name in input_names} | {OUTPUT_NAME: {0: "batch"}}


@EXPORTERS.register("torchscript")
def export_torchscript(module: LogitsModel, sample: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    torch.onnx.export(module, sample, str(path), input_names=list(module.input_names), output_names=[OUTPUT_NAME],
                      dynamic_axes=_dynamic_axes(module.input_names), opset_version=opset, dynamo=False)


@EXPORTERS.register("dynamo")
def export_dynamo(module: LogitsModel, sample: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    dims = {i: torch.export.Dim(name) for i, name in DYNAMIC_AXES.items()}
    program = torch.onnx.export(module, sample, input_names=list(module.input_names), output_names=[OUTPUT_NAME],
                                dynamic_shapes=({"inputs": tuple(dims for _ in module.input_names)}),
                                opset_version=opset, dynamo=True, verbose=False)
    program.save(str(path))


class _ClassifierFor(TextClassifier):
    """TextClassifier whose forward takes the graph's inputs positionally, for Lightning's to_onnx."""

    def __init__(self, wrapper: LogitsModel) -> None:
        super().__init__(wrapper.model)
        self.wrapper = wrapper

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.wrapper(*inputs)


@EXPORTERS.register("lightning")
def export_lightning(module: LogitsModel, sample: tuple[torch.Tensor, ...], path: Path, opset: int) -> None:
    # Lightning's LightningModule.to_onnx.
    _ClassifierFor(module).eval().to_onnx(str(path), input_sample=sample, input_names=list(module.input_names),
                                          output_names=[OUTPUT_NAME], dynamic_axes=_dynamic_axes(module.input_names),
                                          opset_version=opset, dynamo=False)


def export(checkpoint: str | Path, out: str | Path, config: ExportConfig | None = None,
           force: bool = False) -> Package:
    """Export `checkpoint` (a Lightning .ckpt from `train` or a Hugging Face folder) to a package at `out`."""
    config = config or ExportConfig()
    config.validate()
    exporter = EXPORTERS.get(config.exporter)
    out = Path(out)
    check_target(out, force)
    target = compat.parse_target(config.target) if config.target else None
    if target is not None:
        compat.check_export(config.opset, target)
    model, tokenizer, source = load_checkpoint(checkpoint, config.trust_remote_code)
    spec = family(model.config.model_type)
    limit = spec.max_tokens(model.config)
    pairs = config.pairs if config.pairs is not None else bool(source["train_config"].get("pairs", False))
    input_names = spec.inputs(model.config, pairs)
    if config.max_length is not None and not 1 < config.max_length <= limit:
        raise OnnxpackError(f"max_length {config.max_length} does not fit the model: it takes 2 to {limit} tokens",
                            hint=f"pass --max-length {limit} or less")
    # Eager attention exports as plain MatMul/Softmax, a pattern ORT's attention fusion recognises.
    model.set_attn_implementation("eager")
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    problem_type = MULTI_LABEL if model.config.problem_type == MULTI_LABEL else SINGLE_LABEL
    max_length = min(config.max_length or source["train_config"].get("max_length") or tokenizer.model_max_length,
                     limit)
    wrapper = LogitsModel(model, input_names).eval()
    pad_token_id = _pad_token_id(tokenizer, model.config)

    with AtomicDir(out, force=force) as tmp:
        tokenizer.save_pretrained(tmp)
        # The package's own tokenizer, through the same feed builder the runtime uses.
        tokenizer_json = package_tokenizer(tmp / TOKENIZER, max_length, pad_token_id)
        sample = _tensors(encode(tokenizer_json, check_texts(2, pairs), input_names))
        _export_graph(exporter, wrapper, sample, tmp, config.opset, labels, max_length, problem_type)
        if target is not None:
            compat.check_graph(*compat.graph_versions(tmp / MODEL), target)
        self_check_diff = _self_check(wrapper, tokenizer_json, tmp / MODEL, pairs, config.atol)
        proto = onnx.load(str(tmp / MODEL), load_external_data=False)
        manifest = Manifest(
            name=config.name or out.name, labels=labels, max_length=int(max_length),
            inputs=[_tensor_spec(v) for v in proto.graph.input],
            outputs=[_tensor_spec(v) for v in proto.graph.output],
            opset=_default_opset(proto), ir_version=proto.ir_version, exporter=config.exporter,
            model_type=model.config.model_type, pad_token_id=pad_token_id, pairs=pairs,
            problem_type=problem_type, thresholds=[DEFAULT_THRESHOLD] * len(labels) if problem_type == MULTI_LABEL else None,
            source={"path": source["path"], "kind": source["kind"], "sha256": _source_sha256(Path(source["path"]))},
            libraries=_library_versions(), files=hash_files(tmp), architecture=_architecture(model.config),
            # The exported graph is the package's first variant; optimize adds its figures and the others.
            variants={FP32: {"file": MODEL, "bytes": sum(f.stat().st_size for f in graph_files(tmp / MODEL))}},
            history=[{"step": "export", "exporter": config.exporter, "opset": config.opset, "at": now()}],
            parity={"check": "export self-check", "batch_sizes": list(CHECK_BATCH_SIZES),
                    "max_abs_diff": self_check_diff, "atol": config.atol, "at": now()},
            onnxpack_version=__version__,
        )
        write_manifest(tmp, manifest)
    return Package.open(out)


def _export_graph(exporter: Exporter, wrapper: LogitsModel, sample: tuple[torch.Tensor, ...], root: Path, opset: int,
                  labels: list[str], max_length: int, problem_type: str) -> None:
    """The package's model.onnx in `root`: exported, then stamped with what the model means."""
    # The exporter writes into a scratch folder: over 2 GiB it leaves a file per weight there.
    scratch = root / ".export"
    scratch.mkdir()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own deprecation chatter
        exporter(wrapper, sample, scratch / MODEL, opset)
    _stamp_metadata(scratch / MODEL, root / MODEL, labels, max_length, problem_type)
    untrusted.remember(root / MODEL)  # exported here from torch: no need to probe it
    shutil.rmtree(scratch)


def _pad_token_id(tokenizer: Any, config: Any) -> int:
    """The tokenizer's pad token, else the model's; padded positions are masked, so any id works."""
    for pad in (tokenizer.pad_token_id, getattr(config, "pad_token_id", None)):
        if pad is not None:
            return int(pad)
    log.info("the tokenizer and model name no pad token: padding with id 0 (masked out)")
    return 0


def _tensors(feed: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(v) for v in feed.values())


def _self_check(wrapper: LogitsModel, tokenizer: Any, path: Path, pairs: bool, atol: float) -> float:
    """The worst |logit difference| over batches of 1, 3 and 17; raises ParityError beyond atol."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    failures, worst, failing = [], 0.0, None
    for size in CHECK_BATCH_SIZES:
        feed = encode(tokenizer, check_texts(size, pairs), wrapper.input_names)
        with torch.no_grad():
            expected = wrapper(*_tensors(feed)).numpy()
        (got,) = session.run([OUTPUT_NAME], feed)
        diff = float(np.abs(got - expected).max())
        worst = max(worst, diff)
        shape = "x".join(map(str, feed["input_ids"].shape))
        log.info("self-check batch %s tokens: max |diff| %.2e", shape, diff)
        if not diff <= atol:
            failures.append(f"batch {shape}: max |diff| {diff:.2e}")
            failing = failing or feed
    if failures:
        where = localize(wrapper, path, failing, max(atol, 0.0)).describe()
        raise ParityError(f"exported model disagrees with PyTorch beyond atol {atol:g}: {'; '.join(failures)}; "
                          f"{where}; nothing was written", hint="try another --exporter or --opset")
    return worst


def _stamp_metadata(exported: Path, path: Path, labels: list[str], max_length: int, problem_type: str) -> None:
    """Labels and max length inside the .onnx itself, so any viewer shows what the model means;
    saved as one graph file (and one weights file beside it when the weights pass 2 GiB)."""
    proto = onnx.load(str(exported))
    props = {"onnxpack.task": "text-classification", "onnxpack.labels": json.dumps(labels),
             "onnxpack.id2label": json.dumps(dict(enumerate(labels))), "onnxpack.problem_type": problem_type,
             "onnxpack.max_length": str(max_length), "onnxpack.version": __version__}
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = proto.producer_name or "pytorch"
    onnxfile.save(proto, path)
    onnxfile.check(path)


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    return TensorSpec(name=value.name, dtype=onnxfile.dtype_name(tensor.elem_type), dims=[d.dim_param or d.dim_value for d in tensor.shape.dim])


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
