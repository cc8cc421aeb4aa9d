"""Run a package with ONNX Runtime: texts in, `[{label, score, scores}]` out. No torch here.

`Predictor` is the one code path that verify, bench, serve and batch all go through.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from onnxpack.core import cpu, untrusted
from onnxpack.core.config import ExplainConfig, LongTextOptions
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import MULTI_LABEL, Package, check_thresholds

from . import explain
from .feed import (
    Text,
    check_input_names,
    check_texts,
    chunking_tokenizer,
    default_stride,
    encode,
    encode_windows,
    package_tokenizer,
)
from .scores import aggregate_windows, sigmoid, softmax

log = logging.getLogger(__name__)

# Short names users type, mapped to ONNX Runtime's provider names.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
}
# chunk: texts tokenized into windows at a time, at most this many and this many characters (a
# slice's tokenizer Encodings take about 160 bytes a token: a 2,000-word text about 30 windows of
# 128 tokens; by texts alone, 300 texts of 20,000 words held 2.6 GB, docs/performance.md)
CHUNK_TEXTS = 256
CHUNK_CHARS = 1_000_000
# Without --provider: the first of these that this ONNX Runtime build has, CPU as the fallback.
DEFAULT_PROVIDER_ORDER = ("CUDAExecutionProvider", "CPUExecutionProvider")


def all_providers() -> list[str]:
    """Every execution provider ONNX Runtime knows of."""
    return list(ort.get_all_providers())


def available_providers() -> list[str]:
    """The execution providers this installed ONNX Runtime build can use."""
    return list(ort.get_available_providers())


def resolve_providers(provider: str | None) -> list[str]:
    """The provider list for a session: the one asked for (then CPU as fallback), or the default."""
    available = available_providers()
    if provider is None:
        return [p for p in DEFAULT_PROVIDER_ORDER if p in available]
    name = PROVIDER_ALIASES.get(provider.lower(), provider)
    if name not in all_providers():
        raise OnnxpackError(f"unknown execution provider {provider!r}; available: {', '.join(available)}",
                            hint="run `onnxpack providers` to list them")
    if name not in available:
        raise OnnxpackError(f"execution provider {name} is not available in this ONNX Runtime build; "
                            f"available: {', '.join(available)}",
                            hint="install the onnxruntime build for it (e.g. onnxruntime-gpu) or pick an available one")
    return [name] + (["CPUExecutionProvider"] if name != "CPUExecutionProvider" else [])


def serving_variant(package: Package, provider: str | None = None) -> str:
    """What `serve` runs unless told: the fastest variant whose answer for a text does not depend
    on which other texts share its batch (a server batches strangers' texts together), among
    those gated on the providers `provider` resolves to (so `cpu` on a GPU host never gets fp16)."""
    return package.default_variant(resolve_providers(provider), batch_invariant=True)


def _slices(texts: Sequence[Text]) -> Iterator[tuple[int, int]]:
    """(start, end) of consecutive slices of at most CHUNK_TEXTS texts and CHUNK_CHARS characters
    (a longer text is a slice of its own)."""
    start, chars = 0, 0
    for i, text in enumerate(texts):
        size = sum(map(len, text)) if isinstance(text, (tuple, list)) else len(text)
        if i > start and (i - start == CHUNK_TEXTS or chars + size > CHUNK_CHARS):
            yield start, i
            start, chars = i, 0
        chars += size
    if start < len(texts):
        yield start, len(texts)


@functools.cache
def _warn_once(message: str) -> None:
    """A package's CPU warning once per process, not once per Predictor (serve and batch make several)."""
    log.warning("%s", message)


class Predictor:
    """A package loaded into an ONNX Runtime session plus its tokenizer.

    `predict(texts)` sorts texts by length and pads each batch only to its own longest
    row (dynamic padding), then returns results in the caller's order.
    """

    def __init__(self, package_dir: str | os.PathLike[str] | Package, provider: str | None = None,
                 threads: int | None = None, variant: str | None = None, model_file: Path | None = None,
                 thresholds: Sequence[float] | None = None) -> None:
        """`variant` picks one of the package's graphs (default: the fastest accepted one);
        `thresholds` overrides a multi-label package's per-label thresholds;
        `model_file` runs another .onnx with the package's tokenizer (`optimize` gates candidates so)."""
        self.package = package_dir if isinstance(package_dir, Package) else Package.open(package_dir)
        self.providers = resolve_providers(provider)
        self.variant = variant or self.package.default_variant(self.providers)  # what it runs on, not what exists
        manifest = self.package.manifest
        if model_file is None and (warning := cpu.int8_path_mismatch(manifest.variants.get(self.variant, {}).get("cpu"))):
            _warn_once(warning)
        self.labels = list(manifest.labels)
        self.max_length = manifest.max_length
        self.pairs = manifest.pairs
        self.multi_label = manifest.problem_type == MULTI_LABEL
        self.thresholds: list[float] = []
        if self.multi_label:
            self.set_thresholds(thresholds if thresholds is not None else manifest.thresholds or [])
        self.input_names = [t.name for t in manifest.inputs]
        check_input_names(self.input_names, f"package {self.package.root}")
        self.output_name = manifest.outputs[0].name
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        path = model_file or self.package.variant_path(self.variant)
        untrusted.trust(path, self.package)  # checked, and first run in a sandboxed subprocess, before this process loads it
        self.session = ort.InferenceSession(str(path), options, providers=self.providers)
        self.tokenizer = package_tokenizer(self.package.tokenizer_path, self.max_length, manifest.pad_token_id)
        self._chunkers: dict[int, Tokenizer] = {}  # --long-text chunk's tokenizers, by stride
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=10_000)

    def set_thresholds(self, thresholds: Sequence[float]) -> None:
        """A multi-label model's per-label thresholds for this predictor (the manifest keeps its own)."""
        if not self.multi_label:
            raise OnnxpackError("thresholds apply to multi-label models only; this one gives one label per text")
        check_thresholds(list(thresholds), self.labels)
        self.thresholds = list(thresholds)

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session = None

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Logits for an already tokenized batch; records the model's latency."""
        if self.session is None:
            raise OnnxpackError("this Predictor is closed", hint="create a new one with onnxpack.load()")
        started = time.perf_counter()
        (logits,) = self.session.run([self.output_name], feed)
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        return logits

    def encoded_batches(self, texts: Sequence[Any], batch_size: int,
                        feed: dict[str, np.ndarray] | None = None) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """`(indices, feed)` per batch: texts of similar length together (longest first), each batch
        padded only to its own longest row. Tokenizes all the texts once, or takes their `feed`
        already made (chunking's windows: then `texts` only counts the rows)."""
        if batch_size < 1:
            raise OnnxpackError(f"batch size must be a positive integer, got {batch_size}")
        if feed is None:
            check_texts(texts, self.pairs)
            feed = encode(self.tokenizer, texts, self.input_names)  # padded to the longest; each batch is cut below
        lengths = feed["attention_mask"].sum(axis=1)
        fixed = (self.tokenizer.padding or {}).get("length")  # padding set to a fixed length stays
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = fixed or int(lengths[batch].max())
            yield batch.tolist(), {name: feed[name][batch, :width] for name in self.input_names}

    def predict_logits(self, texts: Sequence[Text], batch_size: int = 32, long_text: str = "truncate",
                       stride: int | None = None, aggregate: str = "mean") -> np.ndarray:
        """Logits per text. `long_text="chunk"` reads a text longer than max_length whole (see `read`)."""
        return self.read(texts, batch_size, long_text, stride, aggregate)[0]

    def read(self, texts: Sequence[Text], batch_size: int = 32, long_text: str = "truncate",
             stride: int | None = None, aggregate: str = "mean") -> tuple[np.ndarray, np.ndarray]:
        """(logits per text, windows per text).

        truncate: a text's first max_length tokens, one window. chunk: all its tokens in windows of
        max_length, each with the special tokens, consecutive ones sharing `stride` tokens (default a
        quarter of the window); every window runs, windows of all texts batched together by length,
        and a text's logits are the mean (or max) of its windows'. A text of one window gets the
        logits the truncate path gives it."""
        LongTextOptions(long_text=long_text, stride=stride, aggregate=aggregate).validate()
        check_texts(texts, self.pairs)
        if long_text == "truncate":
            logits = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
            for batch, feed in self.encoded_batches(texts, batch_size):
                logits[batch] = self.run(feed)
            return logits, np.ones(len(texts), dtype=np.int64)
        tokenizer = self.chunker(default_stride(self.max_length) if stride is None else stride)
        window_logits, owners = [], []
        # A slice of texts at a time: memory follows the slice's windows, not the whole input's.
        for start, end in _slices(texts):
            feed, owner = encode_windows(tokenizer, texts[start:end], self.input_names,
                                         self.package.manifest.pad_token_id)
            logits = np.zeros((len(owner), len(self.labels)), dtype=np.float32)
            for batch, window_feed in self.encoded_batches(owner, batch_size, feed=feed):
                logits[batch] = self.run(window_feed)
            window_logits.append(logits)
            owners.append(owner + start)
        return aggregate_windows(np.concatenate(window_logits), np.concatenate(owners), len(texts), aggregate)

    def chunker(self, stride: int) -> Tokenizer:
        """The windowing tokenizer for `stride`, read from the package once (batch asks per chunk of rows)."""
        if stride not in self._chunkers:
            self._chunkers[stride] = chunking_tokenizer(self.package.tokenizer_path, self.max_length,
                                                        self.package.manifest.pad_token_id, stride, self.pairs)
        return self._chunkers[stride]

    def predict(self, texts: Sequence[Text], batch_size: int = 32, long_text: str = "truncate",
                stride: int | None = None, aggregate: str = "mean") -> list[dict[str, Any]]:
        """One `{"text", "label", "score", "scores"}` per text, in order; scores are softmax probabilities.
        With `long_text="chunk"` each also has `windows`, how many windows of the text were read."""
        logits, windows = self.read(texts, batch_size, long_text, stride, aggregate)
        results = self.results(texts, logits)
        if long_text == "chunk":
            for result, count in zip(results, windows):
                result["windows"] = int(count)
        return results

    def explain(self, texts: Sequence[Text], long_text: str = "truncate", stride: int | None = None,
                aggregate: str = "mean", max_words: int = ExplainConfig.max_words, label: str | None = None) -> list[dict[str, Any]]:
        """Which words moved each answer: per text, the label explained (the predicted one unless
        `label` names another), its score, and per word the fall in that score when the word is left
        out (leave-one-word-out occlusion; see runtime/explain.py)."""
        return explain.explain(self, texts, long_text, stride, aggregate, max_words, label)

    def results(self, texts: Sequence[Text], logits: np.ndarray) -> list[dict[str, Any]]:
        """`predict`'s objects for texts whose logits are already computed (serve batches its own).

        Multi-label: every label's sigmoid score, and `labels`, those at or over their threshold."""
        if self.multi_label:
            results = []
            for text, p in zip(texts, sigmoid(logits)):
                best = int(p.argmax())
                results.append({"text": text, "labels": [n for n, x, t in zip(self.labels, p, self.thresholds) if x >= t],
                                "label": self.labels[best], "score": float(p[best]),
                                "scores": {label: float(x) for label, x in zip(self.labels, p)}})
            return results
        results = []
        for text, p in zip(texts, softmax(logits)):
            best = int(p.argmax())
            results.append({"text": text, "label": self.labels[best], "score": float(p[best]),
                            "scores": {label: float(x) for label, x in zip(self.labels, p)}})
        return results
