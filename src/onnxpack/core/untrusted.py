"""ONNX files from strangers: checked before any library acts on them, then first run in a subprocess
with a memory and a time limit, so a hostile graph costs a one-line error instead of a crash, a hang,
a 4 TB allocation or a read outside its folder.

`trust(path)` is the gate every stage passes before it loads a graph (the Predictor, inspect,
graph, profile, bench, optimize, export-serving). It does, in order:
1. `check_file`, in this process, on the parsed protobuf only (no weights read): not empty, parses,
   has a graph; an IR version this onnx knows; opsets only of the standard domains and ONNX
   Runtime's own (a custom domain would need a custom-op library, which onnxpack never loads);
   external data only as plain files in the graph's folder (no `..`, no absolute path, no symlink,
   only the keys ONNX defines, within the file's length); every tensor's declared size equal to
   the bytes it stores; no Loop that provably cannot finish, in any subgraph (loops.py: a constant
   trip count over 2^20, or no trip count and a condition its body keeps true), so a Loop bomb costs
   a line, not a time limit; then onnx.checker (cycles, recursive functions, unknown ops).
2. `probe`, in a subprocess under RLIMIT_AS and a wall-clock limit that grows with the graph's size
   (`probe_timeout`): an ONNX Runtime session and one inference on a small feed. A Loop that never
   ends in a way the static checks cannot prove, or a ConstantOfShape of 10^12 elements, fails here,
   and the subprocess is killed, not this one.
A file that passes is remembered by its sha256 (and the ONNX Runtime version) in the user's cache,
so the probe runs once per file; graphs onnxpack writes itself are remembered as they are written.

An ORT-format file (`.ort`, what `export-mobile` writes; ortformat.py) is no protobuf, so step 1's
checks, which all read the ONNX protobuf, do not apply to it and are skipped: the file must carry the
ORT identifier and an ORT format version (read from its header), then it goes through the same `probe`,
where ONNX Runtime runs the FlatBuffers verifier over it before using any of it, so a hostile .ort
costs one line there too. A package's .ort is then held to its manifest's inputs like any graph.
"""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from . import ortformat
from .errors import OnnxpackError, PackageError
from .loops import MAX_TURNS, endless_loop
from .onnxfile import dtype_name
from .package import Package, sha256_file

KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"}
EXTERNAL_KEYS = {"location", "offset", "length", "checksum"}
# The probe's time limit: PROBE_BASE_S plus PROBE_S_PER_GB per GB of graph and external data, unless
# $ONNXPACK_PROBE_TIMEOUT (seconds) sets it for every graph. Measured (2 cores shared with a test run,
# load 4-5, AMD EPYC, ONNX Runtime 1.32, page cache warm): the whole probe, Python start-up included,
# takes 0.4-0.8 s for the 91 MB MiniLM package, 2.7-6.6 s for a 1.34 GB BERT-large and 3.1-7.3 s for a
# 3.5 GB BERT (hidden 2048, 16 layers, external data): under 1 s plus at most 4.5 s per GB. The limit
# allows 15 s plus 10 s per GB (16 s for MiniLM, 28 s and 50 s for the others), over twice the worst
# slope and as much as reading the weights from a cold disk at 100 MB/s.
PROBE_BASE_S = 15.0
PROBE_S_PER_GB = 10.0


PROBE_MEMORY_BYTES = int(os.environ.get("ONNXPACK_PROBE_MEMORY", 8 << 30))
PROBE_SEQ = 8  # tokens per row of the probe's feed
HINT = "only load ONNX files you trust; re-export it with `onnxpack export` if it is yours"

_refused: dict[str, tuple[str, str | None]] = {}  # _key -> why ("{path}" for its name) and hint: probed once


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "onnxpack" / "trusted"


def _key(path: Path) -> str:
    """What a verdict on a file is kept under: its bytes, and how ONNX Runtime will read them (by its
    name: ORT format or ONNX), since the same bytes can pass as one and fail as the other."""
    return sha256_file(path) + ("-ortformat" if ortformat.is_ort_file(path) else "")


def _marker(key: str) -> Path:
    import onnxruntime

    return _cache_dir() / f"{key}-ort{onnxruntime.__version__}"


def remember(path: Path) -> None:
    """Mark a graph onnxpack wrote itself (export, optimize) as checked, so it is not probed again."""
    marker = _marker(_key(path))
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def trust(path: str | Path, package: Package | None = None) -> None:
    """Refuse, with one line, a graph file that is malformed, hostile, or fails its first run; and, for
    a package's graph, one whose inputs are not those its manifest names."""
    path = Path(path)
    if not path.is_file():
        raise OnnxpackError(f"{path} does not exist", hint="pass a package folder or an .onnx file")
    key = _key(path)
    if key in _refused:  # the same bytes, perhaps under another name
        why, hint = _refused[key]
        raise OnnxpackError(why.replace("{path}", str(path)), hint=hint)
    if _marker(key).is_file():
        if package is not None:
            check_inputs(path, [(t.name, t.dtype) for t in package.manifest.inputs])
        return
    try:
        if ortformat.is_ort_file(path):
            ortformat.read_header(path)  # the identifier and a format version, before ONNX Runtime reads it
            probe(path)
            if package is not None:  # after the probe: ONNX Runtime has verified the FlatBuffer
                check_inputs(path, [(t.name, t.dtype) for t in package.manifest.inputs])
        else:
            proto = check_file(path)
            if package is not None:
                check_inputs(path, [(t.name, t.dtype) for t in package.manifest.inputs])
            probe(path, graph_bytes(path, proto))
    except OnnxpackError as e:
        _refused[key] = (e.message.replace(str(path), "{path}"), e.hint)
        raise
    remember(path)


def check_inputs(path: Path, manifest_inputs: list[tuple[str, str]]) -> None:
    """A package's graph takes exactly the inputs its manifest names, of the types it says: a package
    whose manifest was made to match a swapped graph's hashes is still refused."""
    if ortformat.is_ort_file(path):
        found = sorted(ortformat.graph_inputs(path))
    else:
        graph = onnx.load(str(path), load_external_data=False).graph
        found = sorted((i.name, dtype_name(i.type.tensor_type.elem_type)) for i in graph.input)
    if found != sorted(manifest_inputs):
        raise PackageError(f"{path} takes {', '.join(f'{n} ({t})' for n, t in found)} but the manifest says "
                            f"{', '.join(f'{n} ({t})' for n, t in sorted(manifest_inputs))}", hint="re-export the package")


def check_file(path: Path) -> onnx.ModelProto:
    """The static checks: what can be refused without running anything."""
    if path.stat().st_size == 0:
        raise OnnxpackError(f"{path} is empty (0 bytes), not an ONNX model", hint=HINT)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RecursionError, ValueError, UnicodeDecodeError) as e:
        raise OnnxpackError(f"{path} is not a readable ONNX model ({_first_line(e)})",
                            hint="a truncated copy or download fails this way too; copy or export it again") from None
    if not proto.ir_version or not proto.HasField("graph"):
        raise OnnxpackError(f"{path} is not an ONNX model (no IR version or graph in it)", hint=HINT)
    if proto.ir_version > onnx.IR_VERSION:
        raise OnnxpackError(f"{path} has IR version {proto.ir_version}; this onnx knows up to {onnx.IR_VERSION}",
                            hint="export it with an older opset, or upgrade onnx and onnxruntime")
    domains = {o.domain for o in proto.opset_import} | {n.domain for g in _graphs(proto) for n in g.node} | {
        f.domain for f in proto.functions}
    function_domains = {f.domain for f in proto.functions}
    unknown = sorted(d for d in domains - KNOWN_DOMAINS - function_domains)
    if unknown:
        raise OnnxpackError(f"{path} uses operators of the custom domain {unknown[0]!r}; onnxpack never loads "
                            "custom-op libraries a model asks for", hint=HINT)
    for tensor in _tensors(proto):
        _check_tensor(tensor, path)
    # Before onnx.checker, so a Loop bomb is named as one even where the graph has other faults too.
    endless = endless_loop(proto, path.parent)
    if endless:
        raise OnnxpackError(f"{path}: {endless}; onnxpack refuses graphs that cannot finish",
                            hint=f"a Loop must end by a trip count of at most {MAX_TURNS} or by a condition its "
                            "body computes; only load ONNX files you trust")
    try:  # by path where there is external data: its files are found beside the graph, not in the cwd
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(proto))
        onnx.checker.check_model(str(path) if external else proto)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, RecursionError) as e:
        raise OnnxpackError(f"{path} is not a valid ONNX graph: {_first_line(e)}", hint=HINT) from None
    return proto


def graph_bytes(path: Path, proto: onnx.ModelProto) -> int:
    """What ONNX Runtime reads to make a session: the graph file and its external data (checked)."""
    return path.stat().st_size + sum(_external_length(t, path) for t in _tensors(proto)
                                      if t.data_location == onnx.TensorProto.EXTERNAL)


def _graphs(proto: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph, every subgraph (If, Loop, Scan bodies) and every function body, depth first."""
    stack = [proto.graph] + [onnx.helper.make_graph(f.node, f.name, [], []) for f in proto.functions]
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                stack.extend([attribute.g] if attribute.HasField("g") else [])
                stack.extend(attribute.graphs)


def _tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for graph in _graphs(proto):
        yield from graph.initializer
        yield from (s.values for s in graph.sparse_initializer)
        for node in graph.node:
            for attribute in node.attribute:
                yield from ([attribute.t] if attribute.HasField("t") else [])
                yield from attribute.tensors


def _check_tensor(tensor: onnx.TensorProto, path: Path) -> None:
    name = tensor.name or "(unnamed)"
    if any(d < 0 for d in tensor.dims):
        raise OnnxpackError(f"{path}: tensor {name} has a negative dimension {list(tensor.dims)}", hint=HINT)
    count = 1
    for d in tensor.dims:
        count *= d
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        raise OnnxpackError(f"{path}: tensor {name} has an unknown data type {tensor.data_type}", hint=HINT) from None
    packed = tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
    want = (count + 1) // 2 if packed else count * itemsize
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        stored = _external_length(tensor, path)
    elif tensor.HasField("raw_data"):
        stored = len(tensor.raw_data)
    else:
        values = max(len(getattr(tensor, f)) for f in ("float_data", "int32_data", "int64_data", "double_data",
                                                        "uint64_data"))
        if values == 0 and count == 0:
            return
        stored, want = values, count * (2 if tensor.data_type in (onnx.TensorProto.COMPLEX64,
                                                                   onnx.TensorProto.COMPLEX128) else 1)
        if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            want = (count + 1) // 2
    if stored != want:
        raise OnnxpackError(f"{path}: tensor {name} declares {list(tensor.dims)} ({want} bytes or values) but stores "
                            f"{stored}", hint=HINT)


def _external_length(tensor: onnx.TensorProto, path: Path) -> int:
    """A tensor's external data: a plain file beside the graph, read within its length."""
    entries = {e.key: e.value for e in tensor.external_data}
    name = tensor.name or "(unnamed)"
    extra = sorted(set(entries) - EXTERNAL_KEYS)
    if extra or len(entries) != len(tensor.external_data):
        raise OnnxpackError(f"{path}: tensor {name} has unexpected external-data keys {extra or 'repeated'}", hint=HINT)
    location = entries.get("location", "")
    folder = path.parent.resolve()
    target = path.parent / location
    if (not location or os.path.isabs(location) or ".." in Path(location).parts or "\\" in location
            or Path(location).name != location):
        raise OnnxpackError(f"{path}: tensor {name} keeps its data at {location!r}, outside the graph's folder",
                            hint="external data must be a file beside the .onnx")
    if target.is_symlink() or target.resolve().parent != folder or not target.is_file():
        raise OnnxpackError(f"{path}: tensor {name}'s data file {location!r} is missing or a link", hint=HINT)
    try:
        offset, length = int(entries.get("offset", 0)), int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise OnnxpackError(f"{path}: tensor {name} has a non-numeric external-data offset or length", hint=HINT) from None
    size = target.stat().st_size
    length = size - offset if length is None else length
    if offset < 0 or length < 0 or offset + length > size:
        raise OnnxpackError(f"{path}: tensor {name} reads bytes {offset}..{offset + length} of {location!r}, "
                            f"which holds {size}", hint=HINT)
    return length


def probe_timeout(size_bytes: int) -> float:
    """The probe's time limit for a graph of `size_bytes` (file and external data), in seconds:
    $ONNXPACK_PROBE_TIMEOUT when set, else PROBE_BASE_S + PROBE_S_PER_GB per GB (10^9 bytes)."""
    text = os.environ.get("ONNXPACK_PROBE_TIMEOUT", "").strip()
    if not text:
        return PROBE_BASE_S + PROBE_S_PER_GB * max(size_bytes, 0) / 1e9
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise OnnxpackError(f"ONNXPACK_PROBE_TIMEOUT={text!r} is not a number of seconds",
                            hint=f"unset it (the limit is then {PROBE_BASE_S:.0f} s + {PROBE_S_PER_GB:.0f} s per GB "
                            "of graph), or set it to a positive number such as 60")
    return seconds


def probe(path: Path, size_bytes: int | None = None) -> None:
    """An ONNX Runtime session and one small inference, in a subprocess under memory and time limits;
    `size_bytes` (the graph and its external data) sets the time limit, the file's size when None."""
    limit = probe_timeout(path.stat().st_size if size_bytes is None else size_bytes)
    try:
        result = subprocess.run([sys.executable, "-m", "onnxpack.core.untrusted", str(path)], capture_output=True,
                                text=True, timeout=limit, stdin=subprocess.DEVNULL,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        raise OnnxpackError(f"{path} did not load and run one small inference within {limit:.0f} s "
                            "(a Loop that never ends, or a graph far too big for this machine)",
                            hint=f"{HINT}; ONNXPACK_PROBE_TIMEOUT=SECONDS sets the limit") from None
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        if result.returncode < 0 or "bad_alloc" in why or "MemoryError" in why or "allocat" in why.lower():
            why = f"it ran out of its {PROBE_MEMORY_BYTES >> 30} GiB memory limit ({why[:200]})"
        raise OnnxpackError(f"{path} failed its first run in ONNX Runtime: {why[:300]}", hint=HINT)


def _probe_feed(session) -> dict:
    """A small feed for any graph: token-like ids for integer inputs, zeros otherwise; dynamic dims 1,
    or PROBE_SEQ for the second axis of a token input."""
    import numpy as np

    feed = {}
    for value in session.get_inputs():
        dtype = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
                 "tensor(double)": np.float64, "tensor(bool)": np.bool_}.get(value.type, np.float32)
        shape = [d if isinstance(d, int) and d > 0 else (PROBE_SEQ if i == 1 else 1) for i, d in enumerate(value.shape)]
        if value.name == "input_ids":
            feed[value.name] = np.full(shape, 5, dtype=dtype)
        elif value.name == "attention_mask":
            feed[value.name] = np.ones(shape, dtype=dtype)
        else:
            feed[value.name] = np.zeros(shape, dtype=dtype)
    return feed


def _probe_main(path: str) -> int:
    """The subprocess: limit memory, load, run once; any failure is one line on stderr."""
    resource.setrlimit(resource.RLIMIT_AS, (PROBE_MEMORY_BYTES, PROBE_MEMORY_BYTES))
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 4
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        session.run(None, _probe_feed(session))
    except BaseException as e:  # noqa: BLE001 -- reported to the parent as one line
        print(f"{type(e).__name__}: {_first_line(e)}", file=sys.stderr)
        return 1
    return 0


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return " ".join(text.split())[:300] if text else type(e).__name__


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1]))
