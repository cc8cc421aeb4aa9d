"""The ship panel: optimize, bench, check, export-web, export-mobile, export-serving and thresholds: make
a package faster, measure it, check where it loads, and write it for browsers, phones and servers. The
runtime side only, but for bench's PyTorch rows."""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from onnxpack.core import cpu
from onnxpack.core.config import (
    BenchConfig,
    CheckConfig,
    ExportMobileConfig,
    ExportWebConfig,
    OptimizeConfig,
    ServingConfig,
)
from onnxpack.core.errors import OnnxpackError

from .app import (
    SHIP,
    CommaList,
    app,
    config_from,
    console,
    option,
    per_label,
    quiet_lightning,
    stdout,
)

if TYPE_CHECKING:
    from onnxpack.core.package import Package
    from onnxpack.runtime.optimize import GateResult


@app.command(rich_help_panel=SHIP)
def optimize(
    package: Path = typer.Argument(..., help="Package folder; variants are added to it."),
    data: Optional[str] = option(OptimizeConfig, "data"),
    max_mcc_drop: float = option(OptimizeConfig, "max_mcc_drop"),
    min_agreement: float = option(OptimizeConfig, "min_agreement"),
    per_channel: bool = option(OptimizeConfig, "per_channel"),
    variants: str = option(OptimizeConfig, "variants"),
    calibration_rows: int = option(OptimizeConfig, "calibration_rows"),
    cascade_agreement: float = option(OptimizeConfig, "cascade_agreement"),
    cascade_tau: Optional[float] = option(OptimizeConfig, "cascade_tau"),
    cascade_fit_rows: int = option(OptimizeConfig, "cascade_fit_rows"),
    provider: Optional[str] = option(OptimizeConfig, "provider"),
    batch_size: int = option(OptimizeConfig, "batch_size"),
) -> None:
    """Add faster variants to a package, each accepted only if its validation MCC holds."""
    from onnxpack.core.package import Package
    from onnxpack.runtime.optimize import optimize as optimize_package
    from onnxpack.runtime.predictor import serving_variant

    config = config_from(OptimizeConfig, locals())
    with console.status("optimizing") as status:
        results = optimize_package(package, config, progress=lambda message: status.update(message))
    optimized = Package.open(package)
    print_variants(results, optimized)
    stdout.print(f"default variant: [bold]{optimized.default_variant()}[/] (the fastest accepted); "
                 f"serve's: [bold]{serving_variant(optimized, provider)}[/] (the fastest whose answers do not "
                 "depend on the batch)")


def print_variants(results: list[GateResult], package: Package) -> None:
    from onnxpack.core.metrics import METRIC_NAMES, task_metric

    metric = task_metric(package.manifest.problem_type == "multi_label_classification")
    table = Table(title=f"variants of {package.root} on {results[0].figures['n']} validation rows")
    for col in ("variant", "status", METRIC_NAMES[metric], "drop", "agreement", "max |diff|", "batch drift", "rows/s"):
        table.add_column(col)
    for r in results:
        f = r.figures
        status_text = "[green]accepted[/]" if r.accepted else f"[red]{'skipped' if not f else 'rejected'}[/]"
        table.add_row(r.variant, status_text,
                      *(f"{f[k]:.4f}" if k in f else "" for k in (metric, f"{metric}_drop", "agreement")),
                      *(f"{f[k]:.1e}" if k in f else "" for k in ("max_abs_diff", "batch_drift")),
                      f"{f['items_per_s']:.0f}" if f else "")
    stdout.print(table)
    for r in results:
        if r.reason:
            stdout.print(f"{r.variant}: {r.reason}")


@app.command(rich_help_panel=SHIP)
def bench(
    package: Path = typer.Argument(..., help="Package folder."),
    batch_sizes: str = option(BenchConfig, "batch_sizes"),
    seq_lens: str = option(BenchConfig, "seq_lens"),
    threads: int = option(BenchConfig, "threads"),
    variants: Optional[str] = option(BenchConfig, "variants"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results here as JSON."),
    plot: Optional[Path] = typer.Option(None, help="Write the plot here (PNG)."),
    data: Optional[str] = option(BenchConfig, "data"),
    checkpoint: Optional[str] = option(BenchConfig, "checkpoint"),
    torch: bool = option(BenchConfig, "torch", "--torch/--no-torch"),
    compile: bool = option(BenchConfig, "compile", "--compile/--no-compile"),
    rounds: int = option(BenchConfig, "rounds"),
) -> None:
    """Time PyTorch and every ONNX Runtime variant side by side; writes report.html into the package."""
    from onnxpack.core.atomic import atomic_write_text
    from onnxpack.core.package import Package
    from onnxpack.inspection.report import write_report
    from onnxpack.runtime.bench import bench as run_bench
    from onnxpack.runtime.bench import plot as plot_bench

    config = config_from(BenchConfig, locals())
    drawable = importlib.util.find_spec("matplotlib") is not None
    if plot and not drawable:
        raise OnnxpackError("--plot needs matplotlib, which is not installed", hint="pip install 'onnxpack[plot]'")
    baseline = None
    if config.torch:
        try:  # the PyTorch rows need the torch side; without it, bench notes why they are missing
            from onnxpack.pytorch.bench import torch_engines as baseline
        except ImportError:
            pass
        quiet_lightning()
    with console.status("benchmarking") as status:
        report = run_bench(package, config, progress=lambda message: status.update(f"benchmarking: {message}"),
                           baseline=baseline)
    print_bench(report)
    if json_out:
        atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")
    if not drawable:
        console.print("note: the model card has no plot: pip install 'onnxpack\\[plot]' to draw one")
    with tempfile.TemporaryDirectory() as tmp:
        png = (plot or Path(tmp) / "bench.png") if drawable else None
        if png:
            plot_bench(report, png)
        card = write_report(Package.open(package), report, png)
    stdout.print(f"model card: [bold]{card}[/]" + (f"; plot: [bold]{plot}[/]" if plot else ""))


def print_bench(report: dict[str, Any]) -> None:
    m = report["machine"]
    stdout.print(cpu.summary(m["cpu"]), markup=False, highlight=False, soft_wrap=True)
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


@app.command(rich_help_panel=SHIP)
def check(
    package: Path = typer.Argument(..., help="Package folder."),
    target: Optional[str] = option(CheckConfig, "target"),
    data: Optional[str] = option(CheckConfig, "data"),
    rows: int = option(CheckConfig, "rows"),
    runtime: Optional[str] = option(CheckConfig, "runtime"),
    install_node_runtime: bool = typer.Option(False, "--install-node-runtime",
                                              help="First npm-install onnxruntime-node into onnxpack's cache again (the "
                                                   "first check that needs it installs it)."),
) -> None:
    """Will the package load where it is shipped? Its IR version and opsets against the target's, per
    variant; then, per runtime (onnxruntime-node, onnxruntime-web in Chromium, the ORT format), whether each
    variant loads, its logits against Python's, its labels and its time per row."""
    import onnxruntime

    from onnxpack.core.package import Package
    from onnxpack.deploy import compat, node_runtime, runtimes

    config = config_from(CheckConfig, locals())
    config.validate()
    names = runtimes.parse(config.runtime)
    opened = Package.open(package)
    target_runtime = compat.parse_target(config.target or f"onnxruntime=={onnxruntime.__version__}")
    findings = compat.check(opened, target_runtime)
    table = Table(title=f"{opened.name} against {target_runtime}")
    for col in ("variant", "file", "IR", "opsets", "loads"):
        table.add_column(col)
    for f in findings:
        table.add_row(f.variant, f.file, str(f.ir), ", ".join(f"{d} {v}" for d, v in f.opsets.items()),
                      "[green]yes[/]" if f.ok else f"[red]no[/]: {'; '.join(f.problems)}")
    stdout.print(table)
    for f in findings:
        for warning in f.warnings:
            console.print(f"[yellow]warning[/] {f.variant}: {warning}")
    for warning, variants in _int8_path_mismatches(opened).items():  # soft_wrap: one line in a log, however long
        console.print(f"[yellow]warning[/] {', '.join(variants)}: {escape(warning)}", soft_wrap=True)
    if install_node_runtime:
        console.print(f"installed {node_runtime.PACKAGE} into {node_runtime.install()}")
    skipped = {name: why for name in names if (why := runtimes.not_for(name, opened))}
    for name, why in skipped.items():
        console.print(f"runtime {name} does not apply: {escape(why)}", soft_wrap=True)
    missing = {name: reason for name in names if name not in skipped and (reason := runtimes.missing(name))}
    for name, reason in missing.items():
        console.print(f"[yellow]runtime {name} not run[/]: {escape(reason)}", soft_wrap=True)
    ran = [name for name in names if name not in missing and name not in skipped]
    loadable = [f.variant for f in findings if f.ok]
    problems = _other_runtimes(opened, loadable, ran, config) if ran and loadable else []
    if missing and os.environ.get("CI", "").lower() == "true":
        console.print(f"[red]error[/]: CI=true and {', '.join(missing)} could not run here")
        raise typer.Exit(1)
    if not all(f.ok for f in findings) or problems:
        raise typer.Exit(1)


def _int8_path_mismatches(package: Package) -> dict[str, list[str]]:
    """Warning -> the variants whose gate figures name another int8 path than this CPU's: a package
    optimized on one machine gives one line, not one per variant."""
    grouped: dict[str, list[str]] = {}
    for name, figures in package.manifest.variants.items():
        warning = cpu.int8_path_mismatch(figures.get("cpu"))
        if warning:
            grouped.setdefault(warning, []).append(name)
    return grouped


def _other_runtimes(package: Package, variants: list[str], names: list[str], config: CheckConfig) -> list[str]:
    """Each variant in each runtime against Python's ONNX Runtime, on validation rows, as one table; the
    problems (a variant a runtime does not load, or labels it gives otherwise). Logits further apart than
    1e-4 with the same labels are a warning: int8 kernels for another instruction set (WebAssembly's)
    round some activations to the neighbouring step."""
    import onnxruntime

    from onnxpack.deploy import runtimes, web

    texts = runtimes.sample_texts(package, config.data, config.rows)
    python_ms = {variant: runtimes.python_ms_per_row(package, variant, texts) for variant in variants}
    table = Table(title=f"{package.name} in other runtimes, against Python onnxruntime {onnxruntime.__version__} on "
                        f"{len(texts)} validation rows")
    for col in ("runtime", "variant", "loads", "max |Δlogit|", "same label", "ms/row", "Python ms/row"):
        table.add_column(col, justify="right" if col[0] in "msP" else "left", overflow="fold")
    problems = []
    for name in names:
        runtimes.prepare(name, lambda message: console.print(message))
        for variant in variants:
            with console.status(f"{variant} in {name}"):
                result = runtimes.compare(name, package, variant, texts)
            if result.error:
                problems.append(f"{name} {variant}: {result.error}")
                table.add_row(name, variant, f"[red]no[/]: {escape(result.error[:200])}", "", "", "",
                              f"{python_ms[variant]:.2f}")
                continue
            if result.agreement < 1:
                problems.append(f"{name} {variant}: {result.agreement:.1%} the same labels (max |diff| "
                                f"{result.max_abs_diff:.1e})")
            elif result.max_abs_diff > web.TOLERANCE:  # int8 kernels of another instruction set round otherwise
                console.print(f"[yellow]warning[/] {name} {variant}: logits up to {result.max_abs_diff:.1e} from "
                              "Python's, the same labels", soft_wrap=True)
            table.add_row(name, variant, "yes", f"{result.max_abs_diff:.1e}", f"{result.agreement:.1%}",
                          f"{result.ms_per_row:.2f}", f"{python_ms[variant]:.2f}")
    stdout.print(table)
    for problem in problems:
        console.print(f"[red]problem[/] {escape(problem)}", soft_wrap=True)
    return problems


@app.command("export-web", rich_help_panel=SHIP)
def export_web(
    package: Path = typer.Argument(..., help="Package folder."),
    out: Path = typer.Option(..., "--out", help="The static folder to write (new)."),
    variant: Optional[str] = option(ExportWebConfig, "variant"),
    data: Optional[str] = option(ExportWebConfig, "data"),
    rows: int = option(ExportWebConfig, "rows"),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """A static folder that classifies in the browser with no server: the page, the model, the tokenizer
    and onnxruntime-web (WebAssembly), vendored from npm at build time. Put it on any static host."""
    from onnxpack.core.package import Package
    from onnxpack.deploy import runtimes, web

    config = config_from(ExportWebConfig, locals())
    config.validate()
    opened = Package.open(package)
    texts = runtimes.sample_texts(opened, config.data, config.rows)
    with console.status("export-web") as status:
        result = web.export_web(opened, out, texts, variant=config.variant, force=force,
                                on_step=lambda message: status.update(message))
    table = Table(title=f"{opened.name} in onnxruntime-web {web.versions()[web.ORT_WEB]} (WebAssembly, 1 thread, "
                        f"in Node) on {len(texts)} validation rows")
    for col in ("variant", "loads", "ms/row", "max |Δlogit| vs Python", "same label", ""):
        table.add_column(col, overflow="fold")
    for t in result.trials:
        loads = "[green]yes[/]" if t.error is None else f"[red]no[/]: {escape(t.error[:160])}"
        table.add_row(t.variant, loads, "" if t.ms_per_row is None else f"{t.ms_per_row:.1f}",
                      "" if t.max_abs_diff is None else f"{t.max_abs_diff:.1e}",
                      "" if t.agreement is None else f"{t.agreement:.1%}", "chosen" if t.variant == result.variant else "")
    stdout.print(table)
    model = result.sizes[web.MODEL]
    runtime = sum(size for name, size in result.sizes.items() if name.startswith("vendor/"))
    stdout.print(f"wrote {out}: carries {result.variant}, {result.why}")
    stdout.print(f"size {result.bytes / 1e6:.1f} MB ({result.gzip_bytes / 1e6:.1f} MB gzipped, as a static host "
                 f"sends it): model {model / 1e6:.1f} MB, onnxruntime-web {runtime / 1e6:.1f} MB, the rest "
                 f"{(result.bytes - model - runtime) / 1e6:.1f} MB")
    stdout.print(f"try it: python -m http.server --directory {out} --bind 127.0.0.1 8080, then open "
                 "http://127.0.0.1:8080/")


@app.command("export-mobile", rich_help_panel=SHIP)
def export_mobile(
    package: Path = typer.Argument(..., help="Package folder."),
    out: Path = typer.Option(..., "--out", help="The ORT-format package to write (new)."),
    variant: Optional[str] = option(ExportMobileConfig, "variant"),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """A package in ONNX Runtime's mobile format: model.ort and the required-operators config a reduced
    ONNX Runtime build is made from. `onnxpack predict OUT` runs it."""
    from onnxpack.core.package import Package
    from onnxpack.deploy import mobile

    config = config_from(ExportMobileConfig, locals())
    opened = Package.open(package)
    with console.status("converting to the ORT format"):
        written = mobile.export_mobile(opened, out, variant=config.variant, force=force)
    graph = written.manifest.graph_format
    model = written.variant_path()
    lines = (written.root / graph["operators_config"]).read_text(encoding="utf-8").splitlines()
    operators = [op for line in lines if line.count(";") == 2 for op in line.split(";")[2].split(",")]  # domain;opset;ops
    stdout.print(f"wrote {out}: {model.name} ({model.stat().st_size / 1e6:.1f} MB, ORT format "
                 f"v{graph['ort_format_version']}) from {graph['source_variant']}, converted by {graph['converted_by']}")
    stdout.print(f"{graph['operators_config']}: the {len(operators)} operators a reduced ONNX Runtime build needs "
                 f"for it; self-check on {graph['parity']['rows']} texts: max |diff| "
                 f"{graph['parity']['max_abs_diff']:.1e} from the .onnx")
    stdout.print(f"predict with: onnxpack predict {out} \"the text\"")


@app.command("export-serving", rich_help_panel=SHIP)
def export_serving(
    package: Path = typer.Argument(..., help="Package folder."),
    triton: Path = typer.Option(..., "--triton", help="Triton model repository folder to write (new, empty, or this "
                                                      "package's own)."),
    kserve: Optional[Path] = typer.Option(None, "--kserve", help="Also write a KServe InferenceService YAML here."),
    storage_uri: Optional[str] = typer.Option(None, help="--kserve: where the cluster finds the repository (default: "
                                                         "pvc://onnxpack-models/<TRITON's name>)."),
    max_batch: int = option(ServingConfig, "max_batch"),
    instances: int = option(ServingConfig, "instances"),
    variant: Optional[str] = option(ServingConfig, "variant"),
    gpu: bool = option(ServingConfig, "gpu", "--gpu"),
    target: Optional[str] = option(ServingConfig, "target"),
    pad_to: Optional[int] = option(ServingConfig, "pad_to"),
    model_backend: str = option(ServingConfig, "model_backend"),
    max_queue_delay_us: int = option(ServingConfig, "max_queue_delay_us"),
) -> None:
    """Write a Triton model repository that takes raw text (tokenizer, model and labels as one ensemble)."""
    from onnxpack.deploy import kserve as kserve_doc
    from onnxpack.deploy.triton import write_repository

    if kserve:
        kserve_doc.check_path(kserve)
    written = write_repository(package, triton, config_from(ServingConfig, locals()))
    names = written["models"]
    stdout.print(f"Triton repository [bold]{written['repository']}[/]: {names['ensemble']} (text in; logits, "
                 f"label, score out) = {names['tokenizer']} -> {names['model']} ({written['variant']}) -> "
                 f"{names['postprocess']}; padded to {written['pad_to']} tokens; checked against {written['target']}")
    if kserve:
        uri = storage_uri or f"pvc://onnxpack-models/{Path(written['repository']).name}"
        kserve_doc.write(kserve, kserve_doc.inference_service(names["model"], uri, written["triton_version"], gpu))
        stdout.print(f"KServe InferenceService [bold]{kserve}[/] (storageUri {uri})")


@app.command(rich_help_panel=SHIP)
def thresholds(
    package: Path = typer.Argument(..., help="Package folder of a multi-label model."),
    values: str = typer.Argument(..., parser=CommaList("VALUES", float),
                                 help="One threshold for every label, or one per label, comma-separated."),
) -> None:
    """Store a multi-label package's per-label thresholds in its manifest."""
    from onnxpack.runtime.predictor import Predictor

    with Predictor(package) as predictor:
        predictor.set_thresholds(per_label(values, len(predictor.labels)))  # checks count and range
        predictor.package.update_manifest(thresholds=predictor.thresholds)
        stdout.print(", ".join(f"{label} {t:g}" for label, t in zip(predictor.labels, predictor.thresholds)))


mlflow_app = typer.Typer(no_args_is_help=True, help="Log a package to MLflow as a pyfunc model (onnxpack\\[mlflow]).")
app.add_typer(mlflow_app, name="mlflow", rich_help_panel=SHIP)


@mlflow_app.command("log")
def mlflow_log(
    package: Path = typer.Argument(..., help="Package folder."),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow tracking store: http(s)://server, file:///folder or sqlite:///file.db "
                                     "(default: $MLFLOW_TRACKING_URI, then a file store in ./mlruns)."),
    register: Optional[str] = typer.Option(None, "--register", metavar="NAME",
                                           help="Also register the model as a new version of NAME."),
    experiment: str = typer.Option("onnxpack", "--experiment", help="The experiment the run goes into (created "
                                                                    "if missing)."),
    requirement: Optional[str] = typer.Option(
        None, "--requirement", help="What the model's environment installs for onnxpack, as a pip requirement: a "
                                    "version, a wheel or a URL (default: onnxpack\\[mlflow]==this version)."),
) -> None:
    """Log PACKAGE as an MLflow model: a pyfunc flavor that answers as `onnxpack predict` does (a DataFrame
    with a text column in; label, score, scores out), the package's files as its artifacts, checked on
    load, and the manifest's gate and parity figures as run metrics. Prints the model's URIs."""
    require_mlflow_extra()
    import logging

    from onnxpack.deploy.mlflow import is_file_store, log_package

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (registered, created version) repeat ours
    logged = log_package(package, tracking_uri=tracking_uri, register=register, experiment=experiment,
                         requirement=requirement)
    out = {"markup": False, "highlight": False, "soft_wrap": True}
    if logged.files_uri.startswith("file:"):  # first: loads as it is, where a file store's runs:/ needs an opt-in
        stdout.print(f"files: {logged.files_uri}", **out)
    stdout.print(f"model: {logged.model_uri}", **out)
    if logged.registered_uri:
        stdout.print(f"registered: {logged.registered_uri}", **out)
    stdout.print(f"run {logged.run_id} of experiment {experiment!r}, {len(logged.metrics)} metrics, in "
                 f"{logged.tracking_uri}", **out)
    if is_file_store(logged.tracking_uri):
        console.print("note: MLflow 3 opens a file store only with MLFLOW_ALLOW_FILE_STORE=true set; load the "
                      "files: URI above, or set it to load runs:/ and models:/ URIs", markup=False, highlight=False,
                      soft_wrap=True)


def require_mlflow_extra() -> None:
    """`onnxpack mlflow` needs onnxpack[mlflow]; without it, one line naming it, before any work."""
    missing = [m for m in ("mlflow", "pandas") if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxpackError(f"`onnxpack mlflow` needs MLflow, which is not installed ({', '.join(missing)} missing)",
                            hint="pip install 'onnxpack[mlflow]'")
