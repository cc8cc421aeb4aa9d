"""Fine-tune a text classifier with Lightning; writes best.ckpt, hf/, train_config.json, metrics.json."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from onnxpack.core.data import load_splits
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import atomic_dir, atomic_write_text, check_target

from .datamodule import TextClassificationDataModule
from .model import (
    DEFAULT_MODEL,
    HF_DIR,
    TRAIN_CONFIG,
    TextClassifier,
    build_model,
    load_tokenizer,
    model_family,
)

log = logging.getLogger(__name__)

CHECKPOINT = "best.ckpt"
METRICS = "metrics.json"


@dataclasses.dataclass
class TrainConfig:
    data: str | None = None  # folder of TSV/CSV files or "glue/cola"; None looks in data.resolve_data's order (the bundled CoLA last)
    model: str = DEFAULT_MODEL  # hub name or local folder; the default is bundled (offline)
    # Label names, the index being the id; None: from the data (data.load_splits says how).
    labels: tuple[str, ...] | None = None
    text_columns: tuple[str, ...] | None = None  # one text column, or two for pairs; None: detected
    multi_label: bool = False  # several labels per row, listed in one cell ("a,b"); BCE per label
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5  # peak, after linear warm-up; then linear decay to 0
    head_lr_scale: float = 10.0  # the pooler and classifier learn at lr x this
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    label_smoothing: float = 0.1  # training loss only; val_loss is the unsmoothed loss
    # Class weights (1 / class frequency) ** class_balance in both losses: 0 leaves the loss plain,
    # 1 weighs classes equally. MCC rewards predicting the minority class (CoLA's 30% unacceptable).
    class_balance: float = 0.5
    dropout: float | None = 0.0  # overrides the model's dropout; None keeps its own (0.1 for MiniLM)
    freeze_embeddings: bool = False  # True keeps word embeddings fixed: a third fewer weights to update
    max_length: int = 128  # longer texts are truncated (CoLA's longest is ~50 tokens)
    seed: int = 42
    val_checks_per_epoch: int = 2  # validations (and checkpoint candidates) per epoch
    patience: int = 2  # validations without a better val_loss before stopping early
    limit_train_batches: float | int = 1.0  # a fraction of the epoch, or a number of batches
    # Wall-clock limit on training (Lightning's max_time); it then validates and keeps the best
    # checkpoint. The learning rate decays to 0 by whichever of the steps or the time runs out first.
    max_minutes: float | None = None
    trust_remote_code: bool = False  # load a model whose folder ships its own code (auto_map)
    threads: int | None = None  # torch intra-op threads; None leaves torch's default

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Values from a YAML file, then any non-None overrides (the command-line flags)."""
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise OnnxpackError(f"cannot read config {path}: {str(e).splitlines()[0]}",
                                hint="pass a YAML file of TrainConfig fields") from None
        if not isinstance(values, dict):
            raise OnnxpackError(f"config {path} is not a mapping of TrainConfig fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OnnxpackError(f"config {path} has unknown keys {unknown}; known: {', '.join(sorted(known))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "max_length", "val_checks_per_epoch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise OnnxpackError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise OnnxpackError(f"lr must be positive, got {self.lr!r}")
        if not 0 <= self.label_smoothing < 1:
            raise OnnxpackError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not self.class_balance >= 0 or not self.head_lr_scale > 0:
            raise OnnxpackError(f"class_balance must be >= 0 and head_lr_scale > 0, got {self.class_balance!r} "
                                f"and {self.head_lr_scale!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise OnnxpackError(f"max_minutes must be positive, got {self.max_minutes!r}")
        if not self.limit_train_batches > 0:
            raise OnnxpackError(f"limit_train_batches must be positive, got {self.limit_train_batches!r}")
        if self.labels is not None and len(self.labels) < 2:
            raise OnnxpackError(f"labels must name at least two classes, got {list(self.labels)}",
                                hint="pass --labels A,B[,...] or leave it out to take them from the data")


@dataclasses.dataclass
class TrainResult:
    run_dir: str
    checkpoint: str
    metrics: dict[str, float]


def fit(config: TrainConfig, run_dir: str | Path, force: bool = False) -> TrainResult:
    """Train, keep the best checkpoint by validation loss, and write the run folder atomically."""
    config.validate()
    run_dir = Path(run_dir)
    check_target(run_dir, force)
    spec = model_family(config.model, config.trust_remote_code)  # an unknown family fails here, before any data or weights load
    splits = load_splits(config.data, labels=config.labels, text_columns=config.text_columns,
                         multi_label=config.multi_label)
    log.info("%d labels (%s)%s", len(splits.labels), ", ".join(splits.labels),
             "; sentence pairs" if splits.pairs else "")
    if config.threads:
        torch.set_num_threads(config.threads)
    L.seed_everything(config.seed, workers=True, verbose=False)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    model = build_model(config.model, splits.labels, config.dropout, multi_label=config.multi_label,
                        trust_remote_code=config.trust_remote_code)
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    module = TextClassifier(model, lr=config.lr, weight_decay=config.weight_decay, warmup_ratio=config.warmup_ratio,
                            label_smoothing=config.label_smoothing, head_lr_scale=config.head_lr_scale,
                            class_weights=None if config.multi_label else
                            _class_weights(splits.train.labels, len(splits.labels), config.class_balance),
                            time_budget_s=config.max_minutes * 60 if config.max_minutes else None)
    datamodule = TextClassificationDataModule(splits, tokenizer, config.batch_size, config.max_length, config.seed,
                                              input_names=spec.inputs(model.config, splits.pairs))

    with atomic_dir(run_dir, force=force) as tmp:
        checkpoint = ModelCheckpoint(dirpath=tmp, filename=Path(CHECKPOINT).stem, monitor="val_loss", mode="min",
                                     save_top_k=1, save_weights_only=True, enable_version_counter=False)
        trainer = L.Trainer(
            max_epochs=config.epochs, limit_train_batches=config.limit_train_batches, accelerator="cpu",
            max_time=datetime.timedelta(minutes=config.max_minutes) if config.max_minutes else None,
            val_check_interval=1 / config.val_checks_per_epoch,
            logger=CSVLogger(tmp, name="logs", version=""), default_root_dir=tmp,
            callbacks=[checkpoint, EarlyStopping(monitor="val_loss", mode="min", patience=config.patience),
                       TQDMProgressBar()],
            num_sanity_val_steps=0, enable_model_summary=False,
        )
        # from_pretrained leaves the model in eval mode and Lightning keeps submodule modes:
        # without this, dropout would stay off for the whole training.
        module.train()
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        seconds = time.perf_counter() - started
        last_loss = trainer.callback_metrics.get("val_loss")
        if (module.validated_at_step == trainer.global_step and last_loss is not None
                and bool(last_loss == checkpoint.best_model_score)):
            # The last validation ran after the last step and scored best: the weights in memory are
            # best.ckpt's, and its scores describe them. No second pass.
            best = module
            scores = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        else:
            # Re-score the best checkpoint so metrics.json describes the file we keep.
            best = TextClassifier.load_from_checkpoint(checkpoint.best_model_path, model=model, weights_only=True)
            scores = trainer.validate(best, datamodule=datamodule, verbose=False)[0]
        best.model.save_pretrained(tmp / HF_DIR)
        tokenizer.save_pretrained(tmp / HF_DIR)
        metrics = {k: float(v) for k, v in scores.items()}
        metrics.update(train_seconds=round(seconds, 1), epochs_run=trainer.current_epoch,
                       steps=trainer.global_step, planned_steps=int(trainer.estimated_stepping_batches),
                       best_epoch=_best_epoch(checkpoint), n_train=len(splits.train),
                       n_validation=len(splits.validation))
        atomic_write_text(tmp / METRICS, json.dumps(metrics, indent=2) + "\n")
        # What export needs to know: the labels as resolved, and whether the model reads pairs.
        train_config = dataclasses.asdict(config) | {"data_source": splits.source, "labels": splits.labels,
                                                     "pairs": splits.pairs}
        atomic_write_text(tmp / TRAIN_CONFIG, json.dumps(train_config, indent=2) + "\n")
    return TrainResult(run_dir=str(run_dir), checkpoint=str(run_dir / CHECKPOINT), metrics=metrics)


def _class_weights(labels: list[int], num_classes: int, power: float) -> list[float] | None:
    """(1 / frequency) ** power per class, scaled to average 1 over the training rows."""
    if not power:
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, (len(labels) / np.maximum(counts, 1)) ** power, 0.0)
    weights *= len(labels) / float(weights @ counts)
    return weights.round(6).tolist()


def _best_epoch(checkpoint: ModelCheckpoint) -> int | None:
    ckpt = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    return ckpt.get("epoch")
