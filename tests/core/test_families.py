"""families.py: every supported family exports, and its ONNX logits equal transformers' on single
texts and (where it has segment embeddings) sentence pairs, at several batch sizes and lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_family_folder
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from onnxpack.core.config import ExportConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.families import FAMILIES, family
from onnxpack.core.package import Package
from onnxpack.pytorch.export import export
from onnxpack.runtime.predictor import Predictor, serving_variant

# One case per registry key; test_registry.py checks this list against FAMILIES.
FAMILY_CASES = ("bert", "distilbert", "roberta", "xlm-roberta", "electra", "albert", "deberta-v2", "mpnet")
LABELS = ["negative", "neutral", "positive"]
TEXTS = ["the book was written by john", "him saw she", "go",
         "the professor who the students that the dean hired admired resigned after the long meeting ended",
         "what did you wonder whether mary bought", " ".join(["cat"] * 200)]  # the last is truncated
PAIRS = [(a, b) for a, b in zip(TEXTS, reversed(TEXTS))]


def _transformers_logits(folder, texts, max_length: int) -> np.ndarray:
    """What transformers itself computes, tokenized by transformers: the reference."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pairs = isinstance(texts[0], tuple)
    args = ([a for a, _ in texts], [b for _, b in texts]) if pairs else (list(texts),)
    enc = tokenizer(*args, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    if not pairs or "token_type_ids" not in family(model.config.model_type).inputs(model.config, True):
        enc.pop("token_type_ids", None)  # single texts: all segment ids are 0, which the model assumes
    with torch.no_grad():
        return model(**enc).logits.numpy()


@pytest.mark.parametrize("model_type", FAMILY_CASES)
def test_family_exports_and_matches_transformers(model_type, tiny_model_dir, tmp_path):
    folder = tiny_family_folder(model_type, tiny_model_dir, tmp_path / "hf", LABELS)
    spec = family(model_type)
    for pairs, texts in ((False, TEXTS), (True, PAIRS)):
        package = export(folder, tmp_path / f"pkg-{pairs}", ExportConfig(pairs=pairs))
        m = package.manifest
        assert m.model_type == model_type and m.labels == LABELS and m.pairs == pairs
        assert m.max_length == 64  # the tokenizer's limit, within the family's position limit
        takes_segments = pairs and spec.segments
        assert [t.name for t in m.inputs] == ["input_ids", "attention_mask"] + (
            ["token_type_ids"] if takes_segments else [])
        with Predictor(package) as predictor:
            for size in (1, 3, len(texts)):
                got = predictor.predict_logits(texts[:size], batch_size=size)
                want = _transformers_logits(folder, texts[:size], m.max_length)
                np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
            got = predictor.predict_logits(texts, batch_size=2)  # batched by length, other paddings
            np.testing.assert_allclose(got, _transformers_logits(folder, texts, m.max_length), atol=1e-4, rtol=0)


def test_segment_ids_reach_the_model(tiny_model_dir, tmp_path):
    """A pair's segment ids change BERT's answer: the graph must take them, not assume zeros."""
    folder = tiny_family_folder("bert", tiny_model_dir, tmp_path / "hf", LABELS)
    with Predictor(export(folder, tmp_path / "pkg", ExportConfig(pairs=True))) as predictor:
        feed = next(predictor.encoded_batches(PAIRS[:2], 2))[1]
        assert set(feed["token_type_ids"].ravel()) == {0, 1}
        zeros = predictor.run(feed | {"token_type_ids": np.zeros_like(feed["token_type_ids"])})
        assert np.abs(predictor.run(feed) - zeros).max() > 1e-4


def test_registry_says_inputs_positions_and_fusions():
    assert family("bert").fusion == "bert" and family("deberta-v2").fusion is None and family("mpnet").fusion is None
    assert family("roberta").position_offset == 2 and family("bert").position_offset == 0
    assert not family("distilbert").segments and family("albert").segments


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(OnnxpackError) as info:
        family("gpt2")
    assert str(info.value) == f"unknown model type 'gpt2'; known: {', '.join(FAMILIES.keys())}"


def test_roberta_default_max_length_fits_positions(tiny_model_dir, tmp_path):
    from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

    folder = tiny_family_folder("roberta", tiny_model_dir, tmp_path / "hf", LABELS)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.model_max_length = VERY_LARGE_INTEGER  # as for a tokenizer saved without a length limit
    tokenizer.save_pretrained(folder)
    package = export(folder, tmp_path / "pkg")
    assert package.manifest.max_length == 66 - 2
    with Predictor(package) as predictor:
        assert predictor.predict_logits([" ".join(["cat"] * 200)]).shape == (1, 3)


def test_unknown_family_at_export_writes_nothing(tiny_model_dir, tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    folder = tmp_path / "gpt2"
    GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_head=2, n_embd=16, num_labels=2)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    with pytest.raises(OnnxpackError, match="unknown model type 'gpt2'; known: albert, bert"):
        export(folder, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


@pytest.mark.parametrize("model_type", FAMILY_CASES)
def test_family_through_every_stage(model_type, tiny_model_dir, tmp_path):
    """verify, optimize (or why a variant does not apply), bench and serve, for every family."""
    from live import HTTP_ONLY, post, running

    from onnxpack.core.config import BenchConfig, OptimizeConfig
    from onnxpack.pytorch.verify import verify
    from onnxpack.runtime.bench import bench
    from onnxpack.runtime.optimize import optimize
    from onnxpack.serve import create_app

    folder = tiny_family_folder(model_type, tiny_model_dir, tmp_path / "hf", LABELS)
    data = tmp_path / "data"
    data.mkdir()
    rows = "text\tlabel\n" + "".join(f"{t}\t{LABELS[i % 3]}\n" for i, t in enumerate(TEXTS * 4))
    for split in ("train", "validation"):
        (data / f"{split}.tsv").write_text(rows, encoding="utf-8")
    package = export(folder, tmp_path / "pkg")
    report = verify(package.root, str(data))
    assert report.passed and report.n == 24 and report.agreement == 1.0

    results = {r.variant: r for r in optimize(package.root, OptimizeConfig(data=str(data), batch_size=8))}
    if family(model_type).fusion:
        assert results["optimized"].accepted and results["optimized"].figures["max_abs_diff"] <= 1e-3
    else:
        assert results["optimized"].reason == (
            f"not built: ONNX Runtime has no transformer fusions for {model_type}")
    assert results["int8"].figures.get("n") == 24  # built (from optimized, or fp32) and gated
    accepted = [name for name, r in results.items() if r.accepted]

    figures = bench(package.root, BenchConfig(batch_sizes=(2,), seq_lens=(8,), rounds=1, block_seconds=0.01,
                                              min_repeats=1, pause_seconds=0, data=str(data)))
    timed = {row["variant"] for row in figures["results"] if row["engine"] == "onnxruntime"}
    assert timed == set(accepted) and figures["dataset"]["n"] == 24

    with running(create_app(package.root, HTTP_ONLY)) as url:
        served = post(url, "/predict", {"texts": TEXTS[:3]}).json()["predictions"]
    with Predictor(package.root, variant=serving_variant(Package.open(package.root))) as predictor:
        assert [p["label"] for p in served] == [p["label"] for p in predictor.predict(TEXTS[:3])]
