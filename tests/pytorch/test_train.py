"""train.py: TrainConfig, and what a run folder from fit() holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import onnxpack.pytorch.model
from onnxpack.core.config import TrainConfig
from onnxpack.core.errors import DataError, OnnxpackError, PackageError
from onnxpack.pytorch.train import CHECKPOINT, METRICS, _class_weights, fit, read_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


# --- the session's run folder -------------------------------------------------------------------------------

def test_run_folder_contents(trained_run):
    assert (trained_run / CHECKPOINT).is_file()
    assert (trained_run / "hf" / "config.json").is_file()
    assert (trained_run / "hf" / "tokenizer.json").is_file()
    assert (trained_run / "train_config.json").is_file()
    # written atomically: nothing but the run folder beside it
    assert [p.name for p in trained_run.parent.iterdir()] == [trained_run.name]


def test_metrics_json(trained_run):
    metrics = json.loads((trained_run / METRICS).read_text())
    for key in ("val_mcc", "val_acc", "val_f1", "val_loss"):
        assert isinstance(metrics[key], float), key
    assert -1.0 <= metrics["val_mcc"] <= 1.0 and 0.0 <= metrics["val_acc"] <= 1.0
    assert metrics["n_train"] == 256 and metrics["n_validation"] == 64
    assert metrics["best_epoch"] in (0, 1)
    assert metrics["epochs_run"] >= metrics["best_epoch"] + 1
    assert metrics["train_seconds"] > 0


def test_metrics_describe_the_kept_checkpoint(trained_run):
    # metrics.json re-scores best.ckpt; the checkpoint's epoch is the best_epoch it reports.
    metrics = json.loads((trained_run / METRICS).read_text())
    ckpt = torch.load(trained_run / CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == metrics["best_epoch"]
    assert "optimizer_states" not in ckpt  # save_weights_only


def test_train_config_json(trained_run, small_cola, tiny_model_dir):
    saved = json.loads((trained_run / "train_config.json").read_text())
    assert saved["max_length"] == 64 and saved["epochs"] == 2 and saved["lr"] == 1e-3
    assert saved["model"] == str(tiny_model_dir)
    assert saved["data_source"] == str(small_cola.resolve())
    assert saved["labels"] == ["unacceptable", "acceptable"]
    # it loads back into a TrainConfig
    assert saved["pairs"] is False
    fields = {k: v for k, v in saved.items() if k not in ("data_source", "pairs")}
    TrainConfig(**fields).validate()


# --- TrainConfig --------------------------------------------------------------------------------------------

def test_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nlr: 2.0e-5\nbatch_size: 8\n", encoding="utf-8")
    config = read_config(path, epochs=5, seed=7)
    assert config.epochs == 5  # the flag wins
    assert config.lr == 2e-5  # no flag given: the file's value stays
    assert config.batch_size == 8 and config.seed == 7
    assert config.max_length == TrainConfig().max_length  # untouched default
    config.validate()


def test_shipped_config_loads():
    config = read_config(CONFIGS / "cola.yaml")
    config.validate()
    assert config.labels is None  # from the data: CoLA's layout names them
    assert config.model == onnxpack.core.config.DEFAULT_MODEL


def test_from_yaml_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("", encoding="utf-8")
    assert read_config(path) == TrainConfig()


def test_from_yaml_unknown_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 1\nepoch: 2\nlearning_rate: 1\n", encoding="utf-8")
    with pytest.raises(OnnxpackError, match=r"unknown keys \['epoch', 'learning_rate'\]; known: .*epochs"):
        read_config(path)


@pytest.mark.parametrize(("text", "match"), [
    ("- a\n- b\n", "is not a mapping"),
    ("epochs: [1\n", "cannot read config"),
])
def test_from_yaml_bad_file(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(OnnxpackError, match=match):
        read_config(path)


def test_from_yaml_names_the_key_and_the_type_it_expected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 2e-5\n", encoding="utf-8")  # PyYAML reads 2e-5 (no dot) as a string
    with pytest.raises(OnnxpackError) as e:
        read_config(path)
    assert str(e.value) == f"config {path}: key lr must be a number, got the text '2e-5'"
    path.write_text("labels: [a, b]\nepochs: 0\n", encoding="utf-8")
    with pytest.raises(OnnxpackError, match=r"key epochs must be at least 1, got 0"):
        read_config(path)
    assert read_config(path, epochs=2).labels == ("a", "b")  # YAML's list is the config's tuple


def test_from_yaml_missing_file(tmp_path):
    with pytest.raises(OnnxpackError, match="cannot read config"):
        read_config(tmp_path / "none.yaml")


@pytest.mark.parametrize(("changes", "match"), [
    ({"epochs": 0}, "--epochs must be at least 1, got 0"),
    ({"batch_size": -1}, "--batch-size must be at least 1, got -1"),
    ({"max_length": 1.5}, "--max-length must be an integer, got 1.5"),
    ({"lr": 0.0}, "--lr must be above 0, got 0.0"),
    ({"lr": "2e-5"}, "--lr must be a number, got the text '2e-5'"),
    ({"limit_train_batches": 0}, "--limit-train-batches must be above 0, got 0"),
    ({"labels": ("only",)}, "--labels must name at least two classes"),
    ({"label_smoothing": 1.0}, r"--label-smoothing must be between 0 and 0.999, got 1.0"),
    ({"class_balance": -1}, "--class-balance must be at least 0, got -1"),
    ({"head_lr_scale": 0}, "--head-lr-scale must be above 0, got 0"),
    ({"val_checks_per_epoch": 0}, "--val-checks-per-epoch must be at least 1, got 0"),
    ({"max_minutes": 0}, "--max-minutes must be above 0, got 0"),
    ({"multi_label": "yes"}, "--multi-label must be true or false, got the text 'yes'"),
])
def test_validate_rejects(changes, match):
    with pytest.raises(OnnxpackError, match=match):
        TrainConfig(**changes).validate()


def test_class_weights():
    labels = [0] * 30 + [1] * 70
    assert _class_weights(labels, 2, 0.0) is None
    balanced = _class_weights(labels, 2, 1.0)
    assert balanced[0] * 30 == pytest.approx(balanced[1] * 70, rel=1e-5)  # each class weighs the same in total
    assert balanced[0] * 30 + balanced[1] * 70 == pytest.approx(100, rel=1e-5)  # average row weight 1
    half = _class_weights(labels, 2, 0.5)
    assert 1 < half[0] / half[1] < balanced[0] / balanced[1]


def test_validate_accepts_defaults():
    TrainConfig().validate()
    TrainConfig(limit_train_batches=0.25, epochs=1).validate()


# --- fit: fails early, before any training ------------------------------------------------------------------

def test_fit_existing_dir_without_force_fails_before_training(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("keep")
    # The data path does not exist: had fit read data (or trained) first, it would fail differently.
    config = TrainConfig(data=str(tmp_path / "no-data"), model=str(tmp_path / "no-model"))
    with pytest.raises(PackageError, match="already exists"):
        fit(config, run)
    assert [p.name for p in run.iterdir()] == ["keep.txt"]


def test_fit_validates_config_first(tmp_path):
    with pytest.raises(OnnxpackError, match="--epochs must be at least 1, got 0"):
        fit(TrainConfig(epochs=0, data=str(tmp_path / "no-data")), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_fit_missing_data_writes_nothing(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        fit(TrainConfig(data=str(tmp_path / "no-data")), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


# --- fit: one extra tiny run --------------------------------------------------------------------------------

def test_fit_trains_with_dropout_on_and_force_replaces(tmp_path, monkeypatch, small_cola, tiny_model_dir):
    """A model from from_pretrained starts in eval mode; fit must put it in train mode (dropout on)."""
    seen: list[tuple[bool, list[bool]]] = []
    original = onnxpack.pytorch.model.TextClassifier.training_step

    def spy(self, batch, batch_idx):
        dropouts = [m.training for m in self.modules() if isinstance(m, torch.nn.Dropout)]
        seen.append((self.model.training, dropouts))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(onnxpack.pytorch.model.TextClassifier, "training_step", spy)
    run = tmp_path / "run"
    run.mkdir()
    (run / "stale.txt").write_text("from an older run")
    config = TrainConfig(data=str(small_cola), model=str(tiny_model_dir), epochs=1, limit_train_batches=2,
                         batch_size=32, max_length=64, dropout=0.1)
    result = fit(config, run, force=True)

    assert len(seen) == 2  # limit_train_batches=2, one epoch
    for model_training, dropouts in seen:
        assert model_training
        assert dropouts and all(dropouts), "dropout was off during training"
    assert result.run_dir == str(run) and result.checkpoint == str(run / CHECKPOINT)
    assert Path(result.checkpoint).is_file()
    assert not (run / "stale.txt").exists()  # --force replaced the folder
    assert result.metrics == json.loads((run / METRICS).read_text())
    assert isinstance(result.metrics["val_mcc"], float) and result.metrics["epochs_run"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_fit_stops_at_the_time_limit_and_keeps_a_checkpoint(tmp_path, small_cola, tiny_model_dir):
    """max_minutes ends training mid-epoch; Lightning validates on stopping, so best.ckpt exists."""
    config = TrainConfig(data=str(small_cola), model=str(tiny_model_dir), epochs=50, batch_size=4, max_length=64,
                         val_checks_per_epoch=1, max_minutes=0.02)  # 1.2 s of 3200 planned steps
    result = fit(config, tmp_path / "run")
    assert 0 < result.metrics["steps"] < result.metrics["planned_steps"] == 50 * 64
    assert result.metrics["train_seconds"] < 30
    assert Path(result.checkpoint).is_file() and isinstance(result.metrics["val_mcc"], float)
    # One validation, so fit took its scores instead of a second pass: they describe best.ckpt.
    import lightning as L

    from onnxpack.core.data import COLA_LABELS, load_splits
    from onnxpack.pytorch.datamodule import TextClassificationDataModule
    from onnxpack.pytorch.model import TextClassifier, build_model, load_tokenizer

    best = TextClassifier.load_from_checkpoint(result.checkpoint, model=build_model(str(tiny_model_dir), COLA_LABELS),
                                               weights_only=True)
    datamodule = TextClassificationDataModule(load_splits(str(small_cola)), load_tokenizer(str(tiny_model_dir)),
                                              batch_size=4, max_length=64, seed=config.seed)
    scores = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(
        best, datamodule=datamodule, verbose=False)[0]
    for key in ("val_loss", "val_mcc", "val_acc", "val_f1"):
        assert scores[key] == pytest.approx(result.metrics[key], abs=1e-6), key


def test_shipped_yaml_config_matches_the_defaults():
    """configs/cola.yaml says it is the built-in defaults written out; keep it so."""
    assert read_config(CONFIGS / "cola.yaml") == TrainConfig()


def test_fit_refuses_an_unknown_family_before_training(tmp_path, small_cola):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_head=2, n_embd=16).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(OnnxpackError) as info:
        fit(TrainConfig(data=str(small_cola), model=str(tmp_path / "gpt2")), tmp_path / "run")
    assert str(info.value).startswith("unknown model type 'gpt2'; known: albert, bert, deberta-v2, distilbert, "
                                      "electra, mpnet, roberta, xlm-roberta")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]
