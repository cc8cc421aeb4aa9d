"""The Open Inference Protocol (KServe V2) model, apart from any transport: which tensors a
request may hold and what they must look like, the model's metadata, and the answer's tensors.

HTTP (JSON or the binary extension) and gRPC turn their messages into `Tensor`s and back;
every check, and every error message, is here once. Mistakes raise OnnxpackError: HTTP
answers 400, gRPC INVALID_ARGUMENT.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import Field, StringConstraints, TypeAdapter, ValidationError

from onnxpack.core.errors import OnnxpackError
from onnxpack.runtime.feed import Text

from .service import Service

TEXT_INPUT = "text"  # the BYTES input; the token inputs are named as the package names them
TEXT_PAIR_INPUT = "text_pair"  # a pair model's second text, a BYTES tensor beside TEXT_INPUT
OUTPUTS = ("logits", "label", "score")
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("classification",)  # the V2 extensions served, besides REST's binary_tensor_data


@dataclasses.dataclass
class Tensor:
    """An input tensor, whichever protocol brought it."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]  # row-major, flat or nested (V2 JSON allows both)


def text_type(service: Service) -> Any:
    """One text as the server accepts it: not only spaces, within the wider of long_text's
    character limits (Service.check_chars then holds it to its own long_text's)."""
    return Annotated[str, StringConstraints(min_length=1, max_length=max(service.max_chars.values()), pattern=r"\S")]


def texts_type(service: Service) -> Any:
    return Annotated[list[text_type(service)], Field(min_length=1, max_length=service.config.max_texts)]


@dataclasses.dataclass
class Call:
    """A checked inference request: texts (or pairs), or token rows; the outputs it asks for."""

    texts: list[Text] | None
    tokens: dict[str, np.ndarray] | None
    outputs: set[str]
    top_k: int = 0  # the classification extension: `logits` as its k best "value:index:label" strings
    long_text: str = "truncate"  # the request's `long_text` parameter, else the server's default


class V2:
    """The V2 model of one service: parse requests, describe the model, build answers."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.manifest = service.manifest
        self.config = service.config
        self.text_names = (TEXT_INPUT, TEXT_PAIR_INPUT) if self.manifest.pairs else (TEXT_INPUT,)
        self.token_names = [t.name for t in self.manifest.inputs]
        self._texts = TypeAdapter(texts_type(service))

    def metadata(self) -> dict[str, Any]:
        m = self.manifest
        tokens = [{"name": n, "datatype": "INT64", "shape": [-1, -1]} for n in self.token_names]
        texts = [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in self.text_names]
        return {"name": m.name, "versions": [], "platform": PLATFORM, "inputs": [*texts, *tokens],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, len(m.labels)]},
                            {"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "score", "datatype": "FP32", "shape": [-1]}]}

    def parse(self, inputs: Sequence[Tensor], outputs: Sequence[tuple[str, dict[str, Any]]] | None,
              parameters: Mapping[str, Any] | None = None) -> Call:
        """`outputs`: (name, parameters) of each requested output; None for all of them. `parameters`:
        the request's, of which `long_text` (truncate or chunk) is read."""
        wanted, top_k = self._requested_outputs(outputs)
        long_text = self.service.long_text((parameters or {}).get("long_text"), "parameter long_text")
        by_name = self._inputs_by_name(inputs)
        if TEXT_INPUT not in by_name:
            return Call(None, self._token_inputs(by_name), wanted, top_k, long_text)
        columns = []
        for name in self.text_names:
            flat = _flat_data(by_name[name], "BYTES", ([None], [None, 1]))
            try:
                columns.append(self._texts.validate_python(flat))
            except ValidationError as e:
                raise OnnxpackError(f"input {name!r}: {describe_errors(e.errors(), 'data')}") from None
            self.service.check_chars(columns[-1], long_text, f"input {name!r}: data")
        if len({len(c) for c in columns}) > 1:
            raise OnnxpackError(f"inputs {TEXT_INPUT!r} and {TEXT_PAIR_INPUT!r} hold different numbers of texts")
        return Call(list(zip(*columns)) if len(columns) == 2 else columns[0], None, wanted, top_k, long_text)

    def answer(self, logits: np.ndarray, results: list[dict[str, Any]],
               call: Call) -> list[tuple[str, str, list[int], np.ndarray | list[str]]]:
        """The answer's tensors, `(name, datatype, shape, values)`, in OUTPUTS' order."""
        tensors = {"logits": ("FP32", list(logits.shape), logits) if not call.top_k else self._classes(logits, call.top_k),
                   "label": ("BYTES", [len(results)], [r["label"] for r in results]),
                   "score": ("FP32", [len(results)], np.array([r["score"] for r in results], dtype=np.float32))}
        return [(name, *tensors[name]) for name in OUTPUTS if name in call.outputs]

    def _classes(self, logits: np.ndarray, k: int) -> tuple[str, list[int], list[str]]:
        """Triton's classification extension: per row, the k largest logits as "value:index:label"."""
        best = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        labels = self.manifest.labels
        return "BYTES", [len(logits), best.shape[1]], [f"{row[i]:g}:{i}:{labels[i]}" for row, top in zip(logits, best)
                                                       for i in top]

    def _requested_outputs(self, outputs: Sequence[tuple[str, dict[str, Any]]] | None) -> tuple[set[str], int]:
        if outputs is None:
            return set(OUTPUTS), 0
        names = {name for name, _ in outputs}
        if unknown := sorted(names - set(OUTPUTS)):
            raise OnnxpackError(f"unknown output {unknown[0]!r}; known: {', '.join(OUTPUTS)}")
        top_k = 0
        for name, parameters in outputs:
            if (k := (parameters or {}).get("classification")) is None:
                continue
            if name != "logits":
                raise OnnxpackError(f"output {name!r}: the classification extension applies to 'logits' only")
            if type(k) is not int or k < 1:
                raise OnnxpackError(f"output 'logits': classification must be a positive integer, got {k!r}")
            top_k = min(k, len(self.manifest.labels))
        return names, top_k

    def _inputs_by_name(self, tensors: Sequence[Tensor]) -> dict[str, Tensor]:
        text_names, token_names = self.text_names, self.token_names
        if not tensors:
            raise OnnxpackError(f"inputs: no input tensors; send {TEXT_INPUT!r} or the token inputs")
        inputs: dict[str, Tensor] = {}
        for tensor in tensors:
            if tensor.name not in (*text_names, *token_names):
                raise OnnxpackError(f"unknown input {tensor.name!r}; known: {', '.join([*text_names, *token_names])}")
            if tensor.name in inputs:
                raise OnnxpackError(f"input {tensor.name!r} given twice")
            inputs[tensor.name] = tensor
        given_texts = [n for n in text_names if n in inputs]
        if given_texts and len(inputs) > len(given_texts):
            raise OnnxpackError(f"send either the text inputs ({', '.join(text_names)}) or the token inputs "
                                f"({', '.join(token_names)}), not both")
        if given_texts and len(given_texts) < len(text_names):
            raise OnnxpackError(f"this model reads sentence pairs: send both {TEXT_INPUT!r} and {TEXT_PAIR_INPUT!r}")
        if TEXT_PAIR_INPUT in inputs and TEXT_INPUT not in inputs:
            raise OnnxpackError(f"missing input {TEXT_INPUT!r}: {TEXT_PAIR_INPUT!r} is the second text of a pair")
        if not given_texts and (missing := [n for n in token_names if n not in inputs]):
            raise OnnxpackError(f"missing input {missing[0]!r}: token inputs need all of {', '.join(token_names)}")
        return inputs

    def _token_inputs(self, inputs: dict[str, Tensor]) -> dict[str, np.ndarray]:
        """The token inputs as int64 arrays (batch × sequence), checked against the package."""
        config, manifest, vocab = self.config, self.manifest, self.service.vocab_size
        arrays = {}
        for name, tensor in inputs.items():
            flat = _flat_data(tensor, "INT64", ([None, None],))
            if not all(type(x) is int for x in flat):  # bool is an int subclass; JSON true is not a token id
                raise OnnxpackError(f"input {name!r} must hold integers")
            try:
                arrays[name] = np.array(flat, dtype=np.int64).reshape(tensor.shape)
            except OverflowError:
                raise OnnxpackError(f"input {name!r} holds a value outside int64") from None
        ids = arrays["input_ids"]
        mask = arrays.get("attention_mask", np.ones_like(ids))
        if mask.shape != ids.shape:
            raise OnnxpackError(f"attention_mask has shape {list(mask.shape)} but input_ids has {list(ids.shape)}")
        batch, length = ids.shape
        if not 1 <= batch <= config.max_texts:
            raise OnnxpackError(f"input_ids has {batch} rows; expected 1 to {config.max_texts}")
        if not 1 <= length <= manifest.max_length:
            raise OnnxpackError(f"input_ids has {length} tokens per row; this model takes 1 to {manifest.max_length}",
                                hint="truncate to the model's max_length, or send text")
        if ids.min() < 0 or ids.max() >= vocab:
            bad = int(ids[(ids < 0) | (ids >= vocab)][0])
            raise OnnxpackError(f"input_ids holds {bad}, outside the vocabulary (0 to {vocab - 1})")
        if not np.isin(mask, (0, 1)).all():
            raise OnnxpackError("attention_mask must hold only 0 and 1")
        for name, values in arrays.items():
            if values.shape != ids.shape:
                raise OnnxpackError(f"{name} has shape {list(values.shape)} but input_ids has {list(ids.shape)}")
        if "token_type_ids" in arrays and not np.isin(arrays["token_type_ids"], (0, 1)).all():
            raise OnnxpackError("token_type_ids must hold only 0 and 1")
        return arrays


def _flat_data(tensor: Tensor, datatype: str, shapes: tuple[list[int | None], ...]) -> list[Any]:
    """The tensor's data as one flat list, after checking datatype, shape and element
    count. `shapes` are the accepted shapes, None standing for any size."""
    if tensor.datatype != datatype:
        raise OnnxpackError(f"input {tensor.name!r} must be {datatype}, got {tensor.datatype!r}")
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise OnnxpackError(f"input {tensor.name!r} has shape {shape}; sizes must be greater than or equal to 0")
    if not any(len(s) == len(shape) and all(d is None or d == got for d, got in zip(s, shape)) for s in shapes):
        accepted = " or ".join(str(["n" if d is None else d for d in s]).replace("'", "") for s in shapes)
        raise OnnxpackError(f"input {tensor.name!r} has shape {shape}; expected {accepted}")
    flat = tensor.data
    for _ in range(len(shape) - 1):  # V2 JSON allows nested rows as well as one flat list
        if flat and all(isinstance(x, list) for x in flat):
            flat = [y for x in flat for y in x]
    if len(flat) != math.prod(shape):
        raise OnnxpackError(f"input {tensor.name!r} has {len(flat)} values for shape {shape}")
    return flat


def describe_errors(errors: Sequence[Any], root: str = "") -> str:
    """Pydantic's errors as one line: where (`texts[3]`), then what."""
    parts = []
    for e in errors[:3]:
        if e["type"] == "json_invalid":
            parts.append(f"invalid JSON at character {e['loc'][-1]}: {e.get('ctx', {}).get('error', e['msg'])}")
            continue
        where = root + "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in e["loc"] if x != "body")
        where = where.lstrip(".")
        what = "is empty or only spaces" if e["type"] == "string_pattern_mismatch" else e["msg"]
        if tuple(e["loc"]) == ("body",) and e["type"] in ("model_attributes_type", "model_type", "dict_type"):
            what = "the body must be a JSON object, sent with Content-Type: application/json"
        parts.append(f"{where}: {what}" if where else what)
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more
