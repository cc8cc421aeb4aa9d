"""datamodule.py: length-grouped batches and the LightningDataModule's dynamic padding."""

from __future__ import annotations

import random

from onnxpack.core.data import BUNDLED_COLA, Split, Splits, load_splits
from onnxpack.pytorch.datamodule import (
    LengthGroupedBatchSampler,
    TextClassificationDataModule,
)

# --- LengthGroupedBatchSampler ------------------------------------------------------------------------------

def _cola_lengths() -> list[int]:
    texts = load_splits(str(BUNDLED_COLA)).train.texts
    return [len(t.split()) + 2 for t in texts]  # words + [CLS]/[SEP]: close enough to token counts


def _padding_ratio(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return padded / sum(lengths[i] for b in batches for i in b)


def test_sampler_yields_every_index_once():
    lengths = _cola_lengths()
    sampler = LengthGroupedBatchSampler(lengths, batch_size=32, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-len(lengths) // 32)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 32 for b in batches)
    assert sum(len(b) < 32 for b in batches) == 1  # 8551 is not a multiple of 32: one short batch


def test_sampler_groups_similar_lengths():
    lengths = _cola_lengths()
    grouped = list(LengthGroupedBatchSampler(lengths, batch_size=32, seed=0))
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    shuffled = [order[i:i + 32] for i in range(0, len(order), 32)]
    assert _padding_ratio(grouped, lengths) < 1.3
    assert _padding_ratio(shuffled, lengths) > 1.5


def test_sampler_shuffles_per_epoch_and_seed():
    lengths = [i % 17 for i in range(500)]
    a = LengthGroupedBatchSampler(lengths, batch_size=8, seed=1, window=4)
    epoch1, epoch2 = list(a), list(a)
    assert epoch1 != epoch2  # a new order each epoch
    assert list(LengthGroupedBatchSampler(lengths, batch_size=8, seed=1, window=4)) == epoch1  # seeded
    assert list(LengthGroupedBatchSampler(lengths, batch_size=8, seed=2, window=4)) != epoch1
    # batch order is shuffled, not longest-first
    firsts = [max(lengths[i] for i in b) for b in epoch1]
    assert firsts != sorted(firsts, reverse=True)


def test_sampler_small_input():
    sampler = LengthGroupedBatchSampler([3, 1, 2], batch_size=8, seed=0)
    assert list(sampler) == [[0, 2, 1]] and len(sampler) == 1


# --- TextClassificationDataModule ---------------------------------------------------------------------------

def test_datamodule_pads_each_batch_to_its_longest_row(small_cola, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    dm = TextClassificationDataModule(load_splits(str(small_cola)), tokenizer, batch_size=16, max_length=64)
    train_batches = list(dm.train_dataloader())
    assert sum(len(b["labels"]) for b in train_batches) == 256
    widths = set()
    for batch in train_batches:
        assert set(batch) == {"input_ids", "attention_mask", "labels"}  # no token_type_ids
        assert batch["input_ids"].shape == batch["attention_mask"].shape
        assert int(batch["attention_mask"].sum(1).max()) == batch["input_ids"].shape[1]  # no all-pad column
        widths.add(batch["input_ids"].shape[1])
    assert len(widths) > 1  # dynamic padding: batches differ in width
    val = list(dm.val_dataloader())
    assert [int(x) for b in val for x in b["labels"]] == dm.splits.validation.labels  # validation keeps its order


def test_datamodule_truncates_to_max_length(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_text = " ".join(["cat"] * 200)
    splits = Splits(train=None, validation=Split([long_text, "cat"], [1, 0]), source="mem")
    batch = next(iter(TextClassificationDataModule(splits, tokenizer, batch_size=2, max_length=16).val_dataloader()))
    assert batch["input_ids"].shape == (2, 16)
    assert batch["labels"].tolist() == [1, 0]
