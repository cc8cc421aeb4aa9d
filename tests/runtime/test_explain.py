"""explain.py: leave-one-word-out occlusion. Each attribution is the fall of the explained label's
score when the word's tokens are left out, computed here again row by row; words map to the
tokenizer's pieces for WordPiece, byte-level BPE and SentencePiece-style tokenizers alike."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from onnxpack.core.errors import OnnxpackError
from onnxpack.runtime.explain import _token_words, plan, words_of
from onnxpack.runtime.feed import pad_rows
from onnxpack.runtime.predictor import Predictor
from onnxpack.runtime.scores import sigmoid, softmax

SENTENCE = "The boy, who was tired, sat on a bench."


@pytest.fixture(scope="module")
def predictor(tiny_model_dir, tmp_path_factory):
    """A tiny BERT with large random weights: its scores move with every word (the trained tiny
    package's barely do), so a wrong row or sign shows."""
    from conftest import LARGE_WEIGHTS_ATOL, tiny_family_folder

    from onnxpack.core.config import ExportConfig
    from onnxpack.pytorch.export import export

    folder = tmp_path_factory.mktemp("explain")
    hf = tiny_family_folder("bert", tiny_model_dir, folder / "hf", ["no", "yes"], initializer_range=0.5)
    with Predictor(export(hf, folder / "pkg", ExportConfig(atol=LARGE_WEIGHTS_ATOL))) as p:
        yield p


def _score(predictor: Predictor, row: dict, label: int) -> float:
    logits = predictor.run(pad_rows([row], predictor.input_names, predictor.package.manifest.pad_token_id))
    return float((sigmoid(logits) if predictor.multi_label else softmax(logits))[0, label])


def test_each_attribution_is_the_score_fall_without_the_word(predictor):
    (answer,) = predictor.explain([SENTENCE])
    (expected,) = predictor.predict([SENTENCE])
    assert answer["label"] == answer["predicted"] == expected["label"]
    assert answer["score"] == pytest.approx(expected["score"], abs=1e-6)
    assert [w["word"] for w in answer["words"]] == SENTENCE.split()
    (occlusion,) = plan(predictor, [SENTENCE])
    k = predictor.labels.index(answer["label"])
    full = _score(predictor, occlusion.rows[0], k)
    for i, word in enumerate(answer["words"]):
        row = occlusion.rows[1 + i]
        assert occlusion.row_word[1 + i] == i
        assert word["attribution"] == pytest.approx(full - _score(predictor, row, k), abs=1e-5)
    assert max(abs(w["attribution"]) for w in answer["words"]) > 0.01


def test_a_text_runs_as_one_call_of_n_plus_one_rows(predictor):
    calls = len(predictor.latencies_ms)
    (occlusion,) = plan(predictor, [SENTENCE])
    predictor.explain([SENTENCE])
    assert len(predictor.latencies_ms) == calls + 1
    assert len(occlusion.rows) == len(SENTENCE.split()) + 1
    # Every word's tokens are left out once: the rows' missing tokens add up to the text's own tokens.
    full = len(occlusion.rows[0]["input_ids"])
    specials = sum(predictor.tokenizer.encode(SENTENCE).special_tokens_mask)
    assert sum(full - len(r["input_ids"]) for r in occlusion.rows[1:]) == full - specials


def test_another_label_can_be_explained(predictor):
    (answer,) = predictor.explain([SENTENCE])
    other = next(label for label in predictor.labels if label != answer["label"])
    (flipped,) = predictor.explain([SENTENCE], label=other)
    assert flipped["label"] == other and flipped["predicted"] == answer["label"]
    assert flipped["score"] == pytest.approx(1 - answer["score"], abs=1e-6)  # two labels: the scores mirror
    for a, b in zip(answer["words"], flipped["words"]):
        assert b["attribution"] == pytest.approx(-a["attribution"], abs=1e-5)


def test_truncate_marks_the_words_past_the_window_unread(predictor):
    text = " ".join(["the cat sat"] * 40)  # 120 words, past the tiny package's window
    (answer,) = predictor.explain([text])
    read = [w for w in answer["words"] if w["attribution"] is not None]
    assert 0 < len(read) < len(answer["words"]) and answer["windows"] == 1
    assert all(w["attribution"] is None for w in answer["words"][len(read):])  # the unread ones are the last


def test_chunk_explains_window_by_window(predictor):
    text = " ".join(f"word{i % 7} is here" for i in range(60))
    (answer,) = predictor.explain([text], long_text="chunk")
    (expected,) = predictor.predict([text], long_text="chunk")
    assert answer["windows"] == expected["windows"] > 1
    assert answer["label"] == expected["label"] and answer["score"] == pytest.approx(expected["score"], abs=1e-5)
    assert all(w["attribution"] is not None for w in answer["words"])  # every word is read
    (occlusion,) = plan(predictor, [text], long_text="chunk")
    k = predictor.labels.index(answer["label"])
    # A word's attribution is the change in the mean of the window scores: the sum over its windows / windows.
    for i in (0, len(answer["words"]) // 2, len(answer["words"]) - 1):
        total = 0.0
        for r in np.flatnonzero(occlusion.row_word == i):
            w = occlusion.row_window[r]
            own = np.flatnonzero((occlusion.row_window == w) & (occlusion.row_word == -1))[0]
            total += _score(predictor, occlusion.rows[own], k) - _score(predictor, occlusion.rows[r], k)
        assert answer["words"][i]["attribution"] == pytest.approx(total / answer["windows"], abs=1e-5)


def test_bad_input_is_one_line(predictor):
    with pytest.raises(OnnxpackError, match="over --max-words 3"):
        predictor.explain([SENTENCE], max_words=3)
    with pytest.raises(OnnxpackError, match="unknown label 'maybe'"):
        predictor.explain([SENTENCE], label="maybe")
    with pytest.raises(OnnxpackError, match="text 0 is empty"):
        predictor.explain(["  "])
    with pytest.raises(OnnxpackError, match="--stride must be smaller than the window"):
        predictor.explain([SENTENCE], long_text="chunk", stride=predictor.max_length)
    with pytest.raises(OnnxpackError, match="--aggregate must be mean or max"):
        predictor.explain([SENTENCE], aggregate="median")


def test_pairs_explain_both_texts_and_multi_label_uses_sigmoid(tiny_model_dir, tmp_path):
    from conftest import LARGE_WEIGHTS_ATOL, tiny_family_folder

    from onnxpack.core.config import ExportConfig
    from onnxpack.pytorch.export import export

    folder = tiny_family_folder("bert", tiny_model_dir, tmp_path / "hf", ["a", "b", "c"],
                                problem_type="multi_label_classification", initializer_range=0.5)
    package = export(folder, tmp_path / "pkg", ExportConfig(pairs=True, atol=LARGE_WEIGHTS_ATOL))
    pair = ("the cat sat on the mat", "a dog barked at it")
    with Predictor(package.root) as predictor:
        (answer,) = predictor.explain([pair])
        (expected,) = predictor.predict([pair])
        assert answer["score"] == pytest.approx(expected["scores"][answer["label"]], abs=1e-6)
        assert [(w["part"], w["word"]) for w in answer["words"]] == \
            [(0, w) for w in pair[0].split()] + [(1, w) for w in pair[1].split()]
        (occlusion,) = plan(predictor, [pair])
        k = predictor.labels.index(answer["label"])
        full = _score(predictor, occlusion.rows[0], k)
        for i, word in enumerate(answer["words"]):
            assert word["attribution"] == pytest.approx(full - _score(predictor, occlusion.rows[1 + i], k), abs=1e-5)
        assert max(abs(w["attribution"]) for w in answer["words"]) > 0.01
        (chunked,) = predictor.explain([(pair[0], " ".join([pair[1]] * 30))], long_text="chunk")
        assert chunked["windows"] > 1 and all(w["attribution"] is not None for w in chunked["words"])
        with pytest.raises(OnnxpackError, match="the first text of the pair alone fills the window"):
            predictor.explain([(" ".join([pair[0]] * 30), pair[1])], long_text="chunk")
        # A pair's segment ids go with its tokens when a word is left out.
        second = occlusion.rows[len(pair[0].split()) + 1]
        assert second["token_type_ids"].sum() < occlusion.rows[0]["token_type_ids"].sum()


def _wordpiece() -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def _byte_level() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _metaspace() -> Tokenizer:
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    return tokenizer


CORPUS = ["The boy, who was tired, sat on a bench.", "unbelievably long words split into pieces!",
          "it's 42 degrees (roughly) outside"] * 20


@pytest.mark.parametrize("make", [_wordpiece, _byte_level, _metaspace])
def test_words_own_the_pieces_between_spaces(make):
    """Whatever the tokenizer's idea of a word, a word here is what lies between spaces, and each
    piece belongs to the word its characters are in."""
    tokenizer = make()
    specials = ["[CLS]", "[SEP]", "[UNK]", "[PAD]"]
    trainer = {models.WordPiece: trainers.WordPieceTrainer, models.BPE: trainers.BpeTrainer,
               models.Unigram: trainers.UnigramTrainer}[type(tokenizer.model)](vocab_size=120, special_tokens=specials)
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    for text in ("  The boy, who was tired,  sat  on a bench. ", "unbelievably long words!", "it's 42 (roughly)"):
        words = words_of(text)
        encoding = tokenizer.encode(text)
        owners = _token_words(encoding, words, (text,))
        assert owners[0] == owners[-1] == -1  # [CLS] and [SEP]
        assert sorted(set(owners[1:-1])) == list(range(len(words)))  # every word has a piece
        for owner, (start, end) in zip(owners[1:-1], encoding.offsets[1:-1]):
            word, piece = words[owner], text[start:end]
            if piece.strip():  # its first visible character is in the word
                assert word.start <= start + piece.find(piece.strip()[0]) < word.end, (text, start, end, word)
            else:  # a piece that only marks a space goes with the word after it (the last word at the end)
                after = [w for w in words if w.start >= start]
                assert word == (after[0] if after else words[-1]), (text, start, end, word)
