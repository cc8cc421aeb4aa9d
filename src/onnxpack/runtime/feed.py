"""Texts, or text pairs, into a package's model inputs: the one place a feed is built.

The predictor (and through it verify, optimize, bench and batch), the server and export's
self-check all build feeds here, so every graph input, `token_type_ids` included, is made
the same way everywhere. numpy and tokenizers only: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np
from tokenizers import Encoding, Tokenizer

from onnxpack.core.data import Splits
from onnxpack.core.errors import DataError, OnnxpackError, PackageError
from onnxpack.core.families import (
    ATTENTION_MASK,
    INPUT_IDS,
    KNOWN_INPUTS,
    TOKEN_TYPE_IDS,
)
from onnxpack.core.package import Package

# One text, or a (first, second) pair for models trained on sentence pairs.
Text = Union[str, tuple[str, str]]
# A model input's field on a tokenizers Encoding
ENCODING_FIELDS = {INPUT_IDS: "ids", ATTENTION_MASK: "attention_mask", TOKEN_TYPE_IDS: "type_ids"}


def check_input_names(names: Sequence[str], where: str) -> None:
    """Refuse a graph whose inputs we cannot feed, naming them."""
    unknown = [n for n in names if n not in KNOWN_INPUTS]
    if unknown:
        raise PackageError(f"{where} takes input(s) {', '.join(unknown)} that onnxpack cannot feed; "
                           f"it feeds {', '.join(KNOWN_INPUTS)}",
                           hint="export the model with `onnxpack export`, which gives it those inputs only")
    missing = [n for n in (INPUT_IDS, ATTENTION_MASK) if n not in names]
    if missing:
        raise PackageError(f"{where} takes no {' or '.join(missing)}", hint="export the model with `onnxpack export`")


def package_tokenizer(path: Path, max_length: int, pad_token_id: int) -> Tokenizer:
    """A package's tokenizer.json, truncating to `max_length` (the longer text of a pair first, as
    transformers does) and padding each batch to its longest row."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=pad_token_id, pad_token=tokenizer.id_to_token(pad_token_id) or "[PAD]")
    return tokenizer


def chunking_tokenizer(path: Path, max_length: int, pad_token_id: int, stride: int, pairs: bool) -> Tokenizer:
    """A package's tokenizer.json that splits a long text into windows of `max_length` tokens, each with
    the model's special tokens, consecutive windows sharing `stride` tokens (tokenizers' own overflow).
    A pair's second text is split and its first repeated in every window."""
    if stride >= max_length:
        raise OnnxpackError(f"--stride must be smaller than the window ({max_length} tokens), got {stride}",
                            hint=f"the default is a quarter of the window: {default_stride(max_length)}")
    tokenizer = Tokenizer.from_file(str(path))
    try:
        tokenizer.enable_truncation(max_length, stride=stride, strategy="only_second" if pairs else "longest_first")
    except Exception as e:  # tokenizers refuses a stride its special tokens leave no room for
        raise OnnxpackError(f"--stride {stride} leaves no room in a {max_length}-token window ({e})",
                            hint=f"use a smaller --stride, e.g. {default_stride(max_length)}") from None
    tokenizer.enable_padding(pad_id=pad_token_id, pad_token=tokenizer.id_to_token(pad_token_id) or "[PAD]")
    return tokenizer


def default_stride(max_length: int) -> int:
    return max_length // 4


def window_encodings(tokenizer: Tokenizer, texts: Sequence[Text]) -> list[Encoding]:
    """Each text's encoding by a chunking tokenizer, its later windows in `.overflowing`; one line
    for a pair whose first text alone fills the window."""
    items = [tuple(t) if isinstance(t, list) else t for t in texts]
    try:
        return tokenizer.encode_batch(items)
    except Exception:  # tokenizers names no text: find the one whose first part fills the window
        for i, item in enumerate(items):
            try:
                tokenizer.encode(*item) if isinstance(item, tuple) else tokenizer.encode(item)
            except Exception:
                raise OnnxpackError(f"text {i}: the first text of the pair alone fills the window, so chunk "
                                    "cannot split the second", hint="shorten the first text, or use --long-text "
                                    "truncate") from None
        raise


def encode_windows(tokenizer: Tokenizer, texts: Sequence[Text], input_names: Sequence[str],
                   pad_token_id: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every window of every text (see chunking_tokenizer) as one feed padded to the longest window,
    and each window's text index, in order."""
    rows, owner = [], []
    for i, encoding in enumerate(window_encodings(tokenizer, texts)):
        for window in [encoding, *encoding.overflowing]:
            length = sum(window.attention_mask)  # each window without the batch's padding
            rows.append({name: np.array(getattr(window, ENCODING_FIELDS[name])[:length], dtype=np.int64)
                         for name in input_names})
            owner.append(i)
    return pad_rows(rows, input_names, pad_token_id), np.array(owner)


def check_texts(texts: Sequence[Text], pairs: bool) -> None:
    """A non-empty list of non-blank texts, all pairs for a pair model and none for the others."""
    if isinstance(texts, (str, tuple)):
        raise OnnxpackError(f"predict takes a list of {'pairs' if pairs else 'texts'}, got a single one",
                            hint='wrap it: predict([("first", "second")])' if pairs else 'wrap it: predict(["..."])')
    if len(texts) == 0:
        raise OnnxpackError("no texts to predict", hint="pass at least one text")
    for i, text in enumerate(texts):
        if pairs:
            if isinstance(text, str):
                raise OnnxpackError(f"text {i} is a single text, but this model was trained on sentence pairs",
                                    hint='pass (first, second) pairs: predict([("a", "b")]), or --pair A B')
            if not (isinstance(text, (tuple, list)) and len(text) == 2 and all(isinstance(t, str) for t in text)):
                raise OnnxpackError(f"text {i} is not a pair of two strings")
            parts = text
        else:
            if isinstance(text, (tuple, list)):
                raise OnnxpackError(f"text {i} is a pair, but this model takes single texts",
                                    hint="pass one text per row")
            if not isinstance(text, str):
                raise OnnxpackError(f"text {i} is {type(text).__name__}, not a string")
            parts = (text,)
        if any(not part.strip() for part in parts):
            raise OnnxpackError(f"text {i} is empty", hint="remove empty texts")


def check_row_kind(pairs: bool, splits: Splits) -> None:
    """Refuse data whose rows are pairs for a single-text model, or single texts for a pair model."""
    if splits.pairs != pairs:
        raise DataError(f"the package takes {'sentence pairs' if pairs else 'single texts'} but "
                        f"{splits.source} has {'pairs' if splits.pairs else 'single texts'}",
                        hint="pass --data with the kind of rows the model was trained on")


def columns(encodings: Sequence[Encoding], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The model inputs of already tokenized (and padded) rows."""
    return {name: np.array([getattr(e, ENCODING_FIELDS[name]) for e in encodings], dtype=np.int64) for name in input_names}


def encode(tokenizer: Tokenizer, texts: Sequence[Text], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The feed for one batch of texts or pairs, padded to the batch's longest row."""
    return columns(tokenizer.encode_batch([tuple(t) if isinstance(t, list) else t for t in texts]), input_names)


def pad_rows(rows: Sequence[Mapping[str, np.ndarray]], input_names: Sequence[str], pad_token_id: int) -> dict[str, np.ndarray]:
    """One feed from unpadded token rows (each `{input name: 1-D ids}`), padded on the right to the
    longest: ids with the pad token, the mask and segment ids with 0."""
    width = max(len(row[INPUT_IDS]) for row in rows)
    feed = {name: np.full((len(rows), width), pad_token_id if name == INPUT_IDS else 0, dtype=np.int64)
            for name in input_names}
    for k, row in enumerate(rows):
        for name in input_names:
            values = row[name] if name in row else (np.ones if name == ATTENTION_MASK else np.zeros)(
                len(row[INPUT_IDS]), dtype=np.int64)
            feed[name][k, :len(values)] = values
    return feed


def synthetic_feed(batch: int, seq: int, vocab: int, input_names: Sequence[str] = KNOWN_INPUTS) -> dict[str, np.ndarray]:
    """A full batch with no padding, for timing: every row is `seq` random tokens (their values do
    not change the time; the low ids, where vocabularies keep special tokens, are left out)."""
    rng = np.random.default_rng(batch * 1000 + seq)
    ids = rng.integers(vocab // 10, vocab, (batch, seq)).astype(np.int64)
    made = {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids), TOKEN_TYPE_IDS: np.zeros_like(ids)}
    return {name: made[name] for name in input_names}


def vocab_size(package: Package) -> int:
    """Token ids must stay below this: the model's vocabulary, else (older packages) the tokenizer's."""
    return package.manifest.architecture.get("vocab_size") or Tokenizer.from_file(
        str(package.tokenizer_path)).get_vocab_size()
