"""The run panel: predict, batch, serve and providers. The runtime side only: no torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from onnxpack.core.config import BatchConfig, MonitorConfig, PredictConfig, ServeConfig
from onnxpack.core.errors import OnnxpackError

from .app import RUN, CommaList, app, config_from, console, option, per_label, stdout


@app.command(rich_help_panel=RUN)
def predict(
    package: Path = typer.Argument(..., help="Package folder."),
    texts: Optional[list[str]] = typer.Argument(None, help="Texts; none: read --file or stdin, a text per line."),
    pair: bool = typer.Option(False, "--pair", help="Read TEXTS two by two as sentence pairs: --pair A B [C D ...]."),
    file: Optional[Path] = typer.Option(None, "--file", help="Texts, one per line; pairs as TSV (a<TAB>b) or JSON Lines."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write JSON lines here instead of stdout."),
    provider: Optional[str] = option(PredictConfig, "provider"),
    batch_size: int = option(PredictConfig, "batch_size"),
    variant: Optional[str] = option(PredictConfig, "variant"),
    long_text: str = option(PredictConfig, "long_text"),
    stride: Optional[int] = option(PredictConfig, "stride"),
    aggregate: str = option(PredictConfig, "aggregate"),
    threshold: Optional[str] = typer.Option(None, parser=CommaList("--threshold", float),
                                            help="Multi-label: one threshold, or one per label comma-separated "
                                                 "(default: the manifest's)."),
) -> None:
    """Print one JSON object per text: text, label, score and the score of every label (and, for a
    multi-label model, `labels`: those at or over their threshold; with --long-text chunk, `windows`)."""
    from onnxpack.core.atomic import atomic_write_text
    from onnxpack.runtime.predictor import Predictor

    config = config_from(PredictConfig, locals())
    config.validate()
    check_text_sources(texts, pair, file)
    with Predictor(package, provider=config.provider, variant=config.variant) as predictor:
        if threshold is not None:
            predictor.set_thresholds(per_label(threshold, len(predictor.labels)))
        rows = read_texts(texts, pair, file, predictor.pairs)
        results = predictor.predict(rows, batch_size=config.batch_size, long_text=config.long_text,
                                    stride=config.stride, aggregate=config.aggregate)
        lines = [json.dumps(r, ensure_ascii=False) for r in results]
    if out:
        atomic_write_text(out, "\n".join(lines) + "\n")
    else:
        for line in lines:
            stdout.print(line, markup=False, highlight=False, soft_wrap=True)


def check_text_sources(texts: list[str] | None, pair: bool, file: Path | None) -> None:
    """Before a package is opened: one source of texts, and --pair's texts two by two."""
    if texts and file:
        raise OnnxpackError("give texts as arguments or --file, not both")
    if pair and len(texts or []) % 2:
        raise OnnxpackError(f"--pair reads texts two by two, got {len(texts)}", hint="pass --pair FIRST SECOND [...]")


def read_texts(texts: list[str] | None, pair: bool, file: Path | None, pairs: bool) -> list:
    """The texts (or pairs) a command was given: its arguments, --file, or stdin."""
    if file:
        return _read_rows(file, pairs)
    if texts:
        return list(zip(texts[::2], texts[1::2])) if pair else texts
    if sys.stdin is None or sys.stdin.isatty():
        raise OnnxpackError("no texts given", hint="pass TEXT arguments, --pair A B, --file FILE, or pipe lines on stdin")
    return _parse_rows(sys.stdin.read(), pairs, "stdin", json_lines=False)


def _read_rows(path: Path, pairs: bool) -> list:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise OnnxpackError(f"cannot read {path}: {e}", hint="pass a UTF-8 text file, one text per line") from None
    return _parse_rows(text, pairs, str(path), json_lines=path.suffix in (".jsonl", ".json"))


def _parse_rows(text: str, pairs: bool, where: str, json_lines: bool) -> list:
    """A text per line. A pair model's TSV lines `first<TAB>second`, and JSON Lines objects (their
    text column(s) found as `train` finds them: `{"text": ...}`, `{"sentence1": ..., "sentence2": ...}`),
    are read by core.tables, as `batch` reads them."""
    from onnxpack.core.data import TEXT_COLUMNS, find_text_columns
    from onnxpack.core.tables import TableFile

    if not (pairs or json_lines):
        return [line for line in text.splitlines() if line.strip()]
    if json_lines and not text.lstrip().startswith("{"):
        return _json_values(text, pairs, where)
    table = TableFile(text.encode("utf-8"), "json" if json_lines else "tsv", name=where,
                      column_names=None if json_lines else ("first", "second"))
    columns = find_text_columns(table.names, pairs) if json_lines else table.names
    if columns is None:
        want = "two text keys, e.g. sentence1 and sentence2" if pairs else f"a text key ({'/'.join(TEXT_COLUMNS)})"
        raise OnnxpackError(f"{where} has keys {', '.join(table.names)}; expected {want}",
                            hint='write one object per line, e.g. {"text": "..."}' if not pairs
                            else 'write one object per line, e.g. {"sentence1": "...", "sentence2": "..."}')
    rows = [row for chunk in table.chunks(columns) for row in zip(*(chunk.column(c) for c in columns))]
    missing = next((n for n, row in enumerate(rows, start=1) if not all(isinstance(v, str) for v in row)), None)
    if missing is not None:  # JSON Lines: the row's line (blank lines are not rows)
        raise OnnxpackError(f"{where}: row {missing} has no text under {' and '.join(map(repr, columns))}",
                            hint="give every line the same text key(s)")
    return rows if pairs else [single for (single,) in rows]


def _json_values(text: str, pairs: bool, where: str) -> list:
    """JSON Lines of bare values, not a table: a string per line, or a pair as `["first", "second"]`."""
    rows: list = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise OnnxpackError(f"{where}:{n} is not JSON ({e.msg})", hint="write one JSON value per line") from None
        shape_ok = (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)) if pairs \
            else isinstance(value, str)
        if not shape_ok:
            want = 'a ["first", "second"] pair' if pairs else "a string"
            raise OnnxpackError(f"{where}:{n} is not {want} (or an object per line)",
                                hint="write every line the same way")
        rows.append(tuple(value) if pairs else value)
    return rows


ENGINES = ("local", "ray")


@app.command(rich_help_panel=RUN)
def batch(
    package: Path = typer.Argument(..., help="Package folder."),
    input: str = typer.Option(..., "--input", help="TSV, CSV, JSON Lines or Parquet: a file, a folder or a glob."),
    output: str = typer.Option(..., "--output", help="A .parquet or .jsonl file, or a folder (DIR/) for part files; "
                                                     "written atomically."),
    engine: str = typer.Option("local", help="local (streams in chunks) or ray (Ray Data: pip install 'onnxpack\\[ray]')."),
    text_column: Optional[str] = option(BatchConfig, "text_column"),
    pair_columns: Optional[str] = option(BatchConfig, "pair_columns"),
    id_column: Optional[str] = option(BatchConfig, "id_column"),
    batch_size: int = option(BatchConfig, "batch_size"),
    chunk_rows: int = option(BatchConfig, "chunk_rows"),
    variant: Optional[str] = option(BatchConfig, "variant"),
    long_text: str = option(BatchConfig, "long_text"),
    stride: Optional[int] = option(BatchConfig, "stride"),
    aggregate: str = option(BatchConfig, "aggregate"),
    address: Optional[str] = typer.Option(None, help="ray: an existing cluster's address (default: a local one on "
                                                     "127.0.0.1)."),
    num_workers: Optional[int] = typer.Option(None, min=1, help="ray: model actors (default: sized from the "
                                                                "cluster's CPUs)."),
) -> None:
    """Classify every row of a file (or many) into one Parquet or JSON Lines file, in input order."""
    from rich.progress import Progress

    from onnxpack.runtime.batch.local import run_local

    config = config_from(BatchConfig, locals())
    if engine not in ENGINES:
        raise OnnxpackError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("classifying", total=None)
        advance = lambda n: progress.advance(task, n)  # noqa: E731
        if engine == "ray":
            from onnxpack.runtime.batch.ray_data import run_ray

            summary = run_ray(package, input, output, config, address=address, num_workers=num_workers,
                              progress=advance)
        else:
            summary = run_local(package, input, output, config, progress=advance)
    stdout.print(f"{summary.rows} rows ({summary.errors} with an error) in {summary.seconds:.1f} s: "
                 f"{summary.rows_per_s:.0f} rows/s, peak RSS {summary.peak_rss_mb:.0f} MB -> [bold]{summary.output}[/]")


@app.command(rich_help_panel=RUN)
def serve(
    package: Path = typer.Argument(..., help="Package folder."),
    host: str = option(ServeConfig, "host"),
    port: int = option(ServeConfig, "port"),
    max_batch: int = option(ServeConfig, "max_batch"),
    max_delay_ms: float = option(ServeConfig, "max_delay_ms"),
    max_concurrency: int = option(ServeConfig, "max_concurrency"),
    max_queue: int = option(ServeConfig, "max_queue"),
    provider: Optional[str] = option(ServeConfig, "provider"),
    variant: Optional[str] = option(ServeConfig, "variant"),
    instances: int = option(ServeConfig, "instances"),
    threads: Optional[int] = option(ServeConfig, "threads"),
    access_log: bool = typer.Option(False, help="Log every request."),
    grace_s: float = option(ServeConfig, "grace_s"),
    grpc_port: int = option(ServeConfig, "grpc_port"),
    long_text: str = option(ServeConfig, "long_text"),
    stride: Optional[int] = option(ServeConfig, "stride"),
    aggregate: str = option(ServeConfig, "aggregate"),
    max_windows: int = option(ServeConfig, "max_windows"),
    max_words: int = option(ServeConfig, "max_words"),
    prediction_metrics: bool = option(ServeConfig, "prediction_metrics"),
    log_predictions: Optional[str] = option(ServeConfig, "log_predictions", metavar="DIR"),
    log_texts: bool = option(ServeConfig, "log_texts"),
    log_max_mb: float = option(ServeConfig, "log_max_mb"),
    log_max_age_s: float = option(ServeConfig, "log_max_age_s"),
) -> None:
    """Serve the package: /predict, /explain, the Open Inference Protocol (KServe V2) over HTTP and gRPC, /metrics and a web page."""
    from onnxpack.serve import create_app, run

    config = config_from(ServeConfig, locals())
    server = create_app(package, config)
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning[/]: listening on {host}, not loopback only: anyone who can reach this "
                      "machine can send requests")
    console.print(f"serving {package} on [bold]http://{host}:{port}/[/]"
                  f"{f' and gRPC {host}:{grpc_port}' if grpc_port else ''} (Ctrl-C or SIGTERM to stop)")
    run(server, host=host, port=port, access_log=access_log)


@app.command(rich_help_panel=RUN)
def monitor(
    package: Path = typer.Argument(..., help="Package folder (its manifest holds the reference profile)."),
    input: Path = typer.Option(..., "--input", help="A prediction log: the folder `serve --log-predictions` "
                                                    "writes to, or one .jsonl or .parquet file."),
    window: Optional[str] = option(MonitorConfig, "window"),
    max_psi: float = option(MonitorConfig, "max_psi"),
    min_texts: int = option(MonitorConfig, "min_texts"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the comparison here (JSON)."),
    plot: Optional[Path] = typer.Option(None, help="Draw reference against live here (PNG; onnxpack\\[plot])."),
) -> None:
    """Compare logged predictions with the package's reference profile: PSI (and KS for scores and
    lengths) of the labels, scores, lengths, unknown-token and truncation rates; exit 1 on drift."""
    import importlib.util

    from onnxpack.core.atomic import atomic_write_text
    from onnxpack.runtime.monitor import monitor as compare_log
    from onnxpack.runtime.monitor import plot as plot_drift

    config = config_from(MonitorConfig, locals())
    config.validate()
    if plot and importlib.util.find_spec("matplotlib") is None:
        raise OnnxpackError("--plot needs matplotlib, which is not installed", hint="pip install 'onnxpack[plot]'")
    result = compare_log(package, input, config)
    table = Table(title=Text(f"{result.records} predictions ({result.first} to {result.last}) against the reference "
                        f"({result.reference.get('n')} validation rows, {result.reference.get('variant')})"))
    for column, justify in (("quantity", "left"), ("reference", "left"), ("live", "left"), ("PSI", "right"),
                            ("KS D", "right"), ("KS p", "right"), ("", "left")):
        table.add_column(column, justify=justify)
    for d in result.drifts:  # label names are the package's: shown as text, never as markup
        status = ("[red]drift[/]" if d.drifted else "ok" if d.judged else
                  "[dim]no texts[/]" if d.psi is None else "[dim]few texts[/]")
        table.add_row(Text(d.quantity), Text(d.reference), Text(d.live), "n/a" if d.psi is None else f"{d.psi:.4f}",
                      "" if d.ks is None else f"{d.ks:.3f}", "" if d.ks_p is None else f"{d.ks_p:.3g}", status)
    stdout.print(table)
    if few := [d.quantity for d in result.drifts if d.psi is not None and not d.judged]:
        stdout.print(f"not judged, under --min-texts {result.min_texts} texts on a side: {', '.join(few)}",
                     markup=False, highlight=False)
    if result.corrupt:
        stdout.print(f"{result.corrupt} corrupt lines skipped, the first: {result.corrupt_examples[0]}",
                     markup=False, highlight=False)
    if result.outside_window:
        stdout.print(f"{result.outside_window} earlier predictions outside --window {window} left out")
    if json_out:
        atomic_write_text(json_out, json.dumps(result.to_dict(), indent=2) + "\n")
    if plot:
        plot_drift(result, plot)
    drifted = [d.quantity for d in result.drifts if d.drifted]
    if drifted:  # quantities name labels: printed as text
        stdout.print(f"drift: PSI over {result.max_psi:g} on {', '.join(drifted)}", markup=False, highlight=False)
        raise typer.Exit(1)
    stdout.print(f"no drift: every PSI judged is at or under {result.max_psi:g}", markup=False, highlight=False)


@app.command(rich_help_panel=RUN)
def providers(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List ONNX Runtime's execution providers: all it knows, and those available here; and this CPU."""
    from onnxpack.core import cpu
    from onnxpack.runtime.predictor import all_providers, available_providers

    known, available = all_providers(), available_providers()
    if json_out:
        # soft_wrap: a line break inside a JSON string (the processor's name) would make it invalid
        stdout.print(json.dumps({"all": known, "available": available, "cpu": cpu.record()}), markup=False,
                     highlight=False, soft_wrap=True)
        return
    stdout.print(cpu.summary(), markup=False, highlight=False, soft_wrap=True)
    table = Table(title="ONNX Runtime execution providers")
    table.add_column("provider")
    table.add_column("available")
    for name in known:
        table.add_row(name, "yes" if name in available else "")
    stdout.print(table)
