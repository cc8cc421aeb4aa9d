"""The package's model card, `report.html`: parity, variants and their accuracy, benchmark, environment.

One self-contained file (plots inlined as data: URIs), no scripts, no network requests. Every value
read from the manifest or the benchmark is escaped where it is written, and the page's
Content-Security-Policy allows its own style and data: images only, so nothing in it can run.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from onnxpack.core import cpu
from onnxpack.core.atomic import atomic_write_text
from onnxpack.core.htmlsafe import content_security_policy
from onnxpack.core.package import REPORT, Package, sha256_file

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0 } .sub { color: #666; margin-top: .2rem }
table { border-collapse: collapse; margin: .6rem 0 1.4rem; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .7rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } .ok { color: #17803d } .bad { color: #b42318 } img { max-width: 100% }
code { background: #f3f3f3; padding: 0 .25rem; border-radius: 3px }
"""


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return f"<code>{html.escape(json.dumps(value))}</code>"
    return html.escape(str(value))


def render(package: Package, bench: dict[str, Any] | None = None, plot_png: Path | None = None) -> str:
    m = package.manifest
    parts = [f"<h1>{html.escape(m.name)}</h1>",
             f"<p class=sub>{html.escape(m.task)} · labels {html.escape(', '.join(m.labels))} · "
             f"max {_cell(m.max_length)} tokens · {html.escape(m.model_type)} · opset {_cell(m.opset)} · "
             f"exported with {html.escape(m.exporter)}</p>"]
    parts.append("<h2>Contract</h2>" + _table(
        ["tensor", "direction", "dtype", "dims"],
        [[t.name, "input", t.dtype, t.dims] for t in m.inputs] + [[t.name, "output", t.dtype, t.dims] for t in m.outputs]))
    if m.parity:
        parity = m.parity
        status = parity.get("passed")
        verdict = "" if status is None else (" <span class=ok>passed</span>" if status else " <span class=bad>failed</span>")
        parts.append(f"<h2>Parity with PyTorch{verdict}</h2>" + _table(
            ["check", "value"], [[k, v] for k, v in parity.items() if k not in ("failures",)]))
    if m.variants:
        parts.append("<h2>Variants (validation set)</h2>" + _table(
            ["variant", "file", "MCC", "MCC drop", "agreement with fp32", "max |Δ logit|", "batch drift", "rows/s", "MB",
             "built"],
            [[name, v.get("file"), v.get("mcc"), v.get("mcc_drop", ""), v.get("agreement", ""),
              v.get("max_abs_diff", ""), v.get("batch_drift", ""), v.get("items_per_s"), round(v.get("bytes", 0) / 1e6, 1),
              {k: v[k] for k in ("built_from", "fusions", "per_channel") if k in v}]
             for name, v in m.variants.items()]) + f"<p>Default variant: <b>{html.escape(package.default_variant())}</b></p>")
    if bench:
        machine = bench["machine"]
        parts.append("<h2>Benchmark</h2>")
        if plot_png and plot_png.is_file():
            data = base64.b64encode(plot_png.read_bytes()).decode()
            parts.append(f'<img alt="benchmark plot" src="data:image/png;base64,{data}">')
        parts.append(_table(["engine", "variant", "batch", "tokens", "p50 ms", "p90 ms", "p99 ms", "items/s",
                             "model GFLOP/s", "graph GFLOP/s", "graph work of ceiling"],
                            [[r["engine"], r["variant"], r["batch_size"], r["seq_len"], r["p50_ms"], r["p90_ms"],
                              r["p99_ms"], r["items_per_s"], r.get("gflops", ""), r.get("graph_gflops", ""),
                              r.get("ceiling_fraction", "")]
                             for r in bench["results"]]))
        parts.append("<h3>Speed-ups over PyTorch eager (p50)</h3>" + _table(
            ["measure", "×"], [[k, v] for k, v in bench["speedups"].items()]))
        if bench.get("dataset"):
            parts.append("<h3>Whole validation set, text in → label out</h3>" + _table(
                ["measure", "value"], [[k, v] for k, v in bench["dataset"].items()]))
        parts.append("<h2>Environment</h2>" + _table(
            ["", ""], [[k, cpu.summary(v) if k == "cpu" else v] for k, v in machine.items()]))
        for note in bench.get("notes", []):
            parts.append(f"<p>{html.escape(note)}</p>")
    parts.append("<h2>Libraries at export</h2>" + _table(["library", "version"], list(map(list, m.libraries.items()))))
    parts.append("<h2>History</h2>" + _table(["step", "details"], [[h.get("step"), {k: v for k, v in h.items()
                                                                                  if k != "step"}] for h in m.history]))
    style = f"<style>{STYLE}</style>"
    csp = html.escape(content_security_policy(style))
    return (f'<!doctype html><html lang=en><head><meta charset=utf-8><meta http-equiv="Content-Security-Policy" '
            f'content="{csp}"><title>{html.escape(m.name)} · onnxpack</title>{style}</head>'
            f"<body>{''.join(parts)}</body></html>\n")


def write_report(package: Package, bench: dict[str, Any] | None = None, plot_png: Path | None = None) -> Path:
    """Write report.html into the package and record its hash in the manifest."""
    path = package.root / REPORT
    atomic_write_text(path, render(package, bench, plot_png))
    package.update_manifest(files=package.manifest.files | {REPORT: sha256_file(path)})
    return path
