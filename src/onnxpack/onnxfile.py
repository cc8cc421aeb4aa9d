"""Saving and checking ONNX graphs of any size: over ONNX's 2 GiB protobuf limit, the weights go to
`<file>.data` beside the graph (package.EXTERNAL_DATA_BYTES says when). Every stage that writes a
graph (export, optimize, localize) saves through here."""

from __future__ import annotations

from pathlib import Path

import onnx

from . import package


def weights_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers (and Constant nodes' tensors), wherever they are stored."""
    def size(t: onnx.TensorProto) -> int:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            return int(next((e.value for e in t.external_data if e.key == "length"), 0))
        return t.ByteSize()

    constants = [a.t for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute if a.HasField("t")]
    return sum(size(t) for t in list(proto.graph.initializer) + constants)


def save(proto: onnx.ModelProto, path: Path) -> None:
    """Write `proto` to `path`, its weights to `<path>.data` when they are too big to stay inside."""
    path = Path(path)
    data = path.with_name(package.data_file(path))
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if package.needs_external_data(weights_bytes(proto)):
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024, convert_attribute=False)
    else:
        onnx.save_model(proto, str(path))


def check(path: Path) -> None:
    """onnx.checker's full check, by path (the only way it takes a graph over 2 GiB)."""
    onnx.checker.check_model(str(path), full_check=True)
