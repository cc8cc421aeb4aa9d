"""Which words moved an answer: leave-one-word-out occlusion, with ONNX Runtime only (no torch).

A word is a run of non-space characters, that is, the tokenizer's pieces between two spaces. Each
window the model reads becomes n + 1 rows, run as one batched call: the window itself, and the
window without each of its n words' tokens. A word's attribution is how much the explained label's
score falls when the word is gone; negative, it argued against the label. Under `chunk` a text is
explained window by window, and a word's attribution is the change in the mean of its text's window
scores (a pair's first text is in every window, so its words add up over all of them).

`plan` and `explanation` are apart so the server can run the rows through its batcher.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Encoding

from onnxpack.core.config import ExplainConfig, LongTextOptions
from onnxpack.core.errors import OnnxpackError

from .feed import ENCODING_FIELDS, Text, check_texts, default_stride, pad_rows, window_encodings
from .scores import aggregate_windows, sigmoid, softmax

if TYPE_CHECKING:
    from .predictor import Predictor

WORD = re.compile(r"\S+")


@dataclasses.dataclass
class Word:
    part: int  # 0, or 1 for the second text of a pair
    start: int  # character offsets in that text
    end: int
    text: str


@dataclasses.dataclass
class Occlusion:
    """One text's rows: per window the model reads, the window and then the window without each word."""

    text: Text
    words: list[Word]
    rows: list[dict[str, np.ndarray]]  # unpadded token rows, input name -> ids
    row_window: np.ndarray  # the window of each row
    row_word: np.ndarray  # the word a row leaves out, -1 for a window's own row
    windows: int


def words_of(text: Text) -> list[Word]:
    parts = text if isinstance(text, (tuple, list)) else (text,)
    return [Word(part, m.start(), m.end(), m.group()) for part, piece in enumerate(parts)
            for m in WORD.finditer(piece)]


def _token_words(window: Encoding, words: list[Word], parts: Sequence[str]) -> list[int]:
    """The word of each token of `window`, -1 for special tokens and padding."""
    starts: dict[int, list[int]] = {}  # part -> its words' start offsets, in order
    first: dict[int, int] = {}  # part -> index of its first word in `words`
    for i, word in enumerate(words):
        starts.setdefault(word.part, []).append(word.start)
        first.setdefault(word.part, i)
    owners = []
    for sequence, (start, end), special, mask in zip(window.sequence_ids, window.offsets,
                                                     window.special_tokens_mask, window.attention_mask):
        if sequence is None or special or not mask or sequence not in starts:
            owners.append(-1)
            continue
        piece, at = parts[sequence], end - 1 if end > start else start
        if at >= len(piece) or piece[at].isspace():  # a piece that is only a word's leading space marker
            k = min(bisect.bisect_left(starts[sequence], start), len(starts[sequence]) - 1)
        else:
            k = max(bisect.bisect_right(starts[sequence], at) - 1, 0)
        owners.append(first[sequence] + k)
    return owners


def occlusion(text: Text, windows: Sequence[Encoding], input_names: Sequence[str], max_words: int,
              index: int = 0) -> Occlusion:
    """The rows that explain `text`, read as `windows` (its encodings, overflow included)."""
    parts = tuple(text) if isinstance(text, (tuple, list)) else (text,)
    words = words_of(text)
    if not words:
        raise OnnxpackError(f"text {index} has no words to explain", hint="pass a text with at least one word")
    rows, row_window, row_word, read = [], [], [], set()
    for w, window in enumerate(windows):
        length = sum(window.attention_mask)
        full = {name: np.array(getattr(window, ENCODING_FIELDS[name])[:length], dtype=np.int64) for name in input_names}
        owners = np.array(_token_words(window, words, parts)[:length])
        rows.append(full)
        row_window.append(w)
        row_word.append(-1)
        for word in dict.fromkeys(owners[owners >= 0].tolist()):
            read.add(word)
            keep = owners != word
            rows.append({name: ids[keep] for name, ids in full.items()})
            row_window.append(w)
            row_word.append(word)
    if len(read) > max_words:
        raise OnnxpackError(f"text {index} has {len(read)} words to explain, over --max-words {max_words}",
                            hint="explain a shorter text, or raise --max-words (the work grows with the words)")
    return Occlusion(text, words, rows, np.array(row_window), np.array(row_word), len(windows))


def plan(predictor: Predictor, texts: Sequence[Text], long_text: str = "truncate", stride: int | None = None,
         max_words: int = ExplainConfig.max_words) -> list[Occlusion]:
    """Each text's occlusion rows, tokenized as `predictor.read` tokenizes them."""
    LongTextOptions(long_text=long_text, stride=stride).validate()
    check_texts(texts, predictor.pairs)
    if long_text == "chunk":  # padding to the batch's longest is cut off again in `occlusion`
        encodings = window_encodings(predictor.chunker(default_stride(predictor.max_length) if stride is None
                                                        else stride), texts)
    else:
        encodings = predictor.tokenizer.encode_batch([tuple(t) if isinstance(t, list) else t for t in texts])
    plans = []
    for i, (text, encoding) in enumerate(zip(texts, encodings)):
        windows = [encoding, *encoding.overflowing] if long_text == "chunk" else [encoding]
        plans.append(occlusion(text, windows, predictor.input_names, max_words, i))
    return plans


def explanation(predictor: Predictor, plan: Occlusion, logits: np.ndarray, aggregate: str = "mean",
                label: str | None = None) -> dict[str, Any]:
    """The answer for one text from the logits of its rows: the label explained (the predicted one
    unless `label` names another), its score, and each word's attribution (None: not read, e.g. past
    the window under truncate)."""
    own = plan.row_word == -1
    text_logits, _ = aggregate_windows(logits[own], np.zeros(plan.windows, dtype=np.int64), 1, aggregate)
    answer = predictor.results([plan.text], text_logits)[0]
    if label is None:
        label = answer["label"]
    elif label not in predictor.labels:
        raise OnnxpackError(f"unknown label {label!r}; the labels are {', '.join(map(str, predictor.labels))}")
    k = predictor.labels.index(label)
    scores = (sigmoid(logits) if predictor.multi_label else softmax(logits))[:, k]
    window_score = scores[own]  # row_window of the own rows is 0..windows-1 in order
    drop = window_score[plan.row_window] - scores
    total = np.zeros(len(plan.words))
    read = np.zeros(len(plan.words), dtype=bool)
    for word, change in zip(plan.row_word[~own], drop[~own]):
        total[word] += change
        read[word] = True
    total /= plan.windows
    words = []
    for i, word in enumerate(plan.words):
        item = {"word": word.text, "start": word.start, "end": word.end,
                "attribution": float(total[i]) if read[i] else None}
        if predictor.pairs:
            item = {"part": word.part, **item}
        words.append(item)
    return {"text": plan.text, "label": label, "score": float(answer["scores"][label]), "predicted": answer["label"],
            "windows": plan.windows, "words": words}


def explain(predictor: Predictor, texts: Sequence[Text], long_text: str = "truncate", stride: int | None = None,
            aggregate: str = "mean", max_words: int = ExplainConfig.max_words, label: str | None = None) -> list[dict[str, Any]]:
    """One explanation per text (see `explanation`); each window's n + 1 rows run as one call."""
    LongTextOptions(aggregate=aggregate).validate()
    answers = []
    for one in plan(predictor, texts, long_text, stride, max_words):
        logits = np.empty((len(one.rows), len(predictor.labels)), dtype=np.float32)
        for w in range(one.windows):
            rows = np.flatnonzero(one.row_window == w)
            logits[rows] = predictor.run(pad_rows([one.rows[r] for r in rows], predictor.input_names,
                                                  predictor.package.manifest.pad_token_id))
        answers.append(explanation(predictor, one, logits, aggregate, label))
    return answers
