"""Fine-tune a text classifier with Lightning; writes best.ckpt, hf/, train_config.json, metrics.json."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger

from onnxpack.core.atomic import AtomicDir, atomic_write_text, check_target
from onnxpack.core.config import TrainConfig
from onnxpack.core.data import Splits, load_splits
from onnxpack.core.errors import OnnxpackError

from .datamodule import TextClassificationDataModule
from .model import (
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
class TrainResult:
    run_dir: str
    checkpoint: str
    metrics: dict[str, float]
    mlflow_run: str | None = None  # --logger mlflow: the run's id,
    tracking_uri: str | None = None  # in this store


def read_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """TrainConfig from a YAML file of its fields, then the overrides given (the flags set on the
    command line). A wrong key, type or range is one line naming the key."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise OnnxpackError(f"cannot read config {path}: {str(e).splitlines()[0]}",
                            hint="pass a YAML file of TrainConfig fields") from None
    if isinstance(values, dict):
        values.update(overrides)
    return TrainConfig.from_mapping(values, f"config {path}")


def fit(config: TrainConfig, run_dir: str | Path, force: bool = False) -> TrainResult:
    """Train, keep the best checkpoint by validation loss, and write the run folder atomically."""
    config.validate()
    run_dir = Path(run_dir)
    check_target(run_dir, force)
    tracking_uri = _mlflow_store() if config.logger == "mlflow" else None  # unreachable: one line, before any work
    spec = model_family(config.model, config.trust_remote_code)  # an unknown family fails here, before any data or weights load
    splits = load_splits(config.data, labels=config.labels, text_columns=config.text_columns,
                         multi_label=config.multi_label)
    log.info("%d labels (%s)%s", len(splits.labels), ", ".join(splits.labels),
             "; sentence pairs" if splits.pairs else "")
    if config.threads:
        torch.set_num_threads(config.threads)
    L.seed_everything(config.seed, workers=True, verbose=False)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    module = _classifier(config, splits)
    datamodule = TextClassificationDataModule(splits, tokenizer, config.batch_size, config.max_length, config.seed,
                                              input_names=spec.inputs(module.model.config, splits.pairs))

    with AtomicDir(run_dir, force=force) as tmp, _mlflow_env(tracking_uri):
        checkpoint = ModelCheckpoint(dirpath=tmp, filename=Path(CHECKPOINT).stem, monitor="val_loss", mode="min",
                                     save_top_k=1, save_weights_only=True, enable_version_counter=False)
        loggers: list[Logger] = [CSVLogger(tmp, name="logs", version="")]
        if tracking_uri:
            loggers.append(_mlflow_logger(tracking_uri, run_dir))
        trainer = _trainer(config, tmp, checkpoint, loggers)
        # from_pretrained leaves the model in eval mode and Lightning keeps submodule modes:
        # without this, dropout would stay off for the whole training.
        module.train()
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        seconds = time.perf_counter() - started
        best, scores = _best_and_scores(module, trainer, checkpoint, datamodule)
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
        if tracking_uri:  # the best checkpoint's scores, as metrics.json has them, beside the per-validation curves
            loggers[-1].log_metrics({f"best_{k}": v for k, v in metrics.items() if k.startswith("val_")},
                                    step=trainer.global_step)
    return TrainResult(run_dir=str(run_dir), checkpoint=str(run_dir / CHECKPOINT), metrics=metrics,
                       mlflow_run=loggers[-1].run_id if tracking_uri else None, tracking_uri=tracking_uri)


def _classifier(config: TrainConfig, splits: Splits) -> TextClassifier:
    """The pretrained model with a fresh head for the data's labels, in the LightningModule that trains it."""
    model = build_model(config.model, splits.labels, config.dropout, multi_label=config.multi_label,
                        trust_remote_code=config.trust_remote_code)
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    return TextClassifier(model, lr=config.lr, weight_decay=config.weight_decay, warmup_ratio=config.warmup_ratio,
                          label_smoothing=config.label_smoothing, head_lr_scale=config.head_lr_scale,
                          class_weights=None if config.multi_label else
                          _class_weights(splits.train.labels, len(splits.labels), config.class_balance),
                          time_budget_s=config.max_minutes * 60 if config.max_minutes else None)


def _mlflow_store() -> str:
    """--logger mlflow: the tracking store (checked to answer), which needs onnxpack[mlflow]."""
    if importlib.util.find_spec("mlflow") is None:
        raise OnnxpackError("--logger mlflow needs MLflow, which is not installed",
                            hint="pip install 'onnxpack[mlflow]'")
    from onnxpack.deploy.mlflow import check_store, default_tracking_uri

    uri = default_tracking_uri()
    check_store(uri)
    return uri


def _mlflow_env(tracking_uri: str | None) -> contextlib.AbstractContextManager[None]:
    if not tracking_uri:
        return contextlib.nullcontext()
    from onnxpack.deploy.mlflow import store_env

    return store_env(tracking_uri)


def _mlflow_logger(tracking_uri: str, run_dir: Path) -> Logger:
    """Lightning's MLFlowLogger: the run is named after the run folder; $MLFLOW_EXPERIMENT_NAME picks the
    experiment (default: onnxpack, where `onnxpack mlflow log` puts packages)."""
    from lightning.pytorch.loggers import MLFlowLogger

    from onnxpack.deploy.mlflow import DEFAULT_EXPERIMENT

    return MLFlowLogger(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT,
                        run_name=run_dir.name, tracking_uri=tracking_uri,
                        tags={"onnxpack.run_dir": str(run_dir.absolute())})


def _trainer(config: TrainConfig, run_dir: Path, checkpoint: ModelCheckpoint, loggers: list[Logger]) -> L.Trainer:
    """On CPU, logging to CSV in the run folder (and MLflow, if asked); stops early when validation loss
    stops falling."""
    return L.Trainer(
        max_epochs=config.epochs, limit_train_batches=config.limit_train_batches, accelerator="cpu",
        max_time=datetime.timedelta(minutes=config.max_minutes) if config.max_minutes else None,
        val_check_interval=1 / config.val_checks_per_epoch,
        logger=loggers, default_root_dir=run_dir,
        callbacks=[checkpoint, EarlyStopping(monitor="val_loss", mode="min", patience=config.patience),
                   TQDMProgressBar()],
        num_sanity_val_steps=0, enable_model_summary=False,
    )


def _best_and_scores(module: TextClassifier, trainer: L.Trainer, checkpoint: ModelCheckpoint,
                     datamodule: TextClassificationDataModule) -> tuple[TextClassifier, dict[str, Any]]:
    """The best checkpoint's module and its validation scores, after training."""
    last_loss = trainer.callback_metrics.get("val_loss")
    if (module.validated_at_step == trainer.global_step and last_loss is not None
            and bool(last_loss == checkpoint.best_model_score)):
        # The last validation ran after the last step and scored best: the weights in memory are
        # best.ckpt's, and its scores describe them. No second pass.
        return module, {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
    # Re-score the best checkpoint so metrics.json describes the file we keep.
    best = TextClassifier.load_from_checkpoint(checkpoint.best_model_path, model=module.model, weights_only=True)
    return best, trainer.validate(best, datamodule=datamodule, verbose=False)[0]


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
