"""The Open Inference Protocol's binary tensor data extension, as Triton and tritonclient speak it.

A request (or response) body is a JSON header of `Inference-Header-Content-Length` bytes, then the
raw bytes of each tensor whose `parameters.binary_data_size` says so, in order. BYTES elements are
each a 4-byte little-endian length and the bytes; numbers are little-endian arrays. The server
turns such a request into the plain JSON form before its one V2 handler reads it (so every limit
applies the same way) and turns the JSON answer back into binary where the request asks for it.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

from onnxpack.core.errors import OnnxpackError

HEADER = "inference-header-content-length"
EXTENSIONS = ("binary_tensor_data",)  # what /v2 lists for it
NUMPY = {"INT64": "<i8", "INT32": "<i4", "FP32": "<f4", "FP64": "<f8", "BOOL": "?"}


def decode_request(body: bytes, header_length: str) -> dict[str, Any]:
    """A binary-extension request as the JSON request it stands for (`data` filled in)."""
    if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
        raise OnnxpackError(f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes")
    size = int(header_length)
    try:
        request = json.loads(body[:size])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OnnxpackError(f"the JSON header is not valid JSON ({e})") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise OnnxpackError("the JSON header must be an object with an `inputs` list")
    offset = size
    for tensor in request["inputs"]:
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        n = parameters.pop("binary_data_size")
        if not isinstance(n, int) or n < 0 or offset + n > len(body):
            raise OnnxpackError(f"input {tensor.get('name')!r}: binary_data_size {n!r} runs past the body's end")
        tensor["data"] = elements(body[offset:offset + n], tensor.get("name"), tensor.get("datatype"), tensor.get("shape"))
        offset += n
    if offset != len(body):
        raise OnnxpackError(f"{len(body) - offset} bytes after the last binary tensor")
    return request


def elements(raw: bytes, name: Any, datatype: Any, shape: Any) -> list[Any]:
    """A tensor's raw bytes (a binary-extension part, or gRPC's raw_input_contents) as a flat list."""
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise OnnxpackError(f"input {name!r}: shape must be a list of sizes")
    count = math.prod(shape)
    if datatype == "BYTES":
        values, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise OnnxpackError(f"input {name!r}: a BYTES element's length is cut short")
            (length,) = struct.unpack_from("<I", raw, offset)
            if offset + 4 + length > len(raw):
                raise OnnxpackError(f"input {name!r}: a BYTES element runs past its tensor's bytes")
            try:
                values.append(raw[offset + 4:offset + 4 + length].decode("utf-8"))
            except UnicodeDecodeError:
                raise OnnxpackError(f"input {name!r}: element {len(values)} is not UTF-8") from None
            offset += 4 + length
    elif datatype in NUMPY:
        itemsize = np.dtype(NUMPY[datatype]).itemsize
        if len(raw) != count * itemsize:
            raise OnnxpackError(f"input {name!r}: {len(raw)} bytes for shape {shape} of {datatype} "
                                f"({count * itemsize} expected)")
        values = np.frombuffer(raw, dtype=NUMPY[datatype]).tolist()
    else:
        raise OnnxpackError(f"input {name!r}: datatype {datatype!r} is not supported in binary form")
    if len(values) != count:
        raise OnnxpackError(f"input {name!r}: {len(values)} elements for shape {shape} ({count} expected)")
    return values


def wants_binary(request: dict[str, Any]) -> set[str] | bool:
    """Which outputs the request wants in binary: True for all (`binary_data_output`), else names."""
    def flag(parameters: Any, key: str) -> bool:  # anything malformed is left to the handler's 4xx
        return isinstance(parameters, dict) and parameters.get(key) is True

    if flag(request.get("parameters"), "binary_data_output"):
        return True
    outputs = request.get("outputs")
    return {o.get("name") for o in outputs if isinstance(o, dict) and flag(o.get("parameters"), "binary_data")} \
        if isinstance(outputs, list) else set()


def encode_response(response: dict[str, Any], binary: set[str] | bool) -> tuple[bytes, int]:
    """(body, JSON header length) of a JSON answer with the wanted outputs moved to binary."""
    chunks = []
    for output in response.get("outputs", []):
        if binary is True or output["name"] in binary:
            raw = tensor_bytes(output["datatype"], output.pop("data"))
            output.setdefault("parameters", {})["binary_data_size"] = len(raw)
            chunks.append(raw)
    header = json.dumps(response, separators=(",", ":")).encode()
    return header + b"".join(chunks), len(header)


def tensor_bytes(datatype: str, data: Any) -> bytes:
    """A tensor's values in raw form: BYTES length-prefixed, numbers little-endian."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in (str(v).encode("utf-8") for v in data))
    return np.asarray(data, dtype=NUMPY[datatype]).tobytes()
