"""The look panel: inspect, explain, graph, profile, view and diff: what is inside a package and its answers,
read-only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from onnxpack.core.config import (
    DiffConfig,
    ExplainConfig,
    GraphConfig,
    InspectConfig,
    ProfileConfig,
)

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
    source = resolve(path, variant, "graph")
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


SHOWN_FLIPS = 50  # flipped rows the terminal lists; --json and --html have every one


@app.command(rich_help_panel=LOOK)
def diff(
    a: str = typer.Argument(..., help="A: a package folder (PACKAGE@VARIANT for one of its variants) or an "
                                      ".onnx file."),
    b: str = typer.Argument(..., help="B: the same kinds; compared with A."),
    data: Optional[str] = option(DiffConfig, "data"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the whole comparison here as JSON."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Write it as a self-contained HTML page here."),
    min_agreement: float = option(DiffConfig, "min_agreement"),
    map_labels: Optional[str] = option(DiffConfig, "map_labels"),
    batch_size: Optional[int] = option(DiffConfig, "batch_size"),
    provider: Optional[str] = option(DiffConfig, "provider"),
    threads: Optional[int] = option(DiffConfig, "threads"),
) -> None:
    """Compare two packages, variants or .onnx files: their structure, and their answers on the same
    rows (agreement, flipped rows, metric, McNemar). Exits 1 when agreement is under --min-agreement."""
    from rich.progress import Progress

    from onnxpack.core.atomic import atomic_write_text
    from onnxpack.inspection.diff import BehaviourRefused, html_page
    from onnxpack.inspection.diff import diff as run_diff

    config = config_from(DiffConfig, locals())
    config.validate()
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        tasks: dict[str, Any] = {"structure": progress.add_task("comparing the graphs", total=None)}

        def step(side: str, done: int, total: int) -> None:
            if "structure" in tasks:
                progress.remove_task(tasks.pop("structure"))
            if side not in tasks:
                tasks[side] = progress.add_task(f"running {side} on the rows", total=total)
            progress.update(tasks[side], completed=done)

        try:
            result = run_diff(a, b, config, progress=step)
        except BehaviourRefused as e:
            refused = e
        else:
            refused = None
    if refused is not None:
        if refused.result is not None:
            print_diff(refused.result.to_dict())
        raise refused
    report = result.to_dict()
    # Both files are made before either is written, so a failure leaves neither half-done.
    pages = {path: text for path, text in ((json_out, json.dumps(report, indent=2, ensure_ascii=False) + "\n"),
                                           (html_out, html_page(report) if html_out else "")) if path}
    for path, text in pages.items():
        atomic_write_text(path, text)
    print_diff(report)
    if not result.passed:
        be = report["behaviour"]
        console.print(f"diff: labels agree on {be['agreement']:.4f} of the rows ({be['flipped']} of {be['n']} "
                      f"flipped), under --min-agreement {config.min_agreement:g}", highlight=False, markup=False,
                      soft_wrap=True)
        raise typer.Exit(1)


def _pair(a: Any, b: Any, fmt: str = "{}") -> tuple[str, str, str]:
    """Two values as cells, and a marker when they differ."""
    def show(value: Any) -> str:
        return "—" if value is None else escape(fmt.format(value))

    return show(a), show(b), "" if a == b else "[yellow]≠[/]"


def print_diff(r: dict[str, Any]) -> None:
    s, be = r["structure"], r["behaviour"]
    stdout.print(f"[bold]A[/] {escape(r['a']['title'])}  [bold]B[/] {escape(r['b']['title'])}", highlight=False)
    ident, params = s["identity"], s["parameters"]
    table = Table(title="structure" + (" (the same file)" if ident["same_file"] else ""))
    for col in ("", "A", "B", ""):
        table.add_column(col)
    rows = [("sha256", *_pair(ident["sha256"]["a"][:16], ident["sha256"]["b"][:16])),
            ("size", *_pair(ident["bytes"]["a"] / 1e6, ident["bytes"]["b"] / 1e6, "{:.1f} MB")),
            ("IR version", *_pair(ident["ir_version"]["a"], ident["ir_version"]["b"])),
            *((f"opset {escape(d)}", *_pair(v["a"], v["b"])) for d, v in ident["opsets"].items()),
            ("nodes", *_pair(s["ops"]["nodes"]["a"], s["ops"]["nodes"]["b"])),
            ("parameters", *_pair(params["parameters"]["a"], params["parameters"]["b"], "{:,}")),
            ("weights", *_pair(params["bytes"]["a"] / 1e6, params["bytes"]["b"] / 1e6, "{:.1f} MB")),
            ("initializers", *_pair(params["initializers"]["a"], params["initializers"]["b"]))]
    for row in rows:
        table.add_row(*row)
    stdout.print(table)
    ops = s["ops"]
    if ops["added"] or ops["removed"]:
        stdout.print("op types added: " + (", ".join(f"{escape(op)} +{n}" for op, n in ops["added"].items()) or "none")
                     + "; removed: " + (", ".join(f"{escape(op)} -{n}" for op, n in ops["removed"].items()) or "none"),
                     highlight=False, soft_wrap=True)
    else:
        stdout.print("op types: the same, in the same counts")
    w = s["weights"]
    moved = [t for t in w["tensors"] if t["max_abs_diff"]]
    table = Table(title=f"weights: {w['matched']} tensors matched by name and shape (A has {w['a']}, B {w['b']}); "
                        f"{w['identical']} identical, {len(moved)} differ")
    for col in ("tensor", "shape", "max |Δ|", "relative"):
        table.add_column(col)
    for t in moved[:10]:
        table.add_row(escape(t["name"]), " × ".join(map(str, t["shape"])), f"{t['max_abs_diff']:.3g}",
                      "—" if t["relative"] is None else f"{t['relative']:.3g}")
    stdout.print(table if moved else table.title, highlight=False)
    for side in ("inputs", "outputs"):
        c = s["contract"][side]
        if c["same"]:
            stdout.print(f"{side}: the same ({', '.join(escape(t['name']) for t in c['a'])})", highlight=False)
        else:
            changes = ([f"only in A: {escape(n)}" for n in c["only_a"]]
                       + [f"only in B: {escape(n)}" for n in c["only_b"]]
                       + [f"{escape(ch['name'])}: {escape(str(ch['a']['dims']))} {escape(ch['a']['dtype'])} → "
                          f"{escape(str(ch['b']['dims']))} {escape(ch['b']['dtype'])}" for ch in c["changed"]])
            stdout.print(f"[yellow]{side} differ[/]: " + "; ".join(changes), highlight=False, soft_wrap=True)
    m = s["manifest"]
    if m["packages"]["a"] or m["packages"]["b"]:
        table = Table(title="manifests")
        for col in ("", "A", "B", ""):
            table.add_column(col)
        for key, v in m["fields"].items():
            table.add_row(key.replace("_", " "), *_pair(v["a"], v["b"]))
        stdout.print(table)
        table = Table(title="variants: gate figures (MCC, agreement with fp32, rows/s)")
        for col in ("variant", "A", "B"):
            table.add_column(col)
        for name, v in m["variants"].items():
            table.add_row(escape(name), *(_figures(v[side]) for side in ("a", "b")))
        stdout.print(table)
    if be is None:
        return
    label = "labelled" if be["labelled"] else "unlabelled"
    table = Table(title=f"behaviour on {be['n']} {label} rows of {escape(be['data'])} (batch size {be['batch_size']})")
    for col in ("", "A", "B", "change"):
        table.add_column(col)
    runs = be["runs"]
    table.add_row("variant", escape(str(runs["a"]["variant"] or "-")), escape(str(runs["b"]["variant"] or "-")), "")
    table.add_row("seconds", f"{runs['a']['seconds']:.2f}", f"{runs['b']['seconds']:.2f}", "")
    if be["metric"]:
        metric = be["metric"]
        table.add_row(metric["title"], f"{metric['a']:.4f}", f"{metric['b']:.4f}", f"{metric['change']:+.4f}")
        acc = metric["acc"]
        table.add_row("accuracy", f"{acc['a']:.4f}", f"{acc['b']:.4f}", f"{acc['b'] - acc['a']:+.4f}")
    stdout.print(table)
    stdout.print(f"agreement [bold]{be['agreement']:.4f}[/]: {be['flipped']} of {be['n']} rows flipped; "
                 f"max |Δlogit| {be['max_abs_logit_diff']:.3g}", highlight=False)
    if be["mcnemar"]:
        mc = be["mcnemar"]
        stdout.print(f"exact McNemar: A right and B wrong on {mc['a_right_b_wrong']} rows, A wrong and B right on "
                     f"{mc['a_wrong_b_right']}; p = {mc['p_value']:.3g}", highlight=False)
    if be["flips"]:
        table = Table(title="flipped rows" + (f" (the first {SHOWN_FLIPS} of {len(be['flips'])})"
                                              if len(be["flips"]) > SHOWN_FLIPS else ""))
        for col in ("row", "text", "true", "A", "B"):
            table.add_column(col, overflow="fold")
        for f in be["flips"][:SHOWN_FLIPS]:
            text = " | ".join(f["text"]) if isinstance(f["text"], list) else f["text"]
            true = ", ".join(f["label"]) if isinstance(f["label"], list) else f["label"]
            table.add_row(str(f["row"]), escape(text), "—" if true is None else escape(true),
                          *(escape(_answer(f[side])) for side in ("a", "b")))
        stdout.print(table)
    stdout.print(f"agreement {be['agreement']:.4f} " + ("[green]≥[/]" if r["passed"] else "[red]<[/]")
                 + f" --min-agreement {r['min_agreement']:g}", highlight=False)


def _figures(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return "—"
    parts = [f"MCC {figures['mcc']:.4f}" if "mcc" in figures else "",
             f"agr {figures['agreement']:.4f}" if figures.get("agreement") is not None else "",
             f"{figures['items_per_s']:g}/s" if figures.get("items_per_s") else ""]
    return ", ".join(p for p in parts if p) or "(no gate figures)"


def _answer(answer: dict[str, Any]) -> str:
    labels = answer.get("labels")
    return f"{', '.join(labels) if labels is not None else answer['label']} {answer['score']:.3f}"
