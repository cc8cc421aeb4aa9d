"""Draw an ONNX graph as one self-contained HTML page (or SVG/PNG) with Graphviz's `dot` doing the layout.

The page makes no network requests and has nothing that expires: the SVG of each view, the node
details and a little JavaScript (pan, zoom, click, search) are all inline. Repeated blocks (the
layers of an encoder, named like `/model/bert/encoder/layer.3/...`) are collapsed into one node
each in the overview, and so are other modules with many nodes of their own; each block's own
view draws its nodes. Constant nodes are folded into the nodes that read them, as weights are,
so the picture shows the computation.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import html
import math
import re
import shutil
import subprocess
from importlib import resources
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxpack.core.config import GraphConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.htmlsafe import content_security_policy, script_json
from onnxpack.core.onnxfile import dtype_name, is_constant, tensor_types

MAIN = "main"  # id of the overview
ATTR_CHARS = 200  # attribute values are cut to this length on the page
SMALL_CONSTANT = 16  # Constant tensors up to this many elements show their values
LARGE_VIEW = 300  # views with more nodes get a quicker, rougher layout
MODULE_NODES = 8  # a module outside the repeated blocks with this many nodes of its own is collapsed as well

# Fill colours by kind of op, so the matrix products stand out from the shape bookkeeping.
CATEGORIES = {
    "#c7dcf5": {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "DynamicQuantizeMatMul",
                "MatMulIntegerToFloat", "QLinearMatMul", "Conv", "ConvInteger", "QLinearConv", "FusedConv",
                "Attention", "QAttention", "MultiHeadAttention", "EmbedLayerNormalization"},
    "#cdebc5": {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                "SkipSimplifiedLayerNormalization", "BatchNormalization", "InstanceNormalization"},
    "#f6d3cc": {"Relu", "Gelu", "BiasGelu", "FastGelu", "QuickGelu", "Tanh", "Sigmoid", "Erf", "Softmax",
                "LogSoftmax", "LeakyRelu", "Elu", "Softplus", "HardSigmoid"},
    "#f3e1b8": {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"},
    "#ececec": {"Shape", "Reshape", "Unsqueeze", "Squeeze", "Concat", "Transpose", "Gather", "GatherElements",
                "Slice", "Expand", "Flatten", "Cast", "Range", "ConstantOfShape", "Split", "Identity", "Tile"},
}
OP_COLOUR = {op: colour for colour, ops in CATEGORIES.items() for op in ops}
BLOCK_COLOUR, IO_COLOUR, OTHER_COLOUR = "#ddd3f2", "#fff1b8", "#ffffff"
INDEXED = re.compile(r"^(.+)\.(\d+)$")  # a ModuleList entry in a torch scope: "layer.3", "h.11"


@dataclasses.dataclass
class Drawing:
    html: str  # the whole page
    dot: str  # the overview in DOT, for PNG export
    svg: str  # the overview as a standalone SVG file
    views: int
    nodes: int  # graph nodes drawn (Constant nodes are folded into their readers)
    blocks: int


@dataclasses.dataclass
class _Item:
    """Something drawn in one view: an op node, a collapsed block, or a graph input/output."""

    id: str
    label: str  # Graphviz HTML-like label
    colour: str
    kind: str  # "op", "block", "io"
    font: str = "#111827"


def render(model: onnx.ModelProto, title: str, config: GraphConfig | None = None,
           latency_ms: dict[str, float] | None = None, report: dict[str, Any] | None = None,
           origins: dict[str, str] | None = None) -> Drawing:
    """The page for `model`. `latency_ms` (node name -> time) colours nodes by time instead of by
    kind; `report` is shown beside the picture (the profile's tables); `origins` (node name ->
    name of the node it was made from) places renamed nodes of an optimized graph in their block."""
    config = config or GraphConfig()
    g = _Graph(model, config.collapse, latency_ms, origins or {})
    views = g.views()
    for vid, (items, _) in views.items():
        if len(items) > config.max_nodes:
            where = ("the graph" if not config.collapse else "the overview" if vid == MAIN
                     else f"block {g.view_titles[vid]}")
            hint = ("collapse repeated blocks (leave out --expand)" if not config.collapse
                    else "raise --max-nodes to try anyway (layout may take minutes)")
            raise OnnxpackError(f"graph too large to draw in reasonable time: {where} has {len(items)} nodes, "
                                f"more than --max-nodes {config.max_nodes}", hint=hint)
    dots = {vid: _dot(vid, items, edges) for vid, (items, edges) in views.items()}
    svgs = {vid: _clean_svg(_run_dot(src, "svg", config.timeout_s).decode("utf-8"))
            for vid, src in dots.items()}
    data = {"title": title, "views": {vid: {"title": g.view_titles[vid], "nodes": len(views[vid][0])}
                                      for vid in views},
            "nodes": g.details(), "weights": g.weight_stats(), "profile": report}
    template = resources.files(__package__).joinpath("graph_page.html").read_text(encoding="utf-8")
    fill = {
        # Only the template's own script and style may run: their hashes, taken before anything is put in.
        "CSP": html.escape(content_security_policy(template)),
        "TITLE": html.escape(title),
        "VIEWS": "\n".join(f'<div class="view" data-view="{vid}" hidden>{_inline(svg)}</div>' for vid, svg in svgs.items()),
        # "<", ">" and "&" escaped so no name in the data can close the <script> element early.
        "DATA": script_json(data),
    }
    page = re.sub(r"__(CSP|TITLE|VIEWS|DATA)__", lambda m: fill[m[1]], template)  # one pass: inserted text stays as is
    return Drawing(html=page, dot=dots[MAIN], svg=svgs[MAIN], views=len(views), nodes=len(g.ops), blocks=len(g.blocks))


def to_png(drawing: Drawing, timeout_s: float = GraphConfig.timeout_s) -> bytes:
    """The overview as a PNG image."""
    return _run_dot(drawing.dot, "png", timeout_s)


class _Graph:
    """The model's nodes grouped into views, with everything the page shows about each."""

    def __init__(self, model: onnx.ModelProto, collapse: bool, latency_ms: dict[str, float] | None,
                 origins: dict[str, str]) -> None:
        graph = model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.constants = {n.output[0]: n for n in graph.node if is_constant(n)}
        self.ops = {f"n{i}": n for i, n in enumerate(graph.node) if not is_constant(n)}
        self.producer = {out: nid for nid, n in self.ops.items() for out in n.output if out}
        self.consumers: dict[str, list[str]] = collections.defaultdict(list)
        for nid, n in self.ops.items():
            for name in n.input:
                self.consumers[name].append(nid)
        self.inputs = {v.name for v in graph.input if v.name not in self.initializers}
        self.outputs = {v.name for v in graph.output}
        self.types = tensor_types(model)
        scopes = {nid: _scope(n, origins.get(n.name, "")) for nid, n in self.ops.items()}
        self.block_of: dict[str, str] = {}
        if collapse:
            self.block_of = _blocks(scopes)
            self._adopt([nid for nid, scope in scopes.items() if not scope])
            self._group(scopes)
        self.members: dict[str, list[str]] = collections.defaultdict(list)  # block -> its node ids, in graph order
        for nid in self.ops:
            if nid in self.block_of:
                self.members[self.block_of[nid]].append(nid)
        self.blocks = list(self.members)
        self.block_id = {b: f"b{k}" for k, b in enumerate(self.blocks)}
        self.view_titles = {MAIN: "overview"} | {self.block_id[b]: b.rsplit("/", 1)[-1] for b in self.blocks}
        self.ports: dict[str, str] = {}  # id of a drawn tensor -> its name
        self.latency = None
        if latency_ms is not None:
            self.latency = {nid: latency_ms.get(n.name, 0.0) for nid, n in self.ops.items()}
            self.block_ms = {b: sum(self.latency[nid] for nid in nids) for b, nids in self.members.items()}
            # Nodes are coloured against the slowest node, blocks against the slowest block.
            self.top_ms = {"op": max(self.latency.values(), default=0.0), "block": max(self.block_ms.values(), default=0.0)}

    def _adopt(self, loose: list[str]) -> None:
        """Nodes with no scope at all (fused by an optimizer, named like "Attention_3") join the block
        of the nodes they read from, or else of the nodes that read them, where that is one block."""
        for _ in loose:  # each pass settles nodes next to those settled before; evidence from earlier passes only
            settled = {}
            for nid in loose:
                if nid in self.block_of:
                    continue
                writers = {self.block_of.get(self.producer.get(x, "")) for x in self._reads(nid)} - {None}
                readers = {self.block_of.get(c) for out in self.ops[nid].output for c in self.consumers[out]} - {None}
                if len(writers) == 1:
                    settled[nid] = writers.pop()
                elif not writers and len(readers) == 1:
                    settled[nid] = readers.pop()
            if not settled:
                return
            self.block_of.update(settled)

    def _group(self, scopes: dict[str, list[str]]) -> None:
        """Outside the repeated blocks, a module with many nodes of its own (the shape arithmetic of the
        embeddings, the attention-mask preparation) is collapsed too, so the overview is the model's outline."""
        modules: dict[str, list[str]] = collections.defaultdict(list)
        for nid, scope in scopes.items():
            if nid not in self.block_of and scope:
                modules["/".join(scope)].append(nid)
        for module, nids in modules.items():
            if len(nids) >= MODULE_NODES:
                self.block_of.update(dict.fromkeys(nids, module))

    # --- what is drawn ---

    def views(self) -> dict[str, tuple[list[_Item], list[tuple[str, str]]]]:
        """view id -> (items, edges between item ids)."""
        return {MAIN: self._view(None)} | {self.block_id[b]: self._view(b) for b in self.blocks}

    def _view(self, block: str | None) -> tuple[list[_Item], list[tuple[str, str]]]:
        vid = self.block_id.get(block, MAIN)
        members = [nid for nid in self.ops if self.block_of.get(nid) == block]
        ports: dict[str, _Item] = {}  # tensors drawn as ellipses: graph inputs/outputs, a block's boundary

        def port(name: str, side: str) -> str:
            if name not in ports:
                pid = f"{side}{len(ports)}_{vid}"
                ports[name] = _Item(pid, _label(_short(name), _dims_text(self.types.get(name, ("", None))[1])),
                                    IO_COLOUR, "io")
                self.ports[pid] = name
            return ports[name].id

        def item_of(nid: str) -> str:
            """What stands for a node in this view: itself, or (in the overview) its block."""
            inner = self.block_of.get(nid)
            return self.block_id[inner] if inner and block is None else nid

        # Overview: blocks take the place of their first node, so dot sees them in graph order.
        items: dict[str, _Item] = {}
        for nid in self.ops:
            owner = item_of(nid)
            if (block is not None and self.block_of.get(nid) != block) or owner in items:
                continue
            items[owner] = self._block_item(self.block_of[nid]) if owner != nid else self._op_item(nid)
        edges: set[tuple[str, str]] = set()
        for nid in (members if block is not None else self.ops):
            for name in self._reads(nid):
                src = self.producer.get(name)
                if src is not None and (block is None or self.block_of.get(src) == block):
                    if item_of(src) != item_of(nid):
                        edges.add((item_of(src), item_of(nid)))
                elif src is not None or name in self.inputs:
                    edges.add((port(name, "i"), item_of(nid)))
            for name in self.ops[nid].output:
                leaves = block is not None and any(self.block_of.get(c) != block for c in self.consumers[name])
                if name in self.outputs or leaves:
                    edges.add((item_of(nid), port(name, "o")))
        return list(items.values()) + list(ports.values()), sorted(edges)

    def _reads(self, nid: str) -> list[str]:
        """Activation tensors a node reads (weights and constants are details, not edges)."""
        return [x for x in dict.fromkeys(self.ops[nid].input)
                if x and x not in self.initializers and x not in self.constants]

    def _op_item(self, nid: str) -> _Item:
        node = self.ops[nid]
        scope = _scope(node)
        weight = next((self.initializers[x] for x in node.input if x in self.initializers
                       and len(self.initializers[x].dims) >= 2), None)
        detail = " · ".join(p for p in (scope[-1] if scope else "", _dims_text(list(weight.dims)) if weight else "") if p)
        if self.latency is None:
            return _Item(nid, _label(node.op_type, detail), OP_COLOUR.get(node.op_type, OTHER_COLOUR), "op")
        ms = self.latency[nid]
        return _Item(nid, _label(node.op_type, detail, f"{ms:.3f} ms" if ms else ""), *_heat(ms, self.top_ms, "op"))

    def _block_item(self, block: str) -> _Item:
        nids = self.members[block]
        parameters = self._block_parameters(nids)
        line = f"{len(nids)} nodes" + (f" · {_count(parameters)} params" if parameters else "")
        name = block.rsplit("/", 1)[-1]
        if self.latency is None:
            return _Item(self.block_id[block], _label(name, line), BLOCK_COLOUR, "block")
        ms = self.block_ms[block]
        return _Item(self.block_id[block], _label(name, line, f"{ms:.3f} ms"), *_heat(ms, self.top_ms, "block"))

    def _block_parameters(self, nids: list[str]) -> int:
        weights = {x for nid in nids for x in self.ops[nid].input if x in self.initializers}
        return sum(math.prod(self.initializers[x].dims) for x in weights)

    # --- what the page shows on a click ---

    def details(self) -> dict[str, dict[str, Any]]:
        """Per drawn id: op, attributes, input/output tensors, and time when profiled. Call after views()."""
        out: dict[str, dict[str, Any]] = {}
        total_ms = sum(self.latency.values()) if self.latency else 0.0
        for nid, node in self.ops.items():
            block = self.block_of.get(nid)
            d = {"name": node.name, "op": node.op_type, "domain": node.domain or "ai.onnx",
                 "view": self.block_id[block] if block else MAIN, "block": block,
                 "attrs": {a.name: _attr_text(a) for a in node.attribute},
                 "inputs": [self._tensor(x) for x in node.input], "outputs": [self._tensor(x) for x in node.output]}
            if self.latency is not None:
                d |= {"ms": self.latency[nid], "share": self.latency[nid] / total_ms if total_ms else 0.0}
            out[nid] = d
        for block, nids in self.members.items():
            ops = collections.Counter(self.ops[nid].op_type for nid in nids)
            d = {"name": block, "op": "block", "view": MAIN, "opens": self.block_id[block], "nodes": len(nids),
                 "ops": dict(ops.most_common()), "parameters": self._block_parameters(nids)}
            if self.latency is not None:
                ms = self.block_ms[block]
                d |= {"ms": ms, "share": ms / total_ms if total_ms else 0.0}
            out[self.block_id[block]] = d
        for pid, name in self.ports.items():
            out[pid] = {"op": "tensor", "view": pid.rsplit("_", 1)[-1], **self._tensor(name),
                        "producer": self.ops[self.producer[name]].name if name in self.producer else None,
                        "readers": [self.ops[c].name for c in self.consumers[name]]}
        return out

    def _tensor(self, name: str) -> dict[str, Any]:
        if not name:
            return {"name": "", "kind": "absent"}
        dtype, dims = self.types.get(name, ("?", None))
        kind = ("weight" if name in self.initializers else "constant" if name in self.constants
                else "input" if name not in self.producer else "activation")
        t = {"name": name, "dtype": dtype, "shape": dims, "kind": kind}
        if kind == "constant":  # value, value_float, value_ints, ...: shown as text, cut short
            value = onnx.helper.get_attribute_value(self.constants[name].attribute[0])
            if isinstance(value, onnx.TensorProto):
                value = numpy_helper.to_array(value).tolist() if math.prod(value.dims) <= SMALL_CONSTANT else None
            if value is not None:
                t["value"] = str(value)[:ATTR_CHARS]
        return t

    def weight_stats(self) -> dict[str, dict[str, Any]]:
        """min/max/mean/std of every weight a drawn node reads (a shared weight is listed once)."""
        used = {x for n in self.ops.values() for x in n.input if x in self.initializers}
        stats = {}
        for name in sorted(used):
            t = self.initializers[name]
            s: dict[str, Any] = {"dtype": dtype_name(t.data_type), "shape": list(t.dims),
                                 "parameters": math.prod(t.dims), "readers": len(self.consumers[name])}
            array = numpy_helper.to_array(t)
            if array.size and np.issubdtype(array.dtype, np.number):
                s |= {"min": float(array.min()), "max": float(array.max()),
                      "mean": float(array.mean(dtype=np.float64)), "std": float(array.std(dtype=np.float64))}
            stats[name] = s
        return stats


def _heat(ms: float, top_ms: dict[str, float], kind: str) -> tuple[str, str, str]:
    """(fill, kind, text colour): white -> yellow -> red by time relative to the slowest of its kind,
    on a square-root scale so mid-sized nodes show too."""
    top = top_ms[kind]
    f = math.sqrt(ms / top) if top > 0 and ms > 0 else 0.0
    stops = [(255, 255, 255), (253, 224, 71), (220, 38, 38)]
    lo, t = (0, f * 2) if f < 0.5 else (1, f * 2 - 1)
    fill = "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(stops[lo], stops[lo + 1]))
    return fill, kind, "#ffffff" if f > 0.8 else "#111827"


def _scope(node: onnx.NodeProto, made_from: str = "") -> list[str]:
    """The module path a node came from, as components: ["model", "bert", "encoder", "layer.3", ...]."""
    for prop in node.metadata_props:  # the dynamo exporter records scopes here
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            return [s for s in scopes if s] if isinstance(scopes, list) else []
    # torch.onnx's TorchScript exporter names nodes by path, and ONNX Runtime's fusions mostly keep
    # those names; a node an optimizer renamed is placed by the name of the node it was made from.
    for name in (node.name, made_from):
        if name.startswith("/"):
            return name.strip("/").split("/")[:-1]
    return []


def _blocks(scopes: dict[str, list[str]]) -> dict[str, str]:
    """node id -> block path for nodes inside a repeated block: the first indexed scope component
    ("layer.3") whose family ("layer") has at least two members."""
    candidate: dict[str, tuple[str, str]] = {}
    for nid, scope in scopes.items():
        for i, part in enumerate(scope):
            m = INDEXED.match(part)
            if m:
                parent = "/".join(scope[:i])
                candidate[nid] = (f"{parent}/{m[1]}", "/".join(scope[:i + 1]))
                break
    members: dict[str, set[str]] = collections.defaultdict(set)
    for family, block in candidate.values():
        members[family].add(block)
    return {nid: block for nid, (family, block) in candidate.items() if len(members[family]) > 1}


def _dot(vid: str, items: list[_Item], edges: list[tuple[str, str]]) -> str:
    # dot's layout time grows steeply with size, most of it in network-simplex placement and crossing
    # minimisation; capping their passes for big views cuts a 1,400-node BERT from minutes to ~10 s.
    limits = ", nslimit=1, nslimit1=1, mclimit=0.5" if len(items) > LARGE_VIEW else ""
    lines = [
        "digraph g {",
        f'  graph [rankdir=TB, nodesep=0.18, ranksep=0.28, bgcolor="transparent", fontname="Helvetica"{limits}];',
        ('  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, color="#666666", '
         'penwidth=0.8, margin="0.08,0.03", height=0.3];'),
        '  edge [color="#8a8a8a", arrowsize=0.55, penwidth=0.8];',
    ]
    for item in items:
        shape = ', shape=ellipse, style="filled"' if item.kind == "io" else ""
        extra = ', penwidth=1.6, color="#5b3fa0"' if item.kind == "block" else ""
        lines.append(f'  "{item.id}" [id="{item.id}", class="{item.kind}", label=<{item.label}>, '
                     f'fillcolor="{item.colour}", fontcolor="{item.font}"{shape}{extra}];')
    for k, (a, b) in enumerate(edges):
        lines.append(f'  "{a}" -> "{b}" [id="e{k}_{vid}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _run_dot(source: str, fmt: str, timeout_s: float) -> bytes:
    dot = shutil.which("dot")
    if dot is None:
        raise OnnxpackError("Graphviz's `dot` is not installed; it lays out the graph",
                            hint="apt-get install graphviz (or brew install graphviz)")
    try:
        result = subprocess.run([dot, f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True,
                                timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise OnnxpackError(f"graph too large to draw in reasonable time: Graphviz took more than {timeout_s:.0f} s",
                            hint="collapse repeated blocks (leave out --expand), or lower --max-nodes") from None
    if result.returncode != 0:
        raise RuntimeError(f"dot failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def _clean_svg(svg: str) -> str:
    """dot's SVG without its comments and the tooltips that would show internal ids."""
    return re.sub(r"<title>[^<]*</title>|<!--.*?-->", "", svg, flags=re.DOTALL)


def _inline(svg: str) -> str:
    """An SVG file made fit for inlining in HTML: no XML prolog or doctype, sized by the page."""
    svg = svg[svg.index("<svg"):]
    return re.sub(r'<svg width="[^"]*" height="[^"]*"', '<svg width="100%" height="100%"', svg, count=1)


def _label(title: str, *lines: str) -> str:
    parts = [f"<B>{html.escape(title)}</B>"] + [f'<FONT POINT-SIZE="8">{html.escape(x)}</FONT>' for x in lines if x]
    return "<BR/>".join(parts)


def _short(name: str, keep: int = 28) -> str:
    return name if len(name) <= keep else "…" + name[-keep + 1:]


def _dims_text(dims: list[int | str | None] | None) -> str:
    return "×".join("?" if d is None else str(d) for d in dims) if dims is not None else ""


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _attr_text(attr: onnx.AttributeProto) -> str:
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        text = f"tensor {dtype_name(value.data_type)} {list(value.dims)}"
        if math.prod(value.dims) <= SMALL_CONSTANT:
            text += f" = {numpy_helper.to_array(value).tolist()}"
    elif isinstance(value, onnx.GraphProto):
        text = f"graph with {len(value.node)} nodes"
    elif isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
    else:
        text = repr(value)
    return text if len(text) <= ATTR_CHARS else text[:ATTR_CHARS - 1] + "…"
