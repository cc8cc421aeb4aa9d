"""The model families onnxpack packages, and what each needs: its graph inputs, its position
limit, and the ONNX Runtime transformer fusions that apply. Standard library only, so train
(before its first step), export and optimize all read the same table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .registry import Registry

# The graph inputs onnxpack exports, and the only ones runtime.feed knows how to build.
INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS = "input_ids", "attention_mask", "token_type_ids"
KNOWN_INPUTS = (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)


@dataclasses.dataclass(frozen=True)
class Family:
    """How one Hugging Face `model_type` is exported and optimized."""

    # Whether the model has segment (token type) embeddings, so a sentence pair's segment ids
    # reach it. Single texts never need them: their segment ids are all 0, which the model
    # assumes when the input is absent, so the graph then takes input_ids and attention_mask only.
    segments: bool = False
    # Position ids of RoBERTa-style models start at pad_token_id + 1: 2 fewer tokens than positions.
    position_offset: int = 0
    # ONNX Runtime's transformers optimizer `model_type` whose fusions apply; None: none do.
    fusion: str | None = None

    def inputs(self, config: Any, pairs: bool) -> tuple[str, ...]:
        """The graph's inputs, in order."""
        takes_segments = self.segments and pairs and getattr(config, "type_vocab_size", 2) > 1
        return (INPUT_IDS, ATTENTION_MASK) + ((TOKEN_TYPE_IDS,) if takes_segments else ())

    def max_tokens(self, config: Any) -> int:
        return int(config.max_position_embeddings) - self.position_offset


FAMILIES: Registry[Family] = Registry("model type")
FAMILIES.register("bert")(Family(segments=True, fusion="bert"))
FAMILIES.register("distilbert")(Family(fusion="bert"))
FAMILIES.register("roberta")(Family(position_offset=2, fusion="bert"))
FAMILIES.register("xlm-roberta")(Family(position_offset=2, fusion="bert"))
FAMILIES.register("electra")(Family(segments=True, fusion="bert"))
# ALBERT shares one layer's weights across layers; ORT's BERT fusions do not match its graph.
FAMILIES.register("albert")(Family(segments=True))
# DeBERTa's disentangled attention and MPNet's relative position bias have no ORT fusion.
FAMILIES.register("deberta-v2")(Family(segments=True))
FAMILIES.register("mpnet")(Family(position_offset=2))


def family(model_type: str) -> Family:
    """The family of a `model_type`; an unknown one is a one-line error listing the known ones."""
    return FAMILIES.get(model_type)
