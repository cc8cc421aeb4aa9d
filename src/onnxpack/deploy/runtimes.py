"""The runtimes `onnxpack check --runtime` runs a package in besides Python's ONNX Runtime, each compared
with it on the same real sentences:

    node        onnxruntime-node (npm), in Node.js                          node_runtime.py
    web         onnxruntime-web's WebAssembly build in headless Chromium,   web.py (the export-web folder,
                the page export-web writes, served from loopback             served from loopback)
    ort-format  the graph converted to ONNX Runtime's mobile format (.ort)   mobile.py
                and loaded from it, as a phone's ONNX Runtime loads it
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence

import onnxruntime

from onnxpack.core.data import load_splits
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import Package
from onnxpack.runtime.feed import Text
from onnxpack.runtime.predictor import Predictor

from . import compat, mobile, node_runtime, web
from .comparison import Comparison

RUNTIMES = ("node", "web", "ort-format")
NODE_HINT = "install Node.js and npm (e.g. apt-get install nodejs npm)"
CHROMIUM_HINT = "apt-get install chromium chromium-driver"


def sample_texts(package: Package, data: str | None, rows: int) -> list[Text]:
    """The first `rows` validation texts of `data` (default: the bundled CoLA); a pair model gets
    single sentences paired up when the data has none."""
    texts = load_splits(data, need_train=False).validation.texts
    if package.manifest.pairs and not isinstance(texts[0], tuple):
        return list(zip(texts[: 2 * rows : 2], texts[1 : 2 * rows : 2]))
    return list(texts[:rows])


def not_for(runtime: str, package: Package) -> str | None:
    """Why `runtime` does not apply to `package` (an ORT-format one is already what ort-format makes, and
    export-web reads ONNX graphs), or None."""
    if package.is_ort_format and runtime == "web":
        return "export-web reads ONNX graphs: check the source package for the browser"
    if package.is_ort_format and runtime == "ort-format":
        return "the package is already in ORT format (node and Python load it as it is)"
    return None


def missing(runtime: str) -> str | None:
    """None when `runtime` can run here, else what to install (one line)."""
    if runtime == "node":  # onnxruntime-node itself is npm-installed by the first check that needs it
        reason = node_runtime.available()
        if shutil.which("node") is None or reason and shutil.which("npm") is None:
            return f"node: {reason}; {NODE_HINT}"
        return None
    if runtime == "web":
        if shutil.which("node") is None:  # export-web's runtime is installed and checked with node's npm
            return f"web: needs node ({NODE_HINT})"
        if web.missing() and shutil.which("npm") is None:
            return f"web: needs npm once, to fetch onnxruntime-web and tokenizers.js ({NODE_HINT})"
        try:
            import selenium  # noqa: F401
        except ImportError:
            return "web: needs selenium to drive Chromium: pip install 'onnxpack[web]'"
        if not chromium() or not shutil.which("chromedriver"):
            return f"web: needs Chromium and chromedriver ({CHROMIUM_HINT})"
        return None
    return None  # ort-format: Python's own ONNX Runtime loads .ort files


def chromium() -> str | None:
    """The Chromium (or Chrome) binary here: $ONNXPACK_CHROMIUM, else the first on PATH."""
    if os.environ.get("ONNXPACK_CHROMIUM"):
        return shutil.which(os.environ["ONNXPACK_CHROMIUM"])
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))),
                None)


def parse(value: str | None) -> list[str]:
    """--runtime: a comma-separated subset of RUNTIMES (None: all of them)."""
    names = [n.strip() for n in (value or ",".join(RUNTIMES)).split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        named = ", ".join(unknown) or repr(value)
        raise OnnxpackError(f"unknown runtime {named}; --runtime takes {', '.join(RUNTIMES)}",
                            hint="e.g. --runtime node,web")
    return list(dict.fromkeys(names))


def prepare(runtime: str, say: Callable[[str], None]) -> None:
    """Install what `runtime` runs on, the first time (npm, into the user's cache)."""
    if runtime == "web":
        web.ensure_runtime(say)
    elif runtime == "node" and node_runtime.available():
        say(f"installing {node_runtime.PACKAGE} from npm into {node_runtime.home()} (first run only)")
        node_runtime.install()


def release(runtime: str) -> str:
    """The ONNX Runtime release `runtime` runs: what compat holds a graph against."""
    if runtime == "node":
        return node_runtime.version()
    if runtime == "web":
        return web.versions()[web.ORT_WEB]
    return onnxruntime.__version__


def compare(runtime: str, package: Package, variant: str, texts: Sequence[Text]) -> Comparison:
    """`variant` in `runtime` against Python's ONNX Runtime on `texts`. A graph newer than the runtime's
    release loads (compat.json) is not run: its Comparison says why, as one that fails to load does."""
    problems = next((f.problems for f in compat.check(package, compat.ort_target(release(runtime)))
                     if f.variant == variant), [])
    if problems:
        return Comparison(runtime, len(texts), float("nan"), 0.0, error="; ".join(problems))
    if runtime == "node":
        with Predictor(package, variant=variant, provider="cpu") as predictor:
            return node_runtime.compare(predictor, texts)
    if runtime == "web":
        return web.in_browser(package, variant, texts, chromium())
    return mobile.compare(package, variant, texts)


def python_ms_per_row(package: Package, variant: str, texts: Sequence[Text]) -> float:
    """Python's ONNX Runtime on `texts` (the predictor's batches, every core), after a warm-up."""
    with Predictor(package, variant=variant, provider="cpu") as predictor:
        predictor.predict_logits(texts[:2])
        started = time.perf_counter()
        predictor.predict_logits(texts)
        return (time.perf_counter() - started) * 1000 / len(texts)
