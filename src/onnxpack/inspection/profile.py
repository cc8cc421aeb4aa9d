"""Where the time goes: ONNX Runtime's profiler, mapped onto the graph it actually ran.

ONNX Runtime rewrites a graph before running it (constant folding, fusions such as
MatMul+Add -> Gemm or the GELU pattern -> BiasGelu), so its kernel events name nodes of that
rewritten graph, not of the .onnx file. The session that is profiled therefore also saves the
graph it built (`optimized_model_filepath`); times are mapped onto that graph by node name, and
each of its nodes is traced back to the file node it came from where it can be.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from onnxpack.core import untrusted
from onnxpack.core.config import GraphConfig, ProfileConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.onnxfile import load_model, node_key
from onnxpack.core.package import FP32, Package, data_file, graph_files
from onnxpack.runtime.feed import synthetic_feed, vocab_size
from onnxpack.runtime.predictor import resolve_providers

from .graph import Drawing, render
from .inspect import Source

log = logging.getLogger(__name__)

KERNEL_SUFFIX = "_kernel_time"  # ONNX Runtime names a node's kernel event "<node name>_kernel_time"
MIN_MAPPED = 0.95  # below this share of kernel time mapped to nodes, the picture would mislead: say so
SLOWEST = 25  # rows in the page's table of slowest nodes


@dataclasses.dataclass
class NodeTime:
    name: str  # node of the graph that ran
    op: str
    ms: float  # mean kernel time per run
    share: float  # of all kernel time
    origin: str | None  # the .onnx file's node it came from (same name, or the one writing the same output)


@dataclasses.dataclass
class Profile:
    graph: str  # which graph ran, in words
    source: dict[str, Any]
    provider: str
    batch: int
    seq: int
    runs: int
    run_ms: float  # wall time of one run, as the profiler measured it
    kernel_ms: float  # sum of all kernel times in one run
    mapped_fraction: float  # share of kernel time that landed on a node of the graph
    unmapped: list[str]  # kernel events that named no node of it
    file_nodes: int
    run_nodes: int
    renamed: int  # nodes that ran under a name the file does not have (fused or inserted)
    nodes: list[NodeTime]  # slowest first
    by_op: list[dict[str, Any]]
    model: onnx.ModelProto = dataclasses.field(repr=False)  # the graph that ran
    title: str = ""  # what ran, as `graph` titles it: "<package name> · <variant> (<file>)"

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("model", "nodes")}
        return d | {"nodes": [dataclasses.asdict(n) for n in self.nodes]}

    def latency_ms(self) -> dict[str, float]:
        return {n.name: n.ms for n in self.nodes}


def profile(package_dir: str | Path, config: ProfileConfig | None = None) -> Profile:
    """Run a package variant under ONNX Runtime's profiler on a synthetic full batch."""
    config = config or ProfileConfig()
    config.validate()
    package = Package.open(package_dir)
    package.require_onnx("profile")
    variant = config.variant or FP32
    path = package.variant_path(variant)
    max_length = package.manifest.max_length
    seq = config.seq or max_length
    if seq > max_length:
        raise OnnxpackError(f"--seq {seq} is longer than the package's max_length {max_length}")
    providers = resolve_providers(config.provider)
    untrusted.trust(path, package)
    file_model = load_model(path, load_weights=False)
    with tempfile.TemporaryDirectory(prefix="onnxpack-profile-") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        options.optimized_model_filepath = str(Path(tmp) / "ran.onnx")
        if len(graph_files(path)) > 1:  # weights kept beside the graph: ORT must save them beside its graph too
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             data_file("ran.onnx"))
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                             "1024")
        options.log_severity_level = 3  # ORT warns that the saved graph is machine-specific; that is the point
        if config.threads:
            options.intra_op_num_threads = config.threads
        session = ort.InferenceSession(str(path), options, providers=providers)
        names = {i.name for i in session.get_inputs()}
        feed = {k: v for k, v in synthetic_feed(config.batch, seq, vocab_size(package)).items() if k in names}
        for _ in range(config.warmup + config.runs):
            session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
        ran = onnx.load(str(Path(tmp) / "ran.onnx"))
    result = _map(trace, ran, file_model, config.runs)
    level = options.graph_optimization_level.name
    description = (f"ONNX Runtime's optimized graph of {path.name} ({level}, {session.get_providers()[0]}): "
                   f"{len(ran.graph.node)} nodes ran, from {len(file_model.graph.node)} in the file")
    source = Source(path, package, variant)
    return Profile(graph=description, source=source.to_dict(), title=source.title,
                   provider=session.get_providers()[0], batch=config.batch, seq=seq, runs=config.runs, model=ran,
                   file_nodes=len(file_model.graph.node), run_nodes=len(ran.graph.node), **result)


def _map(trace: list[dict[str, Any]], ran: onnx.ModelProto, file_model: onnx.ModelProto, runs: int) -> dict[str, Any]:
    """Kernel times of the timed runs (the last `runs` model_run spans), per node of the graph that ran."""
    model_runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"][-runs:]
    start = model_runs[0]["ts"]
    kernel_us: collections.Counter[str] = collections.Counter()
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith(KERNEL_SUFFIX) and e["ts"] >= start:
            kernel_us[e["name"][:-len(KERNEL_SUFFIX)]] += e["dur"]
    ops = {node_key(i, n): n.op_type for i, n in enumerate(ran.graph.node)}
    total = sum(kernel_us.values())
    mapped = sum(us for name, us in kernel_us.items() if name in ops)
    fraction = mapped / total if total else 1.0
    if fraction < MIN_MAPPED:
        log.warning("only %.1f%% of kernel time maps to graph nodes", 100 * fraction)
    origins = _origins(ran, file_model)
    file_names = {n.name for n in file_model.graph.node}
    nodes = [NodeTime(name, op, kernel_us[name] / runs / 1000, kernel_us[name] / total if total else 0.0,
                      origins.get(name)) for name, op in ops.items()]
    nodes.sort(key=lambda n: -n.ms)
    by_op: dict[str, dict[str, Any]] = {}
    for n in nodes:
        row = by_op.setdefault(n.op, {"op": n.op, "nodes": 0, "ms": 0.0, "share": 0.0})
        row["nodes"] += 1
        row["ms"] += n.ms
        row["share"] += n.share
    return {"run_ms": sum(e["dur"] for e in model_runs) / len(model_runs) / 1000, "kernel_ms": total / runs / 1000,
            "mapped_fraction": fraction, "unmapped": sorted(set(kernel_us) - set(ops)),
            "renamed": sum(1 for name in ops if name not in file_names),
            "nodes": nodes, "by_op": sorted(by_op.values(), key=lambda r: -r["ms"])}


def _origins(ran: onnx.ModelProto, file_model: onnx.ModelProto) -> dict[str, str]:
    """Node of the graph that ran -> node of the file: the same name, else the file node that wrote
    the same output tensor (a fusion keeps the output name of the pattern's last node)."""
    names = {n.name for n in file_model.graph.node}
    writer = {out: n.name for n in file_model.graph.node for out in n.output}
    origins = {}
    for i, node in enumerate(ran.graph.node):
        key = node_key(i, node)
        if node.name in names:
            origins[key] = node.name
        elif any(out in writer for out in node.output):
            origins[key] = next(writer[out] for out in node.output if out in writer)
    return origins


def draw(result: Profile, config: GraphConfig | None = None) -> Drawing:
    """The graph that ran, coloured by time, with the tables of slowest nodes and op types beside it."""
    page = {k: v for k, v in result.to_dict().items() if k not in ("nodes", "unmapped")}
    page["slowest"] = [dataclasses.asdict(n) for n in result.nodes[:SLOWEST]]
    title = f"profile of {result.title or Path(result.source['file']).name} · batch {result.batch} × {result.seq} tokens"
    origins = {n.name: n.origin for n in result.nodes if n.origin}
    return render(result.model, title, config, latency_ms=result.latency_ms(), report=page, origins=origins)
