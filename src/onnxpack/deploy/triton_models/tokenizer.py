"""Triton Python-backend model: raw text (TYPE_STRING) in, the ONNX model's token tensors out.

Written by `onnxpack export-serving` as `<name>_tokenizer/1/model.py` next to the package's
tokenizer.json. It runs inside Triton, where onnxpack is not installed, so it needs only numpy
and `tokenizers` (pip install tokenizers in the server's Python). It tokenizes exactly as
onnxpack's feed does (truncation to max_length, the longer text of a pair first), but pads every
row to max_length: Triton's dynamic batcher merges only requests of the same shape.
"""

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def fixed_length_tokenizer(path: str, max_length: int, pad_token_id: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(path)
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(length=max_length, pad_id=pad_token_id,
                             pad_token=tokenizer.id_to_token(pad_token_id) or "[PAD]")
    return tokenizer


def decode_texts(column: np.ndarray, name: str) -> list:
    """A [batch, 1] BYTES tensor as str; an error message for a text that is not UTF-8 or is blank."""
    texts = []
    for i, value in enumerate(column.reshape(-1)):
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        if not text.strip():
            raise ValueError(f"input {name!r}: text {i} is empty")
        texts.append(text)
    return texts


def encode(tokenizer: Tokenizer, texts: list, output_names: list) -> dict:
    """The token tensors of a batch of texts or (first, second) pairs, each [batch, max_length]."""
    encodings = tokenizer.encode_batch(texts)
    return {name: np.array([getattr(e, FIELDS[name]) for e in encodings], dtype=np.int64) for name in output_names}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.tokenizer = fixed_length_tokenizer(str(folder / parameters["tokenizer_file"]),
                                                int(parameters["max_length"]), int(parameters["pad_token_id"]))
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                columns = [decode_texts(pb_utils.get_input_tensor_by_name(request, name).as_numpy(), name)
                           for name in self.input_names]
                if len({len(c) for c in columns}) > 1:
                    raise ValueError("the two text inputs hold different numbers of texts")
                texts = list(zip(*columns)) if len(columns) == 2 else columns[0]
            except (ValueError, UnicodeDecodeError) as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
                continue
            feed = encode(self.tokenizer, texts, self.output_names)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, feed[name]) for name in self.output_names]))
        return responses
