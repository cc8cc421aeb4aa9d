"""The build panel: train, export, verify and demo. The torch side, so each command first checks
that onnxpack[train] is installed and says so in one line when it is not."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from click.core import ParameterSource
from rich.table import Table

from onnxpack.core.config import DATA_DEFAULT, ExportConfig, TrainConfig, VerifyConfig
from onnxpack.core.errors import OnnxpackError

from .app import (
    BUILD,
    app,
    config_from,
    console,
    option,
    quiet_lightning,
    require_train_extra,
    stdout,
)

if TYPE_CHECKING:
    from onnxpack.pytorch.verify import ParityReport


def _train_limit(value: Any) -> float | int:
    """Lightning's convention: a whole number counts batches, a decimal is a fraction of the epoch."""
    if not isinstance(value, str):
        return value
    try:
        return float(value) if "." in value else int(value)
    except ValueError:
        raise OnnxpackError(f"--limit-train-batches takes a number of batches (60) or a fraction (0.25), "
                            f"got {value!r}") from None


@app.command(rich_help_panel=BUILD)
def train(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Run folder to create (best.ckpt, hf/, metrics.json)."),
    data: Optional[str] = option(TrainConfig, "data"),
    model: str = option(TrainConfig, "model"),
    epochs: int = option(TrainConfig, "epochs"),
    batch_size: int = option(TrainConfig, "batch_size"),
    lr: float = option(TrainConfig, "lr"),
    max_length: int = option(TrainConfig, "max_length"),
    seed: int = option(TrainConfig, "seed"),
    limit_train_batches: float = option(TrainConfig, "limit_train_batches", parser=_train_limit),
    max_minutes: Optional[float] = option(TrainConfig, "max_minutes"),
    labels: Optional[str] = option(TrainConfig, "labels"),
    text_columns: Optional[str] = option(TrainConfig, "text_columns"),
    multi_label: bool = option(TrainConfig, "multi_label", "--multi-label"),
    trust_remote_code: bool = option(TrainConfig, "trust_remote_code", "--trust-remote-code"),
    logger: str = option(TrainConfig, "logger"),
    config: Optional[Path] = typer.Option(None, help="YAML file of training settings; flags given override it."),
    force: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Fine-tune a classifier with Lightning; keeps the best checkpoint by validation loss."""
    require_train_extra("train")
    from onnxpack.pytorch.train import fit, read_config

    quiet_lightning()
    values = dict(data=data, model=model, epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length,
                  seed=seed, limit_train_batches=limit_train_batches, max_minutes=max_minutes, labels=labels,
                  text_columns=text_columns, multi_label=multi_label, trust_remote_code=trust_remote_code,
                  logger=logger)
    if config:  # the file, then only the flags given on the command line
        given = {k: v for k, v in values.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
        train_config = read_config(config, **given)
    else:
        train_config = config_from(TrainConfig, values)
    result = fit(train_config, out, force=force)
    print_metrics(result.metrics)
    stdout.print(f"checkpoint: [bold]{result.checkpoint}[/]")
    if result.mlflow_run:
        stdout.print(f"MLflow run: {result.mlflow_run} in {result.tracking_uri}", markup=False, highlight=False,
                     soft_wrap=True)


def print_metrics(metrics: dict[str, float]) -> None:
    table = Table(title="best checkpoint (validation)")
    keys = ("val_mcc", "val_acc", "val_f1", "val_loss", "best_epoch", "steps", "train_seconds")
    for key in keys:
        table.add_column(key)
    table.add_row(*(f"{metrics.get(k):.4f}" if isinstance(metrics.get(k), float) and k.startswith("val_")
                    else str(metrics.get(k)) for k in keys))
    stdout.print(table)


@app.command(rich_help_panel=BUILD)
def export(
    checkpoint: Path = typer.Argument(..., help="best.ckpt from `train`, or a Hugging Face model folder."),
    out: Path = typer.Option(..., "--out", help="Package folder to create."),
    opset: int = option(ExportConfig, "opset"),
    exporter: str = option(ExportConfig, "exporter"),
    name: Optional[str] = option(ExportConfig, "name"),
    max_length: Optional[int] = option(ExportConfig, "max_length"),
    pairs: Optional[bool] = option(ExportConfig, "pairs", "--pairs/--single-texts"),
    target: Optional[str] = option(ExportConfig, "target"),
    trust_remote_code: bool = option(ExportConfig, "trust_remote_code", "--trust-remote-code"),
    force: bool = typer.Option(False, help="Replace OUT if it exists."),
) -> None:
    """Export to ONNX, check against PyTorch on batches of 1, 3 and 17, write the package."""
    require_train_extra("export")
    from onnxpack.pytorch.export import export as export_package

    config = config_from(ExportConfig, locals())
    package = export_package(checkpoint, out, config, force=force)
    m = package.manifest
    stdout.print(f"package: [bold]{package.root}[/] (opset {m.opset}, {m.exporter}, labels {m.labels}, "
                 f"self-check max |diff| {m.parity['max_abs_diff']:.1e})")


@app.command(rich_help_panel=BUILD)
def verify(
    package: Path = typer.Argument(..., help="Package folder."),
    data: Optional[str] = typer.Option(None, help=f"Folder with the validation files; {DATA_DEFAULT}."),
    checkpoint: Optional[Path] = typer.Option(None, help="Source checkpoint (default: the one in the manifest)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report here as JSON."),
    atol: float = option(VerifyConfig, "atol"),
    min_agreement: float = option(VerifyConfig, "min_agreement"),
    provider: Optional[str] = option(VerifyConfig, "provider"),
    batch_size: int = option(VerifyConfig, "batch_size"),
    localize: bool = option(VerifyConfig, "localize", "--localize"),
) -> None:
    """Run PyTorch and ONNX Runtime on every validation row and compare."""
    require_train_extra("verify")
    from rich.progress import Progress

    from onnxpack.core.errors import ParityError
    from onnxpack.pytorch.verify import verify as verify_package

    config = config_from(VerifyConfig, locals())
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("verifying", total=None)
        try:
            report = verify_package(package, data, checkpoint, config, json_out,
                                    progress=lambda n: progress.advance(task, n))
        except ParityError as e:
            if e.report is not None:
                print_parity(e.report)
            raise
    print_parity(report)


def print_parity(report: ParityReport) -> None:
    table = Table(title=f"parity on {report.n} validation rows ({report.provider})")
    for col in ("max_abs_diff", "max_rel_diff", "agreement", "torch mcc", "onnx mcc", "torch acc", "onnx acc"):
        table.add_column(col)
    table.add_row(f"{report.max_abs_diff:.2e}", f"{report.max_rel_diff:.2e}", f"{report.agreement:.4f}",
                  f"{report.torch['mcc']:.4f}", f"{report.onnx['mcc']:.4f}", f"{report.torch['acc']:.4f}",
                  f"{report.onnx['acc']:.4f}")
    stdout.print(table)
    if report.localization and report.passed:
        stdout.print(f"localize: {report.localization['summary']}")
    stdout.print("[green]passed[/]" if report.passed else f"[red]failed[/]: {'; '.join(report.failures)}")


# The demo's training limit: with loading, export and a 1043-row verify it finishes in under
# 5 minutes on 2 busy cores (measured: docs/performance.md, "The demo").
DEMO_TRAIN_MINUTES = 2.0
DEMO_TEXTS = ["The boy is sitting on a bench.", "The book was by john written.", "Him saw she yesterday."]


@app.command(rich_help_panel=BUILD)
def demo(
    out: Path = typer.Option(Path("onnxpack-demo"), "--out", help="Folder for the run and the package."),
    data: Optional[str] = typer.Option(None, help=f"CoLA folder; {DATA_DEFAULT}."),
    full: bool = typer.Option(False, help="Train with the full default settings (the quality bar, ~15 min)."),
) -> None:
    """Train -> export -> verify -> predict on the built-in defaults, then print a summary.

    Replaces OUT/run and OUT/package from an earlier demo, so the command can be rerun as is.
    """
    require_train_extra("demo")
    from onnxpack.pytorch.export import export as export_package
    from onnxpack.pytorch.train import fit
    from onnxpack.pytorch.verify import verify as verify_package
    from onnxpack.runtime.predictor import Predictor

    quiet_lightning()
    started = time.perf_counter()
    if full:
        config = TrainConfig(data=data)
        console.rule("1/4 train (the full default training)")
    else:
        # Bounded by time, not steps, so the demo fits its promise on a slow or busy machine too.
        config = TrainConfig(data=data, epochs=1, val_checks_per_epoch=1, max_minutes=DEMO_TRAIN_MINUTES)
        console.rule(f"1/4 train (one epoch, at most {DEMO_TRAIN_MINUTES:g} min; --full for the full training)")
    result = fit(config, out / "run", force=True)
    print_metrics(result.metrics)
    m = result.metrics
    if m["steps"] < m["planned_steps"]:
        console.print(f"stopped by the time limit after {m['steps']} of {m['planned_steps']} steps")
    console.rule("2/4 export")
    package = export_package(result.checkpoint, out / "package", force=True)
    console.rule("3/4 verify")
    report = verify_package(package.root, data)
    print_parity(report)
    console.rule("4/4 predict")
    with Predictor(package.root) as predictor:
        for r in predictor.predict(DEMO_TEXTS):
            stdout.print(f"  {r['label']:>12} {r['score']:.3f}  {r['text']}")
    stdout.print(f"\nMCC torch {report.torch['mcc']:.4f} / onnx {report.onnx['mcc']:.4f}, "
                 f"max |diff| {report.max_abs_diff:.1e}, agreement {report.agreement:.4f} on {report.n} rows; "
                 f"trained {m['steps']} steps in {m['train_seconds']:.0f} s, demo {time.perf_counter() - started:.0f} s")
    stdout.print(f"package: [bold]{package.root}[/]  try: onnxpack predict {package.root} \"Some sentence.\"")

