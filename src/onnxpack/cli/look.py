"""The look panel: inspect, explain, graph, profile and view: what is inside a package and its answers, read-only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.table import Table

from onnxpack.core.config import ExplainConfig, GraphConfig, InspectConfig, ProfileConfig

from .app import LOOK, app, config_from, console, option, stdout

if TYPE_CHECKING:
    from onnxpack.inspection.profile import Profile


@app.command(rich_help_panel=LOOK)
def inspect(
    path: Path = typer.Argument(..., help="Package folder or .onnx file."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the whole report here as JSON."),
    batch: int = option(InspectConfig, "batch"),
    seq: Optional[int] = option(InspectConfig, "seq"),
    variant: Optional[str] = option(InspectConfig, "variant"),
) -> None:
    """Report what a model is: identity, inputs/outputs, ops, weights, MACs, and whether it checks and loads."""
    from onnxpack.core.atomic import atomic_write_text
    from onnxpack.inspection.inspect import summarize

    report = summarize(path, config_from(InspectConfig, locals()))
    print_inspect(report)
    if json_out:
        atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")


def print_inspect(r: dict[str, Any]) -> None:
    ident, contract, structure, weights, compute, validity = (
        r[k] for k in ("identity", "contract", "structure", "weights", "compute", "validity"))
    source = r["source"]
    table = Table(title=f"{source['file']}" + (f" (variant {source['variant']})" if source["variant"] else ""),
                  show_header=False)
    for key, value in [("sha256", ident["sha256"]), ("size", f"{ident['bytes'] / 1e6:.1f} MB"),
                       ("IR version", ident["ir_version"]),
                       ("opsets", ", ".join(f"{d} {v}" for d, v in ident["opsets"].items())),
                       ("producer", ident["producer"]),
                       *((f"metadata {k}", v) for k, v in ident["metadata_props"].items())]:
        table.add_row(key, str(value))
    stdout.print(table)
    table = Table(title="contract")
    for col in ("", "name", "dtype", "dims"):
        table.add_column(col)
    for side in ("inputs", "outputs"):
        for t in contract[side]:
            dims = "?" if t["dims"] is None else " × ".join("?" if d is None else str(d) for d in t["dims"])
            table.add_row(side[:-1], t["name"], t["dtype"], dims)
    stdout.print(table)
    if contract["labels"] is not None or contract["max_length"] is not None:
        stdout.print(f"labels {contract['labels']}, max length {contract['max_length']} (from {contract['from']})")
    ops = ", ".join(f"{op} {n}" for op, n in structure["op_types"].items())
    stdout.print(f"\n[bold]{structure['nodes']} nodes[/]: {ops}", highlight=False)
    if structure["custom_domains"]:
        stdout.print("custom domains: " + ", ".join(f"{d} ({n} nodes)" for d, n in structure["custom_domains"].items()))
    table = Table(title=f"weights: {weights['parameters']:,} parameters in {weights['initializers']} tensors, "
                        f"{weights['bytes'] / 1e6:.1f} MB" + (f"; {len(weights['shared'])} shared" if weights["shared"] else ""))
    for col in ("largest tensors", "dtype", "shape", "parameters", "MB"):
        table.add_column(col)
    for t in weights["largest"]:
        table.add_row(t["name"], t["dtype"], " × ".join(map(str, t["shape"])), f"{t['parameters']:,}", f"{t['bytes'] / 1e6:.2f}")
    stdout.print(table)
    stdout.print("by dtype: " + ", ".join(f"{d} {v['parameters']:,} ({v['bytes'] / 1e6:.1f} MB)"
                                         for d, v in weights["by_dtype"].items()))
    table = Table(title=f"compute at batch {compute['batch']} × {compute['seq']} tokens: "
                        f"{compute['macs'] / 1e9:.3f} GMACs = {compute['flops'] / 1e9:.3f} GFLOPs "
                        f"in {len(compute['nodes'])} matrix-product nodes"
                        + (f"; {len(compute['unsized'])} could not be sized" if compute["unsized"] else ""))
    for col in ("largest", "op", "MMACs"):
        table.add_column(col)
    for n in compute["nodes"][:5]:
        table.add_row(n["name"], n["op"], f"{n['macs'] / 1e6:.1f}")
    stdout.print(table)
    checker, runtime = validity["checker"], validity["onnxruntime"]
    stdout.print("\nonnx.checker (full): " + ("[green]ok[/]" if checker["ok"] else f"[red]failed[/]: {checker['error']}"))
    stdout.print(f"ONNX Runtime {runtime['version']}: " + ("[green]loads it[/]" if runtime["loads"]
                                                          else f"[red]cannot load it[/]: {runtime['error']}"))
    parity = validity["parity"]
    if parity:
        stdout.print(f"last parity: max |diff| {parity['max_abs_diff']:.1e} on {parity.get('n', '?')} rows, "
                     f"{'passed' if parity.get('passed', True) else 'failed'}" + (f" ({parity['at']})" if "at" in parity else ""))


@app.command(rich_help_panel=LOOK)
def explain(
    package: Path = typer.Argument(..., help="Package folder."),
    texts: Optional[list[str]] = typer.Argument(None, help="Texts; none: read --file or stdin, a text per line."),
    pair: bool = typer.Option(False, "--pair", help="Read TEXTS two by two as sentence pairs: --pair A B [C D ...]."),
    file: Optional[Path] = typer.Option(None, "--file", help="Texts, one per line; pairs as TSV (a<TAB>b) or JSON Lines."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the explanations here as JSON."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Write them as a self-contained HTML page here."),
    label: Optional[str] = option(ExplainConfig, "label"),
    max_words: int = option(ExplainConfig, "max_words"),
    long_text: str = option(ExplainConfig, "long_text"),
    stride: Optional[int] = option(ExplainConfig, "stride"),
    aggregate: str = option(ExplainConfig, "aggregate"),
    provider: Optional[str] = option(ExplainConfig, "provider"),
    variant: Optional[str] = option(ExplainConfig, "variant"),
) -> None:
    """Show which words moved each answer: every word coloured by how much the label's score falls
    without it (leave-one-word-out occlusion, one batched model call per window)."""
    from onnxpack.core.atomic import atomic_write_text
    from onnxpack.inspection.explanation import html_page, terminal
    from onnxpack.runtime.predictor import Predictor

    from .run import check_text_sources, read_texts

    config = config_from(ExplainConfig, locals())
    config.validate()
    check_text_sources(texts, pair, file)
    with Predictor(package, provider=config.provider, variant=config.variant) as predictor:
        answers = predictor.explain(read_texts(texts, pair, file, predictor.pairs), long_text=config.long_text,
                                    stride=config.stride, aggregate=config.aggregate, max_words=config.max_words,
                                    label=config.label)
        name = predictor.package.manifest.name
    # Both files are made before either is written, so a failure leaves neither half-done.
    pages = {path: text for path, text in ((json_out, json.dumps(answers, indent=2, ensure_ascii=False) + "\n"),
                                           (html_out, html_page(answers, name))) if path}
    for path, text in pages.items():
        atomic_write_text(path, text)
    for line in terminal(answers):
        stdout.print(line, soft_wrap=True)


@app.command(rich_help_panel=LOOK)
def graph(
    path: Path = typer.Argument(..., help="Package folder or .onnx file."),
    out: Path = typer.Option(..., "--out", help="The HTML page to write."),
    png: Optional[Path] = typer.Option(None, help="Also write the overview as PNG here."),
    svg: Optional[Path] = typer.Option(None, help="Also write the overview as SVG here."),
    variant: Optional[str] = typer.Option(None, help="Which graph of a package (default: fp32)."),
    collapse: bool = option(GraphConfig, "collapse", "--collapse/--expand"),
    max_nodes: int = option(GraphConfig, "max_nodes"),
) -> None:
    """Draw the graph as one offline HTML page: pan, zoom, click for details, search, repeated blocks collapsed."""
    from onnxpack.core.atomic import atomic_write_bytes, atomic_write_text
    from onnxpack.core.onnxfile import load_model
    from onnxpack.inspection.graph import render, to_png
    from onnxpack.inspection.inspect import resolve

    config = config_from(GraphConfig, locals())
    source = resolve(path, variant)
    with console.status("laying out the graph"):
        drawing = render(load_model(source.path), source.title, config)
        image = to_png(drawing, config.timeout_s) if png else None
    # Everything is rendered before anything is written, so a failure leaves no partial output.
    atomic_write_text(out, drawing.html)
    if image:
        atomic_write_bytes(png, image)
    if svg:
        atomic_write_text(svg, drawing.svg)
    stdout.print(f"graph: [bold]{out}[/] ({drawing.nodes} nodes"
                 + (f", {drawing.blocks} blocks collapsed" if drawing.blocks else "") + ")")


@app.command(rich_help_panel=LOOK)
def profile(
    package: Path = typer.Argument(..., help="Package folder."),
    out: Path = typer.Option(..., "--out", help="The HTML page to write: the graph coloured by latency."),
    variant: Optional[str] = option(ProfileConfig, "variant"),
    batch: int = option(ProfileConfig, "batch"),
    seq: Optional[int] = option(ProfileConfig, "seq"),
    runs: int = option(ProfileConfig, "runs"),
    warmup: int = option(ProfileConfig, "warmup"),
    threads: Optional[int] = option(ProfileConfig, "threads"),
    provider: Optional[str] = option(ProfileConfig, "provider"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every node's time here as JSON."),
    save_graph: Optional[Path] = typer.Option(None, help="Write the graph that ran (.onnx) here."),
) -> None:
    """Profile a package with ONNX Runtime; map kernel times onto the graph that ran and draw it by latency."""
    from onnxpack.core.atomic import atomic_write_bytes, atomic_write_text
    from onnxpack.inspection.profile import draw
    from onnxpack.inspection.profile import profile as run_profile

    with console.status("profiling"):
        result = run_profile(package, config_from(ProfileConfig, locals()))
        page = draw(result).html
    atomic_write_text(out, page)
    if json_out:
        atomic_write_text(json_out, json.dumps(result.to_dict(), indent=2) + "\n")
    if save_graph:
        atomic_write_bytes(save_graph, result.model.SerializeToString())
    print_profile(result)
    stdout.print(f"profile: [bold]{out}[/]")


def print_profile(result: Profile) -> None:
    stdout.print(result.graph, highlight=False, soft_wrap=True)
    stdout.print(f"batch {result.batch} × {result.seq} tokens: {result.run_ms:.2f} ms per run, kernels "
                 f"{result.kernel_ms:.2f} ms, {result.mapped_fraction:.1%} of kernel time mapped to nodes",
                 highlight=False, soft_wrap=True)
    table = Table(title="slowest nodes")
    for col in ("node", "op", "ms", "share"):
        table.add_column(col)
    for n in result.nodes[:10]:
        table.add_row(n.name, n.op, f"{n.ms:.3f}", f"{n.share:.1%}")
    stdout.print(table)
    stdout.print("by op type: " + ", ".join(f"{o['op']} {o['share']:.0%}" for o in result.by_op[:8]), highlight=False,
                 soft_wrap=True)


@app.command(rich_help_panel=LOOK)
def view(
    path: Path = typer.Argument(..., help="Package folder or .onnx file."),
    variant: Optional[str] = typer.Option(None, help="Which graph of a package (default: fp32)."),
    port: Optional[int] = typer.Option(None, min=1, max=65535, help="Port on 127.0.0.1 (default: a free one)."),
    browse: bool = typer.Option(True, help="Open a web browser."),
) -> None:
    """Open the model in Netron (pip install 'onnxpack\\[netron]'), served on 127.0.0.1 only."""
    from onnxpack.inspection.view import view as netron_view
    from onnxpack.inspection.view import wait

    url = netron_view(path, variant=variant, port=port, browse=browse)
    console.print(f"Netron is showing {path} at [bold]{url}[/] (Ctrl-C stops it)")
    wait()
