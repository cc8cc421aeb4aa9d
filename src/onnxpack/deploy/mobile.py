"""`export-mobile`: a package whose graph is in ONNX Runtime's ORT format (model.ort), the format of
ONNX Runtime's mobile and other reduced builds, with the operators config such a build is made from.

    source variant (.onnx) --convert_onnx_models_to_ort--> model.ort + required_operators.config
    + the source's tokenizer files + manifest.json (graph_format says what was converted, how, by what)

The conversion is ONNX Runtime's own tool, `python -m onnxruntime.tools.convert_onnx_models_to_ort`,
run in a subprocess on a copy of the variant in a scratch folder inside the new package's temp folder,
so a failure leaves nothing behind and the target is put in place by one rename (AtomicDir). The
options, and why:

- optimization style Fixed (not Runtime): the graph optimizations are applied and baked into the file,
  so a minimal build, which has no optimizers, runs the optimized graph. Runtime style saves some
  optimizations to be replayed at load, which happens only with `session.enable_saved_runtime_optimizations`
  set ("for trusted models only", the tool warns) and is meant for NNAPI/CoreML partitioning; the
  `.with_runtime_opt.ort` it writes is therefore not made.
- level "all" (the tool's default, pinned through ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL so
  a value in the user's environment does not change the file): the fusions ONNX Runtime itself applies
  when it loads the .onnx, so the .ort computes what the source does (measured: logits equal to the last
  bit on the MiniLM package's 1043 CoLA rows, fp32, optimized and int8-cascade; docs/deploy.md).
- target platform "arm": phones are ARM. It leaves out the NCHWc layout transformer (x86 only; the tool
  drops it for any target but amd64) and sets `session.qdqisint8allowed` as ONNX Runtime does on ARM.
- no type reduction: the config lists operators only, so a build made from it runs the graph with any
  of each operator's types.

The subprocess marks torch as absent (`sys.modules["torch"] = None`): `onnxruntime.tools/__init__`
imports torch for its PyTorch export helpers wherever torch is installed, and the converter never uses
it; this saves about 1.3 s per conversion and lets it run where torch is not installed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxpack.core import ortformat, untrusted
from onnxpack.core.atomic import AtomicDir
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import (
    MODEL,
    ORT_MODEL,
    REPORT,
    Package,
    graph_files,
    hash_files,
    now,
    sha256_file,
    write_manifest,
)
from onnxpack.runtime.feed import Text
from onnxpack.runtime.predictor import Predictor

from .comparison import Comparison

OPERATORS_CONFIG = "required_operators.config"  # the name the tool gives it for a folder of models
OPTIMIZATION = {"style": "Fixed", "level": "all", "target_platform": "arm"}
CONVERT_TIMEOUT_S = 1800
PARITY_ATOL = 1e-4  # export-mobile refuses an .ort whose logits move further than this from its source's
# What export-mobile runs both graphs on before it writes anything: short and long, plain and odd.
SELF_CHECK_TEXTS = (
    "The book was written by John.",
    "him saw she",
    "What did you wonder whether Mary bought?",
    "The more you read, the more you know, and the more you know, the further you go in the world of words.",
    "Colorless green ideas sleep furiously.",
    "x",
)
_RUN_CONVERTER = ("import runpy, sys; sys.modules['torch'] = None; "
                  "runpy.run_module('onnxruntime.tools.convert_onnx_models_to_ort', run_name='__main__')")


@dataclasses.dataclass
class Conversion:
    model: Path  # the .ort file
    operators_config: Path  # the tool's required_operators.config, as it wrote it
    format_version: int  # read back from the .ort file
    seconds: float


def converter() -> str:
    """What converts: "onnxruntime 1.32.0"."""
    return f"onnxruntime {ort.__version__}"


def convert(graph: Path, scratch: Path) -> Conversion:
    """Convert one .onnx (and its external data) to ORT format under `scratch` (which must not exist or
    be empty), with convert_onnx_models_to_ort in a subprocess and the options in this module's docstring."""
    source, out = scratch / "onnx", scratch / "ort"
    source.mkdir(parents=True)
    for path in graph_files(graph):
        # The graph as model.onnx (the tool skips names ending .optimized.onnx, our optimized variant's),
        # its external data under its own name, where the graph's tensors say it is.
        _link_or_copy(path, source / (MODEL if path == graph else path.name))
    command = [sys.executable, "-c", _RUN_CONVERTER, "--optimization_style", OPTIMIZATION["style"],
               "--target_platform", OPTIMIZATION["target_platform"], "--output_dir", str(out), str(source)]
    env = {**os.environ, "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL": OPTIMIZATION["level"]}
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, env=env,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise OnnxpackError(f"converting {graph.name} to ORT format took over {CONVERT_TIMEOUT_S} s") from None
    seconds = time.perf_counter() - started
    model, config = out / ORT_MODEL, out / OPERATORS_CONFIG
    if result.returncode != 0 or not model.is_file() or not config.is_file():
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        why = next((line for line in reversed(lines) if "Error" in line or "error" in line), lines[-1] if lines else
                   f"exit status {result.returncode}")
        raise OnnxpackError(f"ONNX Runtime {ort.__version__} could not convert {graph.name} to ORT format: "
                            f"{why.strip()[:300]}", hint="the graph runs in ONNX Runtime but its converter failed; "
                            "try another --variant")
    return Conversion(model, config, ortformat.format_version(model), seconds)


def _link_or_copy(path: Path, target: Path) -> None:
    try:
        os.link(path, target)  # the tool only reads it
    except OSError:
        shutil.copyfile(path, target)


def _carried_files(package: Package) -> list[str]:
    """The source's files that travel to the ORT package: all but its graphs and its model card (which
    describes the source's variants): the tokenizer files."""
    graphs = {p.name for v in package.variant_names() for p in graph_files(package.variant_path(v))}
    return [name for name in package.manifest.files if name not in graphs and name != REPORT
            and not name.endswith((".onnx", ".onnx.data", ".ort"))]


def _check_out(package: Package, out: Path) -> None:
    here, root = out.resolve(), package.root.resolve()
    if here == root or root.is_relative_to(here):
        raise OnnxpackError(f"--out {out} is the source package or holds it; export-mobile writes a new folder",
                            hint="pass another --out, e.g. a sibling of the package")


def export_mobile(package: Package, out: str | os.PathLike[str], variant: str | None = None,
                  force: bool = False) -> Package:
    """Write `out`: `variant` of `package` (default: its default variant, the fastest accepted one) as
    model.ort, with the tool's required_operators.config, the tokenizer files and a manifest whose
    graph_format records what was converted and how. Refuses (one line, nothing written) an existing
    `out` unless `force`, an ORT-format source, an unknown variant, and an .ort whose logits on
    SELF_CHECK_TEXTS differ from the source variant's by more than PARITY_ATOL."""
    out = Path(out)
    package.require_onnx("export-mobile")
    variant = variant or package.default_variant()
    graph = package.variant_path(variant)  # an unknown variant fails here, naming those there are
    _check_out(package, out)
    untrusted.trust(graph, package)
    carried = _carried_files(package)
    with AtomicDir(out, force=force) as tmp:  # refuses an existing `out` unless forced, before any work
        scratch = tmp / ".convert"
        conversion = convert(graph, scratch)
        os.replace(conversion.model, tmp / ORT_MODEL)
        os.replace(conversion.operators_config, tmp / OPERATORS_CONFIG)
        shutil.rmtree(scratch)
        for name in carried:
            shutil.copyfile(package.root / name, tmp / name)
        untrusted.remember(tmp / ORT_MODEL)  # made by ONNX Runtime from a graph that passed the gate
        parity = _self_check(package, variant, tmp)
        manifest = _manifest(package, variant, graph, tmp, conversion, parity)
        write_manifest(tmp, manifest)
    return Package.open(out)


def _self_check(package: Package, variant: str, folder: Path) -> dict[str, float | int]:
    """Both graphs on SELF_CHECK_TEXTS through the package's own feed, on the CPU (a phone's provider)."""
    texts: list[Text] = [(t, t) for t in SELF_CHECK_TEXTS] if package.manifest.pairs else list(SELF_CHECK_TEXTS)
    with Predictor(package, provider="cpu", variant=variant) as source, \
            Predictor(package, provider="cpu", variant=variant, model_file=folder / ORT_MODEL) as converted:
        want, got = source.predict_logits(texts), converted.predict_logits(texts)
    diff = float(np.abs(got - want).max())
    if not diff <= PARITY_ATOL:
        raise OnnxpackError(f"the ORT-format {variant} moves the logits by {diff:.2e} (> {PARITY_ATOL:g}) from "
                            f"the .onnx on {len(texts)} texts; nothing was written",
                            hint="try another --variant, or report it to ONNX Runtime with the source graph")
    return {"rows": len(texts), "max_abs_diff": diff,
            "agreement": float((got.argmax(-1) == want.argmax(-1)).mean())}


def _manifest(package: Package, variant: str, graph: Path, folder: Path, conversion: Conversion,
              parity: dict[str, float | int]):  # noqa: ANN202 -- a Manifest
    source = package.manifest
    entry = {k: v for k, v in source.variants.get(variant, {}).items() if k != "file"}
    entry |= {"file": ORT_MODEL, "bytes": (folder / ORT_MODEL).stat().st_size}
    graph_format = {
        "format": "ort",
        "ort_format_version": ortformat.format_version(folder / ORT_MODEL),  # what the written file says
        "source_variant": variant,
        "source_package": {"name": source.name, "path": str(package.root.resolve()), "file": graph.name,
                           "sha256": sha256_file(graph)},
        "operators_config": OPERATORS_CONFIG,
        "converted_by": converter(),
        "optimization": dict(OPTIMIZATION),
        "parity": parity,
    }
    history = source.history + [{"step": "export-mobile", "variant": variant, "format": "ort",
                                 "ort_format_version": graph_format["ort_format_version"],
                                 "converted_by": converter(), "seconds": round(conversion.seconds, 2), "at": now()}]
    return dataclasses.replace(source, files=hash_files(folder), variants={variant: entry}, history=history,
                               graph_format=graph_format)


def compare(package: Package, variant: str, texts: Sequence[Text], batch_size: int = 32) -> Comparison:
    """`check --runtime ort-format`: `variant` converted to ORT format (in a temp folder) and loaded from
    it in this ONNX Runtime, against the .onnx on the CPU, on the same feeds (the Predictor's batches of
    `texts`): max |Δlogit|, label agreement and the .ort's time per row (after one warm-up batch, as
    check times Python). A variant that does not convert or load gives a Comparison with its `error`."""
    package.require_onnx("check --runtime ort-format")
    runtime = f"ort-format ({converter()})"
    with Predictor(package, provider="cpu", variant=variant) as predictor, \
            tempfile.TemporaryDirectory(prefix="onnxpack-ort-") as tmp:
        try:
            conversion = convert(package.variant_path(variant), Path(tmp) / "convert")
            runtime = f"ort-format v{conversion.format_version} ({converter()})"
            session = ort.InferenceSession(str(conversion.model), providers=["CPUExecutionProvider"])
        except OnnxpackError as e:
            return Comparison(runtime, len(texts), float("nan"), 0.0, error=e.message)
        except Exception as e:  # noqa: BLE001 -- ONNX Runtime's own words, as one line
            return Comparison(runtime, len(texts), float("nan"), 0.0, error=" ".join(str(e).split())[:300])
        batches = list(predictor.encoded_batches(texts, batch_size))
        want = np.zeros((len(texts), len(predictor.labels)), dtype=np.float32)
        got = np.zeros_like(want)
        for rows, feed in batches:
            want[rows] = predictor.run(feed)
        session.run([predictor.output_name], batches[0][1])  # warm-up
        started = time.perf_counter()
        for rows, feed in batches:
            (got[rows],) = session.run([predictor.output_name], feed)
        ms = (time.perf_counter() - started) * 1000
    return Comparison(runtime, len(texts), max_abs_diff=float(np.abs(got - want).max()),
                      agreement=float((got.argmax(-1) == want.argmax(-1)).mean()), ms_per_row=ms / len(texts))
