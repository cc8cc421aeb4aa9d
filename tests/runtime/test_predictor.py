"""predictor.py: the Predictor (texts in, labels out, with ONNX Runtime only) and provider selection."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import onnxpack
from onnxpack.core.errors import OnnxpackError, PackageError
from onnxpack.core.package import TOKENIZER, Package
from onnxpack.runtime.feed import encode
from onnxpack.runtime.predictor import (
    Predictor,
    all_providers,
    available_providers,
    resolve_providers,
    softmax,
)

TEXTS = [
    "the book was written by john",
    "go",
    "the professor who the students that the dean hired admired resigned after the long and tiring meeting",
    "him saw she",
    "what did you wonder whether mary bought at the store yesterday",
]


@pytest.fixture(scope="module")
def predictor(package_dir):
    with Predictor(package_dir) as p:
        yield p


def test_predict_results(predictor):
    results = predictor.predict(TEXTS[:2])
    assert [r["text"] for r in results] == TEXTS[:2]
    for r in results:
        assert r["label"] in predictor.labels == ["unacceptable", "acceptable"]
        assert set(r["scores"]) == set(predictor.labels)
        assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["score"] == max(r["scores"].values()) == r["scores"][r["label"]]
    assert len(predictor.latencies_ms) >= 1 and all(ms > 0 for ms in predictor.latencies_ms)


def test_batching_preserves_order_and_logits(predictor):
    batches = [batch for batch, _ in predictor.encoded_batches(TEXTS, 2)]
    assert [len(b) for b in batches] == [2, 2, 1]
    assert sorted(i for b in batches for i in b) == list(range(len(TEXTS)))
    together = predictor.predict_logits(TEXTS, batch_size=2)
    alone = np.concatenate([predictor.predict_logits([t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    assert [r["text"] for r in predictor.predict(TEXTS, batch_size=2)] == TEXTS


def test_batches_group_texts_by_length(predictor):
    true_lengths = [len(predictor.tokenizer.encode(t).ids) for t in TEXTS]  # one text: no padding
    longest_first = sorted(range(len(TEXTS)), key=true_lengths.__getitem__, reverse=True)
    assert longest_first[0] == 2
    batches = list(predictor.encoded_batches(TEXTS, 2))
    assert [i for b, _ in batches for i in b] == longest_first
    for batch, feed in batches:  # each padded to its own longest text, and no shorter
        assert feed["input_ids"].shape == (len(batch), max(true_lengths[i] for i in batch))
        assert feed["attention_mask"][:, -1].any()


def test_fixed_length_padding_is_kept(package_dir):
    """bench's seed-style row pads every sentence to a fixed length; batching must not trim it."""
    with Predictor(package_dir) as predictor:
        length = predictor.max_length  # the longest a text is truncated to
        predictor.tokenizer.enable_padding(pad_id=0, pad_token=predictor.tokenizer.id_to_token(0), length=length)
        widths = {feed["input_ids"].shape[1] for _, feed in predictor.encoded_batches(TEXTS, 2)}
    assert widths == {length}


def test_predict_matches_torch(predictor, trained_run):
    import torch

    from onnxpack.pytorch.model import load_checkpoint

    model, tokenizer, _ = load_checkpoint(trained_run / "best.ckpt")
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        expected = model(**enc).logits.numpy()
    np.testing.assert_allclose(predictor.predict_logits(TEXTS), expected, atol=1e-4, rtol=0)


def test_long_text_is_truncated(predictor):
    long_text = " ".join(["the cat sat on the mat"] * 60)  # far past the 64 position embeddings
    assert encode(predictor.tokenizer, [long_text], predictor.input_names)["input_ids"].shape == (1, predictor.max_length)
    (result,) = predictor.predict([long_text])
    assert result["label"] in predictor.labels


def test_encode_pads_to_the_longest_in_batch(predictor):
    feed = encode(predictor.tokenizer, ["go", TEXTS[2]], predictor.input_names)
    assert list(feed) == ["input_ids", "attention_mask"]
    assert feed["input_ids"].dtype == np.int64 and feed["attention_mask"].dtype == np.int64
    width = feed["input_ids"].shape[1]
    assert int(feed["attention_mask"][1].sum()) == width  # the long text fills the batch
    short = int(feed["attention_mask"][0].sum())
    assert short < width and (feed["input_ids"][0, short:] == predictor.package.manifest.pad_token_id).all()


def test_unicode_text(predictor):
    (result,) = predictor.predict(["naïve café — ünïcödé 🙂"])
    assert result["text"] == "naïve café — ünïcödé 🙂"


@pytest.mark.parametrize(("texts", "match"), [
    ([], "no texts to predict"),
    ([""], "text 0 is empty"),
    (["fine", "   "], "text 1 is empty"),
    (["fine", None], "text 1 is NoneType, not a string"),
    ([3], "text 0 is int, not a string"),
    ("a single string", "predict takes a list of texts, got a single one"),
])
def test_bad_inputs(predictor, texts, match):
    with pytest.raises(OnnxpackError, match=match):
        predictor.predict(texts)


def test_bad_batch_size(predictor):
    with pytest.raises(OnnxpackError, match="batch size must be a positive integer, got 0"):
        predictor.predict(["go"], batch_size=0)


def test_softmax_is_stable():
    probs = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, [[1.0, 0.0], [0.5, 0.5]], atol=1e-12)


# --- providers ----------------------------------------------------------------------------------------------

def test_resolve_providers_cpu():
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers("CPU") == ["CPUExecutionProvider"]
    assert resolve_providers("CPUExecutionProvider") == ["CPUExecutionProvider"]


def test_resolve_providers_default():
    providers = resolve_providers(None)
    assert providers[-1] == "CPUExecutionProvider" and set(providers) <= set(available_providers())


def test_unknown_provider_lists_available():
    with pytest.raises(OnnxpackError) as info:
        resolve_providers("warp-drive")
    assert str(info.value).startswith(f"unknown execution provider 'warp-drive'; available: "
                                      f"{', '.join(available_providers())}")
    assert "CPUExecutionProvider" in str(info.value)


# A provider ONNX Runtime knows of (in get_all_providers()) that no build of it a test host runs has:
# NNAPI is Android's, and no onnxruntime wheel for Linux, macOS or Windows, CPU or GPU, is built with it.
NEVER_AVAILABLE = "NnapiExecutionProvider"


def test_unavailable_provider_lists_available():
    assert NEVER_AVAILABLE in all_providers()
    with pytest.raises(OnnxpackError) as info:
        resolve_providers(NEVER_AVAILABLE)
    message = str(info.value)
    assert f"execution provider {NEVER_AVAILABLE} is not available" in message
    assert f"available: {', '.join(available_providers())}" in message


def test_predictor_with_unavailable_provider_fails_cleanly(package_dir):
    with pytest.raises(OnnxpackError, match=f"{NEVER_AVAILABLE} is not available"):
        Predictor(package_dir, provider=NEVER_AVAILABLE)


# --- loading ------------------------------------------------------------------------------------------------

def test_load_context_manager(package_dir):
    with onnxpack.load(package_dir, provider="cpu", threads=1) as p:
        assert isinstance(p, Predictor)
        assert p.providers == ["CPUExecutionProvider"]
        assert p.predict(["go"])[0]["label"] in p.labels
    with pytest.raises(OnnxpackError, match="closed"):
        p.predict(["go"])


def test_predictor_from_package_object(package_dir):
    package = Package.open(package_dir)
    with Predictor(package) as p:
        assert p.package is package and p.max_length == 64


def test_predictor_refuses_altered_package(package_copy):
    with open(package_copy / TOKENIZER, "ab") as f:
        f.write(b"\n")
    with pytest.raises(PackageError, match="altered"):
        Predictor(package_copy)


def test_predictor_refuses_non_package(tmp_path):
    with pytest.raises(PackageError, match="is not a package"):
        onnxpack.load(tmp_path)


def test_predicting_does_not_import_torch(package_dir):
    code = ("import onnxpack, sys; p = onnxpack.load(sys.argv[1]); p.predict(['go', 'the cat sat']); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch side imported'")
    result = subprocess.run([sys.executable, "-c", code, str(package_dir)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_graph_taking_an_unknown_input_is_refused(package_copy):
    """The manifest records the input signature; a graph with an input onnxpack cannot feed is refused."""
    import json

    import onnx

    from onnxpack.core.package import MANIFEST, MODEL, sha256_file

    model = onnx.load(str(package_copy / MODEL))
    old = model.graph.input[1].name
    model.graph.input[1].name = "position_ids"
    for node in model.graph.node:
        node.input[:] = ["position_ids" if i == old else i for i in node.input]
    onnx.save(model, str(package_copy / MODEL))
    manifest = json.loads((package_copy / MANIFEST).read_text())
    manifest["files"][MODEL] = sha256_file(package_copy / MODEL)
    (package_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackageError) as info:
        Predictor(package_copy)
    assert "takes input_ids (int64), position_ids (int64) but the manifest says attention_mask (int64), " \
           "input_ids (int64)" in str(info.value)
    manifest["inputs"][1]["name"] = "position_ids"
    (package_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=f"package {package_copy} takes input"):
        Predictor(package_copy)


def test_the_default_variant_is_one_gated_on_the_provider_it_runs_on(package_copy, monkeypatch):
    """On a CUDA host, provider="cpu" must not pick a variant gated on the GPU (fp16 runs there only)."""
    from onnxpack.runtime import predictor as runtime
    from onnxpack.runtime.predictor import serving_variant

    monkeypatch.setattr(runtime, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    package = Package.open(package_copy)
    package.update_manifest(variants={
        "fp32": {"file": "model.onnx", "items_per_s": 100, "provider": "CPUExecutionProvider", "batch_invariant": True},
        "fp16": {"file": "model.fp16.onnx", "items_per_s": 900, "provider": "CUDAExecutionProvider",
                 "batch_invariant": True}})
    assert package.default_variant(["CPUExecutionProvider"]) == "fp32"
    assert serving_variant(package, "cpu") == "fp32"
    assert serving_variant(package) == serving_variant(package, "cuda") == "fp16"  # the GPU, when it is used
    with Predictor(package_copy, provider="cpu") as predictor:  # model.fp16.onnx does not exist: it must not be picked
        assert predictor.providers == ["CPUExecutionProvider"] and predictor.variant == "fp32"


def test_a_variant_gated_on_another_int8_path_warns_once_on_load(package_copy, caplog):
    from onnxpack.core import cpu
    from onnxpack.core.package import FP32, MODEL

    elsewhere = "avx2" if cpu.int8_path() != "avx2" else "vnni"
    package = Package.open(package_copy)
    package.update_manifest(variants={FP32: {"file": MODEL, "cpu": {"processor": "A CPU elsewhere",
                                                                   "int8_path": elsewhere}}})
    with caplog.at_level("WARNING"):
        onnxpack.load(package_copy, variant=FP32).close()
        onnxpack.load(package_copy, variant=FP32).close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "A CPU elsewhere" in warnings[0] and elsewhere in warnings[0]
    caplog.clear()
    package.update_manifest(variants={FP32: {"file": MODEL, "cpu": cpu.record()}})
    with caplog.at_level("WARNING"):
        onnxpack.load(package_copy, variant=FP32).close()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


# ---- long texts: truncate or chunk ----

LONG = " ".join(["the cat that the dog chased sat on the mat near the door"] * 12)  # far past max_length


def test_chunk_leaves_a_text_of_one_window_bit_identical(predictor):
    short = ["the cat sat", "a dog ran to the door", "go"]
    truncated = predictor.predict_logits(short)
    chunked, windows = predictor.read(short, long_text="chunk")
    np.testing.assert_array_equal(chunked, truncated)
    assert windows.tolist() == [1, 1, 1]


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_a_long_texts_windows_each_run_alone_make_its_logits(predictor, aggregate):
    from onnxpack.runtime.feed import chunking_tokenizer, default_stride, encode_windows

    m = predictor.package.manifest
    tokenizer = chunking_tokenizer(predictor.package.tokenizer_path, m.max_length, m.pad_token_id,
                                   default_stride(m.max_length), pairs=False)
    feed, owner = encode_windows(tokenizer, [LONG], predictor.input_names, m.pad_token_id)
    assert len(owner) > 2 and set(owner) == {0}
    alone = []
    for k in range(len(owner)):  # each window on its own, without the others' padding
        width = int(feed["attention_mask"][k].sum())
        alone.append(predictor.run({name: feed[name][k:k + 1, :width] for name in predictor.input_names})[0])
    want = np.mean(alone, axis=0) if aggregate == "mean" else np.max(alone, axis=0)
    got, windows = predictor.read([LONG, "the cat sat"], long_text="chunk", aggregate=aggregate)
    assert windows.tolist() == [len(owner), 1]
    np.testing.assert_allclose(got[0], want, atol=1e-5)
    assert not np.array_equal(got[0], predictor.predict_logits([LONG])[0])  # it read past the first window


def test_windows_keep_special_tokens_and_share_stride_tokens(predictor):
    from onnxpack.runtime.feed import chunking_tokenizer, encode_windows

    m = predictor.package.manifest
    stride = 5
    tokenizer = chunking_tokenizer(predictor.package.tokenizer_path, m.max_length, m.pad_token_id, stride, False)
    feed, owner = encode_windows(tokenizer, [LONG], predictor.input_names, m.pad_token_id)
    ids = [row[: int(mask.sum())] for row, mask in zip(feed["input_ids"], feed["attention_mask"])]
    first, last = ids[0][0], ids[0][-1]  # [CLS] ... [SEP]
    assert all(w[0] == first and w[-1] == last for w in ids)
    assert all(len(w) == m.max_length for w in ids[:-1])
    for a, b in zip(ids, ids[1:]):  # the last `stride` tokens of a window open the next
        assert a[-1 - stride:-1].tolist() == b[1:1 + stride].tolist()


def test_predict_chunk_answers_carry_their_window_counts(predictor):
    results = predictor.predict([LONG, "the cat sat"], long_text="chunk")
    assert results[0]["windows"] > 1 and results[1]["windows"] == 1
    assert "windows" not in predictor.predict(["the cat sat"])[0]  # truncate, as before


@pytest.mark.parametrize("options, message", [
    ({"long_text": "chunk", "stride": 10_000}, "--stride must be smaller than the window"),
    ({"long_text": "chunk", "aggregate": "median"}, "--aggregate must be mean or max, got 'median'"),
    ({"long_text": "split"}, "--long-text must be truncate or chunk, got 'split'"),
    ({"long_text": "chunk", "stride": -1}, "--stride must be at least 0"),
])
def test_bad_long_text_options_are_one_line(predictor, options, message):
    with pytest.raises(OnnxpackError, match=message):
        predictor.read([LONG], **options)


def test_chunk_reads_texts_a_slice_at_a_time_with_the_same_answers(predictor, monkeypatch):
    from onnxpack.runtime import predictor as predictor_module

    texts = [LONG, "the cat sat", LONG[:200], "a dog", LONG[100:]]
    whole, windows = predictor.read(texts, long_text="chunk")
    monkeypatch.setattr(predictor_module, "CHUNK_TEXTS", 2)  # memory follows a slice of texts, not the input
    sliced, sliced_windows = predictor.read(texts, long_text="chunk")
    np.testing.assert_allclose(sliced, whole, atol=1e-6)
    assert sliced_windows.tolist() == windows.tolist()
    monkeypatch.setattr(predictor_module, "CHUNK_TEXTS", 256)
    monkeypatch.setattr(predictor_module, "CHUNK_CHARS", len(LONG))  # and not the length of its texts either
    assert list(predictor_module._slices(texts)) == [(0, 1), (1, 4), (4, 5)]
    sliced, sliced_windows = predictor.read(texts, long_text="chunk")
    np.testing.assert_allclose(sliced, whole, atol=1e-6)
    assert sliced_windows.tolist() == windows.tolist()
