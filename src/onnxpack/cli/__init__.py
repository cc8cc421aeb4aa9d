"""The `onnxpack` command: one short command per stage. The only module that prints.

Stage modules are imported inside each command so `onnxpack --help`, `providers`
and `predict` start fast and never import torch.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from typer.core import TyperGroup

from onnxpack.core.errors import OnnxpackError, ParityError

# Where --data is looked for when not given (data.resolve_data).
DATA_DEFAULT = "default: $ONNXPACK_DATA, then ./data/cola, then the CoLA copy bundled with onnxpack"

console = Console(stderr=True)
stdout = Console()


class _Group(TyperGroup):
    """Turns a user error into one line on stderr and exit code 1; bugs keep their traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OnnxpackError as e:
            click.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train a text classifier, export it to a verified ONNX package, and run it.")


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs.")] = False) -> None:
    # Our own INFO lines; other libraries' only from WARNING up (ONNX Runtime's quantizer logs
    # every tensor at INFO) unless --verbose.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])
    logging.getLogger("onnxpack").setLevel(logging.DEBUG if verbose else logging.INFO)


def _quiet_lightning() -> None:
    """Lightning sets up its own INFO handler on import (GPU/TPU lines, tips); keep warnings only."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.handlers.clear()


def _train_limit(value: str | None) -> float | int | None:
    """Lightning's convention: a whole number counts batches, a decimal is a fraction of the epoch."""
    if value is None:
        return None
    try:
        return float(value) if "." in value else int(value)
    except ValueError:
        raise OnnxpackError(f"--limit-train-batches takes a number of batches (60) or a fraction (0.25), "
                            f"got {value!r}") from None


def _names(value: str | None, flag: str) -> tuple[str, ...] | None:
    """A comma-separated list of names."""
    if value is None:
        return None
    names = tuple(n.strip() for n in value.split(","))
    if not all(names):
        raise OnnxpackError(f"{flag} has an empty name in {value!r}", hint=f"pass {flag} A,B,C")
    return names


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="Run folder to create (best.ckpt, hf/, metrics.json).")],
    data: Annotated[Optional[str], typer.Option(help=f"Folder of TSV/CSV files, or glue/cola (online); {DATA_DEFAULT}.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Hugging Face name or local folder.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs (early stopping may end sooner).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Rows per training batch.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Truncate texts to this many tokens.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    limit_train_batches: Annotated[Optional[str], typer.Option(help="Batches per epoch: a count (60) or a fraction (0.25).")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop training after this many minutes (the LR decays to fit).")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Label names in id order, comma-separated (default: from the data).")] = None,
    text_columns: Annotated[Optional[str], typer.Option(help="The text column, or two comma-separated for sentence pairs (default: detected).")] = None,
    multi_label: Annotated[Optional[bool], typer.Option("--multi-label", help="Several labels per row, comma-separated in the label cell.")] = None,
    trust_remote_code: Annotated[Optional[bool], typer.Option("--trust-remote-code", help="Run the code a model folder ships (auto_map); refused without this.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of training settings; flags override it.")] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Fine-tune a classifier with Lightning; keeps the best checkpoint by validation loss."""
    from onnxpack.build.train import TrainConfig, fit

    _quiet_lightning()
    flags = dict(data=data, model=model, epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length,
                 seed=seed, limit_train_batches=_train_limit(limit_train_batches), max_minutes=max_minutes,
                 labels=_names(labels, "--labels"), text_columns=_names(text_columns, "--text-columns"),
                 multi_label=multi_label, trust_remote_code=trust_remote_code)
    if config:
        train_config = TrainConfig.from_yaml(config, **flags)
    else:
        train_config = TrainConfig(**{k: v for k, v in flags.items() if v is not None})
    result = fit(train_config, out, force=force)
    _print_metrics(result.metrics)
    console.print(f"checkpoint: [bold]{result.checkpoint}[/]")


def _print_metrics(metrics: dict[str, float]) -> None:
    table = Table(title="best checkpoint (validation)")
    keys = ("val_mcc", "val_acc", "val_f1", "val_loss", "best_epoch", "steps", "train_seconds")
    for key in keys:
        table.add_column(key)
    table.add_row(*(f"{metrics.get(k):.4f}" if isinstance(metrics.get(k), float) and k.startswith("val_")
                    else str(metrics.get(k)) for k in keys))
    console.print(table)


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="best.ckpt from `train`, or a Hugging Face model folder.")],
    out: Annotated[Path, typer.Option("--out", help="Package folder to create.")],
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    exporter: Annotated[str, typer.Option(help="torchscript, dynamo or lightning (LightningModule.to_onnx).")] = "torchscript",
    name: Annotated[Optional[str], typer.Option(help="Model name in the manifest (default: OUT's name).")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Token limit (default: the training max_length).")] = None,
    pairs: Annotated[Optional[bool], typer.Option("--pairs/--single-texts", help="The model reads sentence pairs (default: as trained; single texts for a plain Hugging Face folder).")] = None,
    target: Annotated[Optional[str], typer.Option(help="Refuse a graph this runtime cannot load: onnxruntime==X.Y or triton==YY.MM.")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Run the code a model folder ships (auto_map); refused without this.")] = False,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Export to ONNX, check against PyTorch on batches of 1, 3 and 17, write the package."""
    from onnxpack.build.export import ExportConfig
    from onnxpack.build.export import export as export_package
    from onnxpack.deploy import compat

    config = ExportConfig(exporter=exporter, opset=opset, name=name, max_length=max_length, pairs=pairs,
                          target=compat.parse_target(target) if target else None, trust_remote_code=trust_remote_code)
    package = export_package(checkpoint, out, config, force=force)
    m = package.manifest
    console.print(f"package: [bold]{package.root}[/] (opset {m.opset}, {m.exporter}, labels {m.labels}, "
                  f"self-check max |diff| {m.parity['max_abs_diff']:.1e})")


@app.command()
def verify(
    package: Annotated[Path, typer.Argument(help="Package folder.")],
    data: Annotated[Optional[str], typer.Option(help=f"Folder with the validation files; {DATA_DEFAULT}.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Source checkpoint (default: the one in the manifest).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report here as JSON.")] = None,
    atol: Annotated[float, typer.Option(help="Maximum allowed |logit difference|.")] = 1e-4,
    min_agreement: Annotated[float, typer.Option(help="Minimum share of identical labels.")] = 1.0,
    provider: Annotated[Optional[str], typer.Option(help="ONNX Runtime execution provider.")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per batch.")] = 64,
    localize: Annotated[bool, typer.Option("--localize", help="Report the first module whose output diverges, on the worst batch.")] = False,
) -> None:
    """Run PyTorch and ONNX Runtime on every validation row and compare."""
    from rich.progress import Progress

    from onnxpack.build.verify import VerifyConfig
    from onnxpack.build.verify import verify as verify_package

    config = VerifyConfig(atol=atol, min_agreement=min_agreement, batch_size=batch_size, provider=provider,
                          localize=localize)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("verifying", total=None)
        try:
            report = verify_package(package, data, checkpoint, config, json_out,
                                    progress=lambda n: progress.advance(task, n))
        except ParityError as e:
            if e.report is not None:
                _print_parity(e.report)
            raise
    _print_parity(report)


def _print_parity(report) -> None:
    table = Table(title=f"parity on {report.n} validation rows ({report.provider})")
    for col in ("max_abs_diff", "max_rel_diff", "agreement", "torch mcc", "onnx mcc", "torch acc", "onnx acc"):
        table.add_column(col)
    table.add_row(f"{report.max_abs_diff:.2e}", f"{report.max_rel_diff:.2e}", f"{report.agreement:.4f}",
                  f"{report.torch['mcc']:.4f}", f"{report.onnx['mcc']:.4f}", f"{report.torch['acc']:.4f}",
                  f"{report.onnx['acc']:.4f}")
    console.print(table)
    if report.localization and report.passed:
        console.print(f"localize: {report.localization['summary']}")
    console.print("[green]passed[/]" if report.passed else f"[red]failed[/]: {'; '.join(report.failures)}")


@app.command()
def predict(
    package: Annotated[Path, typer.Argument(help="Package folder.")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts; none: read --file or stdin, a text per line.")] = None,
    pair: Annotated[bool, typer.Option("--pair", help="Read TEXTS two by two as sentence pairs: --pair A B [C D ...].")] = False,
    file: Annotated[Optional[Path], typer.Option("--file", help="Texts, one per line; pairs as TSV (a<TAB>b) or JSON Lines.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write JSON lines here instead of stdout.")] = None,
    provider: Annotated[Optional[str], typer.Option(help="ONNX Runtime execution provider.")] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per model call.")] = 32,
    variant: Annotated[Optional[str], typer.Option(help="fp32, optimized, int8, ... (default: the fastest accepted).")] = None,
    threshold: Annotated[Optional[str], typer.Option(help="Multi-label: one threshold, or one per label comma-separated (default: the manifest's).")] = None,
) -> None:
    """Print one JSON object per text: text, label, score and the score of every label (and, for a
    multi-label model, `labels`: those at or over their threshold)."""
    from onnxpack.core.package import atomic_write_text
    from onnxpack.runtime.predictor import Predictor

    if texts and file:
        raise OnnxpackError("give texts as arguments or --file, not both")
    if pair and len(texts or []) % 2:
        raise OnnxpackError(f"--pair reads texts two by two, got {len(texts)}", hint="pass --pair FIRST SECOND [...]")
    with Predictor(package, provider=provider, variant=variant) as predictor:
        if threshold is not None:
            predictor.set_thresholds(_thresholds(threshold, len(predictor.labels)))
        if file:
            rows = _read_rows(file, predictor.pairs)
        elif texts:
            rows = list(zip(texts[::2], texts[1::2])) if pair else texts
        else:
            if sys.stdin is None or sys.stdin.isatty():
                raise OnnxpackError("no texts to predict", hint="pass TEXT arguments, --pair A B, --file FILE, "
                                                                "or pipe lines on stdin")
            rows = _parse_rows(sys.stdin.read(), predictor.pairs, "stdin", json_lines=False)
        lines = [json.dumps(r, ensure_ascii=False) for r in predictor.predict(rows, batch_size=batch_size)]
    if out:
        atomic_write_text(out, "\n".join(lines) + "\n")
    else:
        for line in lines:
            stdout.print(line, markup=False, highlight=False, soft_wrap=True)


def _thresholds(value: str, labels: int) -> list[float]:
    """--threshold: one value for every label, or one per label."""
    try:
        values = [float(v) for v in value.split(",")]
    except ValueError:
        raise OnnxpackError(f"--threshold takes numbers between 0 and 1, got {value!r}") from None
    return values * labels if len(values) == 1 else values


def _read_rows(path: Path, pairs: bool) -> list:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise OnnxpackError(f"cannot read {path}: {e}", hint="pass a UTF-8 text file, one text per line") from None
    return _parse_rows(text, pairs, str(path), json_lines=path.suffix in (".jsonl", ".json"))


def _parse_rows(text: str, pairs: bool, where: str, json_lines: bool) -> list:
    """A text per line; for a pair model, a TSV line `first<TAB>second` or a JSON line `["a", "b"]`
    or `{"text": "a", "text_pair": "b"}` (any two-column names data.PAIR_COLUMNS knows)."""
    from onnxpack.core.data import PAIR_COLUMNS

    rows: list = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if json_lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise OnnxpackError(f"{where}:{n} is not JSON ({e.msg})", hint="write one JSON value per line") from None
            if isinstance(row, dict):
                keys = next(((a, b) for a, b in PAIR_COLUMNS if a in row and b in row), None)
                row = [row[k] for k in keys] if pairs and keys else row.get("text", row.get("sentence"))
            rows.append(tuple(row) if isinstance(row, list) else row)
        elif pairs:
            parts = line.split("\t")
            if len(parts) != 2:
                raise OnnxpackError(f"{where}:{n} has {len(parts)} tab-separated fields; a pair model needs 2",
                                    hint="write each pair as first<TAB>second")
            rows.append((parts[0], parts[1]))
        else:
            rows.append(line)
    return rows


@app.command()
def batch(
    package: Annotated[Path, typer.Argument(help="Package folder.")],
    input: Annotated[str, typer.Option("--input", help="TSV, CSV, JSON Lines or Parquet: a file, a folder or a glob.")],
    output: Annotated[str, typer.Option("--output", help="A .parquet or .jsonl file, or a folder (DIR/) for part files; written atomically.")],
    engine: Annotated[str, typer.Option(help="local (streams in chunks) or ray (Ray Data: pip install 'onnxpack[ray]').")] = "local",
    text_column: Annotated[Optional[str], typer.Option(help="The text column (default: sentence or text).")] = None,
    pair_columns: Annotated[Optional[str], typer.Option(help="A pair model's two text columns, A,B (default: detected).")] = None,
    id_column: Annotated[Optional[str], typer.Option(help="The column whose value identifies a row (default: the row number).")] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per model call.")] = 32,
    chunk_rows: Annotated[int, typer.Option(help="local: rows held in memory at a time.")] = 10_000,
    variant: Annotated[Optional[str], typer.Option(help="fp32, optimized, int8, ... (default: the fastest accepted).")] = None,
    address: Annotated[Optional[str], typer.Option(help="ray: an existing cluster's address (default: a local one on 127.0.0.1).")] = None,
    num_workers: Annotated[Optional[int], typer.Option(help="ray: model actors (default: sized from the cluster's CPUs).")] = None,
) -> None:
    """Classify every row of a file (or many) into one Parquet or JSON Lines file, in input order."""
    from rich.progress import Progress

    from onnxpack.runtime.batch.local import BatchConfig, run_local

    pairs = _names(pair_columns, "--pair-columns")
    if pairs is not None and len(pairs) != 2:
        raise OnnxpackError(f"--pair-columns takes two column names, got {pair_columns!r}", hint="pass --pair-columns A,B")
    config = BatchConfig(text_column=text_column, pair_columns=pairs, id_column=id_column, batch_size=batch_size,
                         chunk_rows=chunk_rows, variant=variant)
    if engine not in ("local", "ray"):
        raise OnnxpackError(f"unknown engine {engine!r}; known: local, ray")
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("classifying", total=None)
        advance = lambda n: progress.advance(task, n)  # noqa: E731
        if engine == "ray":
            from onnxpack.runtime.batch.ray_data import run_ray

            summary = run_ray(package, input, output, config, address=address, num_workers=num_workers,
                              progress=advance)
        else:
            summary = run_local(package, input, output, config, progress=advance)
    console.print(f"{summary.rows} rows ({summary.errors} with an error) in {summary.seconds:.1f} s: "
                  f"{summary.rows_per_s:.0f} rows/s, peak RSS {summary.peak_rss_mb:.0f} MB -> [bold]{summary.output}[/]")


@app.command()
def check(
    package: Annotated[Path, typer.Argument(help="Package folder.")],
    target: Annotated[Optional[str], typer.Option(help="onnxruntime==X.Y or triton==YY.MM (default: the installed onnxruntime).")] = None,
    data: Annotated[Optional[str], typer.Option(help=f"Sentences for the second runtime's comparison; {DATA_DEFAULT}.")] = None,
    rows: Annotated[int, typer.Option(help="Validation rows compared in the second runtime.")] = 64,
    install_node_runtime: Annotated[bool, typer.Option("--install-node-runtime", help="First npm-install onnxruntime-node into onnxpack's cache.")] = False,
) -> None:
    """Will the package load where it is shipped? Its IR version and opsets against the target's, per
    variant; then its logits in a second runtime (onnxruntime-node) against Python's."""
    import onnxruntime

    from onnxpack.core.data import load_splits
    from onnxpack.core.package import Package
    from onnxpack.deploy import compat, node_runtime
    from onnxpack.runtime.predictor import Predictor

    opened = Package.open(package)
    runtime = compat.parse_target(target or f"onnxruntime=={onnxruntime.__version__}")
    findings = compat.check(opened, runtime)
    table = Table(title=f"{opened.name} against {runtime}")
    for col in ("variant", "file", "IR", "opsets", "loads"):
        table.add_column(col)
    for f in findings:
        table.add_row(f.variant, f.file, str(f.ir), ", ".join(f"{d} {v}" for d, v in f.opsets.items()),
                      "[green]yes[/]" if f.ok else f"[red]no[/]: {'; '.join(f.problems)}")
    stdout.print(table)
    for f in findings:
        for warning in f.warnings:
            console.print(f"[yellow]warning[/] {f.variant}: {warning}")
    if install_node_runtime:
        console.print(f"installed {node_runtime.PACKAGE} into {node_runtime.install()}")
    reason = node_runtime.available()
    if reason:
        console.print(f"second runtime: not run, {reason}")
    else:
        node_target = compat.ort_target(node_runtime.version())
        validation = load_splits(data, need_train=False).validation
        texts = validation.texts[:rows]
        if opened.manifest.pairs and not isinstance(texts[0], tuple):  # single sentences, paired up
            texts = list(zip(texts[::2], texts[1::2]))
        node_findings = {g.variant: g for g in compat.check(opened, node_target)}
        for f in findings:
            problems = node_findings[f.variant].problems
            if problems:
                console.print(f"second runtime: onnxruntime-node {node_runtime.version()} cannot load "
                              f"{f.variant}: {'; '.join(problems)}")
                continue
            with Predictor(opened, variant=f.variant, provider="cpu") as predictor:
                result = node_runtime.compare(predictor, texts)
            stdout.print(f"{f.variant}: {result.runtime} vs Python onnxruntime {onnxruntime.__version__} on "
                         f"{result.rows} rows: max |diff| {result.max_abs_diff:.1e}, same label {result.agreement:.1%}")
    if not all(f.ok for f in findings):
        raise typer.Exit(1)


@app.command("export-serving")
def export_serving(
    package: Annotated[Path, typer.Argument(help="Package folder.")],
    triton: Annotated[Path, typer.Option("--triton", help="Triton model repository folder to write (new, empty, or this package's own).")],
    kserve: Annotated[Optional[Path], typer.Option("--kserve", help="Also write a KServe InferenceService YAML here.")] = None,
    storage_uri: Annotated[Optional[str], typer.Option(help="--kserve: where the cluster finds the repository (default: pvc://onnxpack-models/<TRITON's name>).")] = None,
    max_batch: Annotated[int, typer.Option(help="Triton's max_batch_size.")] = 32,
    instances: Annotated[int, typer.Option(help="Instances of the ONNX model.")] = 1,
    variant: Annotated[Optional[str], typer.Option(help="fp32, optimized, ... (default: as serve picks, the fastest batch-invariant one).")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="KIND_GPU instances for the ONNX model.")] = False,
    target: Annotated[Optional[str], typer.Option(help="The Triton release to check the graph against: triton==YY.MM (default: the newest in onnxpack's table).")] = None,
    pad_to: Annotated[Optional[int], typer.Option(help="Pad (and cut) every text to this many tokens (default: the package's max_length, so answers equal predict's; shorter is faster on short texts).")] = None,
    model_backend: Annotated[str, typer.Option(help="onnxruntime (Triton's backend) or python (ONNX Runtime in a Python-backend model, for a Triton without that backend).")] = "onnxruntime",
) -> None:
    """Write a Triton model repository that takes raw text (tokenizer, model and labels as one ensemble)."""
    from onnxpack.deploy import compat
    from onnxpack.deploy import kserve as kserve_doc
    from onnxpack.deploy.triton import ServingConfig, write_repository

    if kserve:
        kserve_doc.check_path(kserve)
    runtime = compat.parse_target(target or compat.newest_triton())
    if runtime.kind != "triton":
        raise OnnxpackError(f"--target {target} is not a Triton release", hint="pass --target triton==YY.MM")
    config = ServingConfig(max_batch=max_batch, instances=instances, gpu=gpu, variant=variant,
                           model_backend=model_backend, target=runtime, pad_to=pad_to)
    written = write_repository(package, triton, config)
    names = written["models"]
    console.print(f"Triton repository [bold]{written['repository']}[/]: {names['ensemble']} (text in; logits, "
                  f"label, score out) = {names['tokenizer']} -> {names['model']} ({written['variant']}) -> "
                  f"{names['postprocess']}; padded to {written['pad_to']} tokens; checked against {runtime}")
    if kserve:
        uri = storage_uri or f"pvc://onnxpack-models/{Path(written['repository']).name}"
        kserve_doc.write(kserve, kserve_doc.inference_service(names["model"], uri, runtime.version, gpu))
        console.print(f"KServe InferenceService [bold]{kserve}[/] (storageUri {uri})")


@app.command()
def thresholds(
    package: Annotated[Path, typer.Argument(help="Package folder of a multi-label model.")],
    values: Annotated[str, typer.Argument(help="One threshold for every label, or one per label, comma-separated.")],
) -> None:
    """Store a multi-label package's per-label thresholds in its manifest."""
    from onnxpack.runtime.predictor import Predictor

    with Predictor(package) as predictor:
        predictor.set_thresholds(_thresholds(values, len(predictor.labels)))  # checks count and range
        predictor.package.update_manifest(thresholds=predictor.thresholds)
        console.print(", ".join(f"{label} {t:g}" for label, t in zip(predictor.labels, predictor.thresholds)))


@app.command()
def serve(
    package: Annotated[Path, typer.Argument(help="Package folder.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Rows per model call; 1 turns micro-batching off.")] = 32,
    max_delay_ms: Annotated[float, typer.Option(help="How long a row may wait for others to share its model call.")] = 5.0,
    max_concurrency: Annotated[int, typer.Option(help="Requests answered at once; more wait in a queue.")] = 64,
    max_queue: Annotated[int, typer.Option(help="Requests waiting beyond that; more get 503 + Retry-After.")] = 256,
    provider: Annotated[Optional[str], typer.Option(help="ONNX Runtime execution provider.")] = None,
    variant: Annotated[Optional[str], typer.Option(
        help="fp32, optimized, int8, ... (default: the fastest whose answers do not depend on the batch).")] = None,
    instances: Annotated[int, typer.Option(help="Model instances (sessions), each running a length group of a batch side by side.")] = 2,
    threads: Annotated[Optional[int], typer.Option(help="ONNX Runtime intra-op threads per instance (default: the CPUs shared among them).")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    grace_s: Annotated[float, typer.Option(help="After SIGTERM, seconds in-flight requests get before the process ends regardless.")] = 30.0,
    grpc_port: Annotated[int, typer.Option(help="Port of the V2 gRPC service (Triton's GRPCInferenceService); 0 for none.")] = 8001,
) -> None:
    """Serve the package: /predict, the Open Inference Protocol (KServe V2) over HTTP and gRPC, /metrics and a web page."""
    from onnxpack.serve import ServeConfig, create_app, run

    config = ServeConfig(max_batch=max_batch, max_delay_ms=max_delay_ms, max_concurrency=max_concurrency,
                         max_queue=max_queue, provider=provider, variant=variant, instances=instances, threads=threads,
                         grace_s=grace_s, grpc_port=grpc_port or None, host=host)
    server = create_app(package, config)
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning[/]: listening on {host}, not loopback only: anyone who can reach this "
                      "machine can send requests")
    console.print(f"serving {package} on [bold]http://{host}:{port}/[/]"
                  f"{f' and gRPC {host}:{grpc_port}' if grpc_port else ''} (Ctrl-C or SIGTERM to stop)")
    run(server, host=host, port=port, access_log=access_log)


def _csv_list(value: str, option: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise OnnxpackError(f"{option} is empty", hint=f"pass a comma-separated list, e.g. {option} a,b")
    return items


@app.command()
def optimize(
    package: Annotated[Path, typer.Argument(help="Package folder; variants are added to it.")],
    data: Annotated[Optional[str], typer.Option(help=f"Validation data for the accuracy gate; {DATA_DEFAULT}.")] = None,
    max_mcc_drop: Annotated[float, typer.Option(help="Reject a variant whose MCC (micro-F1 for multi-label) is lower than fp32's by more.")] = 0.01,
    min_agreement: Annotated[float, typer.Option(help="Reject a variant whose labels agree with fp32's on fewer rows than this.")] = 0.99,
    per_channel: Annotated[bool, typer.Option(help="int8: one weight scale per output channel.")] = False,
    variants: Annotated[str, typer.Option(help="Comma-separated: optimized, int8, int8-static, fp16 (GPU only).")] = "optimized,int8,int8-static,fp16",
    calibration_rows: Annotated[int, typer.Option(help="int8-static: training rows its activation ranges are calibrated on.")] = 256,
    provider: Annotated[Optional[str], typer.Option(help="ONNX Runtime execution provider for the gate.")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per batch in the validation runs.")] = 32,
) -> None:
    """Add faster variants to a package, each accepted only if its validation MCC holds."""
    from onnxpack.core.package import Package
    from onnxpack.runtime.optimize import OptimizeConfig
    from onnxpack.runtime.optimize import optimize as optimize_package

    config = OptimizeConfig(variants=tuple(_csv_list(variants, "--variants")), max_mcc_drop=max_mcc_drop,
                            min_agreement=min_agreement,
                            per_channel=per_channel, data=data, provider=provider, batch_size=batch_size,
                            calibration_rows=calibration_rows)
    with console.status("optimizing") as status:
        results = optimize_package(package, config, progress=lambda message: status.update(message))
    from onnxpack.core.metrics import METRIC_NAMES, task_metric

    metric = task_metric(Package.open(package).manifest.problem_type == "multi_label_classification")
    table = Table(title=f"variants of {package} on {results[0].figures['n']} validation rows")
    for col in ("variant", "status", METRIC_NAMES[metric], "drop", "agreement", "max |diff|", "batch drift", "rows/s"):
        table.add_column(col)
    for r in results:
        f = r.figures
        status_text = "[green]accepted[/]" if r.accepted else f"[red]{'skipped' if not f else 'rejected'}[/]"
        table.add_row(r.variant, status_text,
                      *(f"{f[k]:.4f}" if k in f else "" for k in (metric, f"{metric}_drop", "agreement")),
                      *(f"{f[k]:.1e}" if k in f else "" for k in ("max_abs_diff", "batch_drift")),
                      f"{f['items_per_s']:.0f}" if f else "")
    console.print(table)
    for r in results:
        if r.reason:
            console.print(f"{r.variant}: {r.reason}")
    from onnxpack.runtime.predictor import serving_variant

    optimized = Package.open(package)
    console.print(f"default variant: [bold]{optimized.default_variant()}[/] (the fastest accepted); "
                  f"serve's: [bold]{serving_variant(optimized, provider)}[/] (the fastest whose answers do not depend on the batch)")


def _positive_ints(value: str, option: str) -> tuple[int, ...]:
    items = _csv_list(value, option)
    try:
        numbers = tuple(int(item) for item in items)
    except ValueError:
        numbers = ()
    if not numbers or any(n < 1 for n in numbers):
        raise OnnxpackError(f"{option} takes positive integers separated by commas, got {value!r}",
                            hint=f"e.g. {option} 1,8,32")
    return numbers


@app.command()
def bench(
    package: Annotated[Path, typer.Argument(help="Package folder.")],
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    seq_lens: Annotated[str, typer.Option(help="Comma-separated sequence lengths (tokens).")] = "16,64",
    threads: Annotated[int, typer.Option(help="Threads for every engine.")] = 2,
    variants: Annotated[Optional[str], typer.Option(help="Comma-separated variants (default: all in the package).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results here as JSON.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write the plot here (PNG).")] = None,
    data: Annotated[Optional[str], typer.Option(help=f"Validation data for the end-to-end rows; {DATA_DEFAULT}.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="PyTorch weights (default: the package's source).")] = None,
    with_torch: Annotated[bool, typer.Option("--torch/--no-torch", help="Include PyTorch eager rows.")] = True,
    torch_compile: Annotated[bool, typer.Option("--compile/--no-compile", help="Add torch.compile rows (compiles each shape: ~1 min each on 2 cores).")] = False,
    rounds: Annotated[int, typer.Option(help="Timed blocks per engine.")] = 3,
) -> None:
    """Time PyTorch and every ONNX Runtime variant side by side; writes report.html into the package."""
    import tempfile

    from onnxpack.core.package import Package, atomic_write_text
    from onnxpack.inspection.report import write_report
    from onnxpack.runtime.bench import BenchConfig
    from onnxpack.runtime.bench import bench as run_bench
    from onnxpack.runtime.bench import plot as plot_bench

    config = BenchConfig(batch_sizes=_positive_ints(batch_sizes, "--batch-sizes"),
                         seq_lens=_positive_ints(seq_lens, "--seq-lens"), threads=threads, rounds=rounds,
                         variants=tuple(_csv_list(variants, "--variants")) if variants else None,
                         torch=with_torch, compile=torch_compile, data=data, checkpoint=str(checkpoint) if checkpoint else None)
    baseline = None
    if with_torch:
        try:  # the PyTorch rows need the torch side; without it, bench notes why they are missing
            from onnxpack.build.bench_torch import torch_engines as baseline
        except ImportError:
            pass
    _quiet_lightning()
    with console.status("benchmarking") as status:
        report = run_bench(package, config, progress=lambda message: status.update(f"benchmarking: {message}"),
                           baseline=baseline)
    _print_bench(report)
    if json_out:
        atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        png = plot or Path(tmp) / "bench.png"
        plot_bench(report, png)
        card = write_report(Package.open(package), report, png)
    console.print(f"model card: [bold]{card}[/]" + (f"; plot: [bold]{plot}[/]" if plot else ""))


def _print_bench(report: dict) -> None:
    m = report["machine"]
    table = Table(title=f"p50 latency, {m['threads']} threads; ceilings fp32 {m['fp32_matmul_gflops']} GFLOP/s, "
                        f"int8 {m['int8_matmul_gops']} GOP/s")
    # GFLOP/s: the model's work over the time; of ceiling: the graph's own work (a rewrite may skip some).
    for col in ("engine", "variant", "batch", "tokens", "p50 ms", "p99 ms", "items/s", "GFLOP/s", "of ceiling"):
        table.add_column(col)
    for r in report["results"]:
        table.add_row(r["engine"], r["variant"], str(r["batch_size"]), str(r["seq_len"]), f"{r['p50_ms']:.2f}",
                      f"{r['p99_ms']:.2f}", f"{r['items_per_s']:.0f}", f"{r['gflops']:.0f}",
                      f"{r['ceiling_fraction']:.0%}")
    stdout.print(table)
    stdout.print("speed-ups over PyTorch eager: " + ", ".join(f"{k} {v}×" for k, v in report["speedups"].items()))
    if report.get("dataset"):
        d = report["dataset"]
        stdout.print(f"validation set ({d['n']} texts): " + ", ".join(f"{k} {v}/s" for k, v in d["items_per_s"].items())
                     + f"; best vs seed {d['best_vs_seed']}×, {d['best_fraction_of_int8_limit']:.0%} of the int8 limit")
    for note in report.get("notes", []):
        console.print(f"note: {note}")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="Package folder or .onnx file.")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the whole report here as JSON.")] = None,
    batch: Annotated[int, typer.Option(help="Batch size for the compute figures.")] = 1,
    seq: Annotated[Optional[int], typer.Option(help="Tokens per row for the compute figures (default: max length).")] = None,
    variant: Annotated[Optional[str], typer.Option(help="Which graph of a package (default: fp32).")] = None,
) -> None:
    """Report what a model is: identity, inputs/outputs, ops, weights, MACs, and whether it checks and loads."""
    from onnxpack.core.package import atomic_write_text
    from onnxpack.inspection.inspect import summarize

    report = summarize(path, variant=variant, batch=batch, seq=seq)
    _print_inspect(report)
    if json_out:
        atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")


def _print_inspect(r: dict) -> None:
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


@app.command()
def graph(
    path: Annotated[Path, typer.Argument(help="Package folder or .onnx file.")],
    out: Annotated[Path, typer.Option("--out", help="The HTML page to write.")],
    png: Annotated[Optional[Path], typer.Option(help="Also write the overview as PNG here.")] = None,
    svg: Annotated[Optional[Path], typer.Option(help="Also write the overview as SVG here.")] = None,
    variant: Annotated[Optional[str], typer.Option(help="Which graph of a package (default: fp32).")] = None,
    expand: Annotated[bool, typer.Option(help="Draw every node in one view instead of collapsing repeated blocks.")] = False,
    max_nodes: Annotated[int, typer.Option(help="Refuse to lay out a view with more nodes than this.")] = 1500,
) -> None:
    """Draw the graph as one offline HTML page: pan, zoom, click for details, search, repeated blocks collapsed."""
    from onnxpack.core.onnxfile import load_model
    from onnxpack.core.package import atomic_write_bytes, atomic_write_text
    from onnxpack.inspection.graph import GraphConfig, render, to_png
    from onnxpack.inspection.inspect import resolve

    source = resolve(path, variant)
    config = GraphConfig(collapse=not expand, max_nodes=max_nodes)
    with console.status("laying out the graph"):
        drawing = render(load_model(source.path), source.title, config)
        image = to_png(drawing, config.timeout_s) if png else None
    # Everything is rendered before anything is written, so a failure leaves no partial output.
    atomic_write_text(out, drawing.html)
    if image:
        atomic_write_bytes(png, image)
    if svg:
        atomic_write_text(svg, drawing.svg)
    console.print(f"graph: [bold]{out}[/] ({drawing.nodes} nodes"
                  + (f", {drawing.blocks} blocks collapsed" if drawing.blocks else "") + ")")


@app.command()
def profile(
    package: Annotated[Path, typer.Argument(help="Package folder.")],
    out: Annotated[Path, typer.Option("--out", help="The HTML page to write: the graph coloured by latency.")],
    variant: Annotated[Optional[str], typer.Option(help="Which graph (default: fp32).")] = None,
    batch: Annotated[int, typer.Option(help="Rows per run.")] = 1,
    seq: Annotated[Optional[int], typer.Option(help="Tokens per row (default: the package's max length).")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs to average.")] = 20,
    threads: Annotated[Optional[int], typer.Option(help="ONNX Runtime intra-op threads.")] = None,
    provider: Annotated[Optional[str], typer.Option(help="ONNX Runtime execution provider.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every node's time here as JSON.")] = None,
    save_graph: Annotated[Optional[Path], typer.Option(help="Write the graph that ran (.onnx) here.")] = None,
) -> None:
    """Profile a package with ONNX Runtime; map kernel times onto the graph that ran and draw it by latency."""
    from onnxpack.core.package import atomic_write_bytes, atomic_write_text
    from onnxpack.inspection.profile import ProfileConfig, draw
    from onnxpack.inspection.profile import profile as run_profile

    config = ProfileConfig(variant=variant, batch=batch, seq=seq, runs=runs, threads=threads, provider=provider)
    with console.status("profiling"):
        result = run_profile(package, config)
        page = draw(result).html
    atomic_write_text(out, page)
    if json_out:
        atomic_write_text(json_out, json.dumps(result.to_dict(), indent=2) + "\n")
    if save_graph:
        atomic_write_bytes(save_graph, result.model.SerializeToString())
    stdout.print(result.graph, highlight=False, soft_wrap=True)
    stdout.print(f"batch {result.batch} × {result.seq} tokens: {result.run_ms:.2f} ms per run, kernels {result.kernel_ms:.2f} ms, "
                 f"{result.mapped_fraction:.1%} of kernel time mapped to nodes", highlight=False, soft_wrap=True)
    table = Table(title="slowest nodes")
    for col in ("node", "op", "ms", "share"):
        table.add_column(col)
    for n in result.nodes[:10]:
        table.add_row(n.name, n.op, f"{n.ms:.3f}", f"{n.share:.1%}")
    stdout.print(table)
    stdout.print("by op type: " + ", ".join(f"{o['op']} {o['share']:.0%}" for o in result.by_op[:8]), highlight=False,
                 soft_wrap=True)
    console.print(f"profile: [bold]{out}[/]")


@app.command()
def view(
    path: Annotated[Path, typer.Argument(help="Package folder or .onnx file.")],
    variant: Annotated[Optional[str], typer.Option(help="Which graph of a package (default: fp32).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port on 127.0.0.1 (default: a free one).")] = None,
    browse: Annotated[bool, typer.Option(help="Open a web browser.")] = True,
) -> None:
    """Open the model in Netron (pip install 'onnxpack[netron]'), served on 127.0.0.1 only."""
    from onnxpack.inspection.view import view as netron_view
    from onnxpack.inspection.view import wait

    url = netron_view(path, variant=variant, port=port, browse=browse)
    console.print(f"Netron is showing {path} at [bold]{url}[/] (Ctrl-C stops it)")
    wait()


@app.command()
def providers(json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """List ONNX Runtime's execution providers: all it knows, and those available here."""
    from onnxpack.runtime.predictor import all_providers, available_providers

    known, available = all_providers(), available_providers()
    if json_out:
        stdout.print(json.dumps({"all": known, "available": available}), markup=False, highlight=False)
        return
    table = Table(title="ONNX Runtime execution providers")
    table.add_column("provider")
    table.add_column("available")
    for name in known:
        table.add_row(name, "yes" if name in available else "")
    stdout.print(table)


# The demo's training limit: with loading, export and a 1043-row verify it finishes in under
# 5 minutes on 2 busy cores (measured: docs/performance.md, "The demo").
DEMO_TRAIN_MINUTES = 2.0


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the run and the package.")] = Path("onnxpack-demo"),
    data: Annotated[Optional[str], typer.Option(help=f"CoLA folder; {DATA_DEFAULT}.")] = None,
    full: Annotated[bool, typer.Option(help="Train with the full default settings (the quality bar, ~15 min).")] = False,
) -> None:
    """Train -> export -> verify -> predict on the built-in defaults, then print a summary.

    Replaces OUT/run and OUT/package from an earlier demo, so the command can be rerun as is.
    """
    import time

    from onnxpack.build.export import export as export_package
    from onnxpack.build.train import TrainConfig, fit
    from onnxpack.build.verify import verify as verify_package
    from onnxpack.runtime.predictor import Predictor

    _quiet_lightning()
    started = time.perf_counter()
    if full:
        config = TrainConfig(data=data)
        console.rule("1/4 train (the full default training)")
    else:
        # Bounded by time, not steps, so the demo fits its promise on a slow or busy machine too.
        config = TrainConfig(data=data, epochs=1, val_checks_per_epoch=1, max_minutes=DEMO_TRAIN_MINUTES)
        console.rule(f"1/4 train (one epoch, at most {DEMO_TRAIN_MINUTES:g} min; --full for the full training)")
    result = fit(config, out / "run", force=True)
    _print_metrics(result.metrics)
    m = result.metrics
    if m["steps"] < m["planned_steps"]:
        console.print(f"stopped by the time limit after {m['steps']} of {m['planned_steps']} steps")
    console.rule("2/4 export")
    package = export_package(result.checkpoint, out / "package", force=True)
    console.rule("3/4 verify")
    report = verify_package(package.root, data)
    _print_parity(report)
    console.rule("4/4 predict")
    examples = ["The boy is sitting on a bench.", "The book was by john written.", "Him saw she yesterday."]
    with Predictor(package.root) as predictor:
        for r in predictor.predict(examples):
            console.print(f"  {r['label']:>12} {r['score']:.3f}  {r['text']}")
    console.print(f"\nMCC torch {report.torch['mcc']:.4f} / onnx {report.onnx['mcc']:.4f}, "
                  f"max |diff| {report.max_abs_diff:.1e}, agreement {report.agreement:.4f} on {report.n} rows; "
                  f"trained {m['steps']} steps in {m['train_seconds']:.0f} s, demo {time.perf_counter() - started:.0f} s")
    console.print(f"package: [bold]{package.root}[/]  try: onnxpack predict {package.root} \"Some sentence.\"")


def main() -> None:
    app()
