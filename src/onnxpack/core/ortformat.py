"""ONNX Runtime's own model format (`.ort`): a FlatBuffers file that ONNX Runtime's reduced (mobile)
builds load, written by `onnxruntime.tools.convert_onnx_models_to_ort` (deploy/mobile.py).

This reads the few header fields onnxpack needs (the ORT format version the file was written in, its
IR version and opsets, its graph's inputs) straight from the bytes, by the schema in ONNX Runtime's
onnxruntime/core/flatbuffers/schema/ort.fbs (the table slots are named below). It does not use the
Python bindings shipped in the wheel (onnxruntime.tools.ort_format_model): importing
`onnxruntime.tools` imports torch wherever torch is installed, and the runtime side never loads a
model framework (tests/test_layers.py).

ONNX Runtime decides a file's format by its name: a path ending in `.ort` is read as ORT format,
anything else as an ONNX protobuf, so `is_ort_file` does the same.

A reader that a hostile file could lead astray: every read is bounded by the file (an offset past
its end raises, which becomes one line), and callers read the graph's inputs only after ONNX
Runtime has loaded the file once in the sandboxed probe, where it runs the FlatBuffers verifier.
"""

from __future__ import annotations

import dataclasses
import mmap
import struct
from pathlib import Path

from .errors import OnnxpackError
from .onnxfile import dtype_name

SUFFIX = ".ort"
IDENTIFIER = b"ORTM"  # ort.fbs: file_identifier "ORTM", bytes 4..8 of the file
ONNX_DOMAIN = "ai.onnx"
# ort.fbs slots (field order in each table)
SESSION_ORT_VERSION, SESSION_MODEL = 0, 1  # table InferenceSession { ort_version: string; model: Model; ... }
MODEL_IR_VERSION, MODEL_OPSET_IMPORT, MODEL_GRAPH = 0, 1, 7  # table Model { ir_version: int64; opset_import; ...; graph }
OPSET_DOMAIN, OPSET_VERSION = 0, 1  # table OperatorSetId { domain: string; version: int64 }
GRAPH_NODE_ARGS, GRAPH_INPUTS = 1, 5  # table Graph { initializers; node_args: [ValueInfo]; ...; inputs: [string] }
VALUE_NAME, VALUE_TYPE = 0, 2  # table ValueInfo { name: string; doc_string; type: TypeInfo }
TYPE_VALUE_TYPE, TYPE_VALUE = 1, 2  # table TypeInfo { denotation; value: TypeInfoValue (union: type byte, table) }
TENSOR_TYPE = 1  # union TypeInfoValue { tensor_type: TensorTypeAndShape, sequence_type, map_type }
TENSOR_ELEM_TYPE = 0  # table TensorTypeAndShape { elem_type: TensorDataType (ONNX's element type numbers); shape }


@dataclasses.dataclass(frozen=True)
class OrtHeader:
    format_version: int  # the ORT format version the file says it was written in (kOrtModelVersion)
    ir_version: int
    opsets: dict[str, int]  # domain ("ai.onnx" for the default "") -> version


def is_ort_file(path: str | Path) -> bool:
    """Whether ONNX Runtime reads `path` as an ORT-format model: by its name, as ONNX Runtime does."""
    return Path(path).suffix.lower() == SUFFIX


class _Table:
    """One FlatBuffers table in `buf` at `pos`: fields by slot, every read bounded by the buffer."""

    def __init__(self, buf: mmap.mmap | bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos

    def _u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.buf, off)[0]

    def _field(self, slot: int) -> int:
        """The absolute position of a field, 0 when the table does not have it."""
        vtable = self.pos - struct.unpack_from("<i", self.buf, self.pos)[0]
        vtable_size = struct.unpack_from("<H", self.buf, vtable)[0]
        entry = 4 + 2 * slot
        if entry + 2 > vtable_size:
            return 0
        offset = struct.unpack_from("<H", self.buf, vtable + entry)[0]
        return self.pos + offset if offset else 0

    def scalar(self, slot: int, fmt: str, default: int = 0) -> int:
        at = self._field(slot)
        return struct.unpack_from(fmt, self.buf, at)[0] if at else default

    def table(self, slot: int) -> _Table | None:
        at = self._field(slot)
        return _Table(self.buf, at + self._u32(at)) if at else None

    def string(self, slot: int) -> str | None:
        at = self._field(slot)
        if not at:
            return None
        start = at + self._u32(at)
        length = self._u32(start)
        if start + 4 + length > len(self.buf):
            raise struct.error("string past the end of the file")
        return bytes(self.buf[start + 4:start + 4 + length]).decode("utf-8")

    def _vector(self, slot: int) -> tuple[int, int]:
        at = self._field(slot)
        if not at:
            return 0, 0
        start = at + self._u32(at)
        count = self._u32(start)
        if start + 4 + 4 * count > len(self.buf):
            raise struct.error("vector past the end of the file")
        return start + 4, count

    def tables(self, slot: int) -> list[_Table]:
        start, count = self._vector(slot)
        return [_Table(self.buf, start + 4 * i + self._u32(start + 4 * i)) for i in range(count)]

    def strings(self, slot: int) -> list[str]:
        start, count = self._vector(slot)
        names = []
        for i in range(count):
            at = start + 4 * i + self._u32(start + 4 * i)
            length = self._u32(at)
            if at + 4 + length > len(self.buf):
                raise struct.error("string past the end of the file")
            names.append(bytes(self.buf[at + 4:at + 4 + length]).decode("utf-8"))
        return names


def _session(buf: mmap.mmap | bytes, path: Path) -> _Table:
    if len(buf) < 8 or bytes(buf[4:8]) != IDENTIFIER:
        raise OnnxpackError(f"{path} is not an ORT-format model (no {IDENTIFIER.decode()} identifier at its start)",
                            hint="convert the package again with `onnxpack export-mobile`")
    return _Table(buf, struct.unpack_from("<I", buf, 0)[0])


def _read(path: Path, what):  # noqa: ANN001,ANN202 -- a reader over the file's bytes, mapped read-only
    path = Path(path)
    if path.stat().st_size == 0:
        raise OnnxpackError(f"{path} is empty (0 bytes), not an ORT-format model",
                            hint="convert the package again with `onnxpack export-mobile`")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return what(_session(buf, path))
        except struct.error:
            raise OnnxpackError(f"{path} is not a readable ORT-format model (an offset in it points past its end)",
                                hint="a truncated copy fails this way too; copy or convert it again") from None
        except (UnicodeDecodeError, ValueError, TypeError) as e:
            raise OnnxpackError(f"{path} is not a readable ORT-format model ({e})",
                                hint="a truncated copy fails this way too; copy or convert it again") from None


def read_header(path: str | Path) -> OrtHeader:
    """The ORT format version, IR version and opsets an .ort file records (its header only)."""
    def header(session: _Table) -> OrtHeader:
        version = session.string(SESSION_ORT_VERSION)
        if version is None or not version.strip().isdigit():
            raise ValueError(f"ORT format version {version!r} is not a number")
        model = session.table(SESSION_MODEL)
        if model is None:
            raise ValueError("it holds no model")
        opsets = {(o.string(OPSET_DOMAIN) or ONNX_DOMAIN): o.scalar(OPSET_VERSION, "<q")
                  for o in model.tables(MODEL_OPSET_IMPORT)}
        return OrtHeader(int(version), model.scalar(MODEL_IR_VERSION, "<q"), opsets)

    return _read(Path(path), header)


def format_version(path: str | Path) -> int:
    """The ORT format version the file was written in, as the file says."""
    return read_header(path).format_version


def graph_inputs(path: str | Path) -> list[tuple[str, str]]:
    """(name, numpy dtype name) of the main graph's inputs. Call it on a file ONNX Runtime has already
    loaded (untrusted.probe): its loader verifies the FlatBuffer first."""
    def inputs(session: _Table) -> list[tuple[str, str]]:
        model = session.table(SESSION_MODEL)
        graph = model.table(MODEL_GRAPH) if model else None
        if graph is None:
            raise ValueError("it holds no graph")
        names = graph.strings(GRAPH_INPUTS)
        wanted, types = set(names), {}
        for value in graph.tables(GRAPH_NODE_ARGS):
            name = value.string(VALUE_NAME)
            if name in wanted and name not in types:
                kind = value.table(VALUE_TYPE)
                tensor = None
                if kind is not None and kind.scalar(TYPE_VALUE_TYPE, "<B") == TENSOR_TYPE:
                    tensor = kind.table(TYPE_VALUE)
                types[name] = dtype_name(tensor.scalar(TENSOR_ELEM_TYPE, "<i")) if tensor else "?"
        return [(name, types.get(name, "?")) for name in names]

    return _read(Path(path), inputs)
