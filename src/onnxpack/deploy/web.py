"""`onnxpack export-web`: a package as a static folder that classifies in the browser, with no server.

    index.html                 core/page.html, the server's page, with the model running in the page
    app.js, classifier.js      web/app.mjs and web/classifier.mjs: the page's runtime
    vendor/                    onnxruntime-web's WebAssembly build and tokenizers.js, from npm
    model.onnx, tokenizer.json (+ tokenizer_config.json)
    manifest.json              the variant carried and why, the runtime's versions, every file's sha256

npm is needed to build the folder only: onnxruntime-web and tokenizers.js are installed once into the
user's cache and copied in. The page fetches only from its own folder, so any static host serves it.

The variant is the fastest one onnxruntime-web loads and that answers as Python's ONNX Runtime does:
each candidate is run by the same WebAssembly build and the same classifier.mjs in Node (web/probe.mjs)
on real sentences, timed, and its logits compared with Python's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import json
import re
import shutil
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxpack import __version__
from onnxpack.core import page
from onnxpack.core.atomic import AtomicDir, atomic_write_text
from onnxpack.core.config import ServeConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.htmlsafe import content_security_policy
from onnxpack.core.metrics import predictions
from onnxpack.core.package import (
    MULTI_LABEL,
    TOKENIZER,
    Package,
    data_file,
    now,
    sha256_file,
)
from onnxpack.runtime.feed import Text
from onnxpack.runtime.predictor import Predictor

from . import compat, npm
from .comparison import Comparison

HERE = Path(__file__).parent / "web"
ORT_WEB, TOKENIZERS = "onnxruntime-web", "@huggingface/tokenizers"
RELEASES = {ORT_WEB: "1.31", TOKENIZERS: "0.2"}  # the npm releases the page ships and was tested with
# The folder's files from npm (vendor/<name>: its path under node_modules). Every script is named .js,
# which every static server types as JavaScript; app.mjs points onnxruntime-web at the renamed loader.
VENDOR = {
    "ort.wasm.min.js": f"{ORT_WEB}/dist/ort.wasm.min.mjs",
    "ort-wasm-simd-threaded.js": f"{ORT_WEB}/dist/ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm": f"{ORT_WEB}/dist/ort-wasm-simd-threaded.wasm",
    "tokenizers.min.js": f"{TOKENIZERS}/dist/tokenizers.min.mjs",
}
OWN = {"app.js": "app.mjs", "classifier.js": "classifier.mjs"}  # the folder's name: this module's file
MODEL = "model.onnx"
TOKENIZER_CONFIG = "tokenizer_config.json"
FORMAT = "onnxpack-web"
# Browser logits against Python's, for a variant to count as answering alike. The float kernels (MLAS
# for wasm SIMD against x86's) differ in summation order only: about 2e-6 on MiniLM/CoLA. int8 graphs
# can differ by whole quantization steps (docs/deploy.md, "int8 in WebAssembly").
TOLERANCE = 1e-4
PROBE_TIMEOUT_S = 600


def home() -> Path:
    """Where onnxruntime-web and tokenizers.js are installed: $ONNXPACK_WEB_RUNTIME, else the user's cache."""
    return npm.cache_home("web-runtime", "ONNXPACK_WEB_RUNTIME")


def missing() -> str | None:
    """None when the page's runtime is installed and node can run export-web's check, else what is missing."""
    if shutil.which("node") is None:
        return "node is not installed (export-web checks the page's runtime in Node: e.g. apt-get install nodejs npm)"
    absent = [name for name in RELEASES if not npm.installed(home(), name)]
    return f"{' and '.join(absent)} not installed in {home()}" if absent else None


def ensure_runtime(on_install: Callable[[str], None] | None = None) -> Path:
    """The npm packages the page ships, installed into home() by the first call (npm needed then only)."""
    if shutil.which("node") is None:
        raise OnnxpackError("export-web needs node to check the page's runtime, and node is not installed",
                            hint="install Node.js (e.g. apt-get install nodejs)")
    if any(not npm.installed(home(), name) for name in RELEASES):
        if shutil.which("npm") is None:
            raise OnnxpackError("export-web needs npm to fetch onnxruntime-web and tokenizers.js (once, into "
                                f"{home()}), and npm is not installed",
                                hint="install Node.js and npm (e.g. apt-get install nodejs npm), then run it again")
        specs = [f"{name}@{release}" for name, release in RELEASES.items()]
        if on_install:
            on_install(f"installing {', '.join(specs)} from npm into {home()} (first run only)")
        npm.install(home(), specs)
    return home()


def versions() -> dict[str, str]:
    return {name: npm.version(home(), name) for name in RELEASES}


@dataclasses.dataclass
class Trial:
    """One variant in onnxruntime-web: whether it loads, its time per row there, and its answers against Python's."""
    variant: str
    error: str | None = None  # why it does not load (or answer)
    ms_per_row: float | None = None  # onnxruntime-web in Node, one thread, after a warm-up
    max_abs_diff: float | None = None  # logits against Python's ONNX Runtime on the same rows
    agreement: float | None = None  # share of rows with Python's label

    @property
    def usable(self) -> bool:
        return self.error is None and self.max_abs_diff is not None and self.max_abs_diff <= TOLERANCE \
            and self.agreement == 1.0


def web_config(package: Package) -> dict[str, Any]:
    """What classifier.mjs needs of a package (export-web's manifest.json, under "web")."""
    manifest = package.manifest
    multi_label = manifest.problem_type == MULTI_LABEL
    limits = ServeConfig()  # the page refuses what the server refuses
    return {"model": MODEL, "tokenizer": TOKENIZER,
            "tokenizer_config": TOKENIZER_CONFIG if (package.root / TOKENIZER_CONFIG).is_file() else None,
            "labels": list(manifest.labels), "pairs": bool(manifest.pairs), "multi_label": multi_label,
            "thresholds": list(manifest.thresholds or []) if multi_label else None,
            "max_length": manifest.max_length, "pad_token_id": manifest.pad_token_id,
            "inputs": [t.name for t in manifest.inputs], "output": manifest.outputs[0].name,
            "limits": {"max_texts": limits.max_texts, "max_chars": limits.max_chars}}


def as_json(texts: Sequence[Text]) -> list[str | list[str]]:
    """Texts as classifier.mjs takes them: a pair is ["first", "second"]."""
    return [list(t) if isinstance(t, tuple) else t for t in texts]


def run_probe(package: Package, graphs: dict[str, Path], texts: Sequence[Text]) -> dict[str, dict[str, Any]]:
    """web/probe.mjs on these graphs: per name, {load_ms, ms_per_row, logits} or {error}."""
    root = home() / "node_modules"
    job = {"ort": str(root / VENDOR["ort.wasm.min.js"]), "tokenizers": str(root / VENDOR["tokenizers.min.js"]),
           "tokenizer": str(package.tokenizer_path),
           "tokenizer_config": str(package.root / TOKENIZER_CONFIG) if (package.root / TOKENIZER_CONFIG).is_file() else None,
           "manifest": web_config(package), "variants": {k: str(v) for k, v in graphs.items()},
           "texts": as_json(texts)}
    with tempfile.TemporaryDirectory(prefix="onnxpack-web-") as tmp:
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        try:
            result = subprocess.run(["node", str(HERE / "probe.mjs"), str(job_path)], check=False, capture_output=True,
                                    text=True, timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise OnnxpackError(f"onnxruntime-web did not finish within {PROBE_TIMEOUT_S} s") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise OnnxpackError(f"onnxruntime-web could not run: {last[:300]}")
    return json.loads(result.stdout)


_MISSING_OP = [re.compile(r"(\S+?)\(-?\d+\) is not a registered function/op"),  # "com.microsoft:X(-1) is not..."
               re.compile(r"Could not find an implementation for (\S+?)\(\d+\)")]


def missing_op(error: str) -> str | None:
    """The operator an onnxruntime error says it has no kernel for, if that is what it says."""
    for pattern in _MISSING_OP:
        if m := pattern.search(error):
            return m[1]
    return None


def try_variants(package: Package, variants: Sequence[str], texts: Sequence[Text]) -> list[Trial]:
    """Each variant in onnxruntime-web (see the module's docstring), in the order given."""
    target = compat.ort_target(versions()[ORT_WEB])
    limits = {f.variant: f.problems for f in compat.check(package, target) if f.variant in variants}
    trials = {v: Trial(v, error="; ".join(limits[v])) for v in variants if limits.get(v)}
    graphs = {}
    for v in variants:
        path = package.variant_path(v)
        if v in trials:
            continue
        if path.with_name(data_file(path)).is_file():
            trials[v] = Trial(v, error="its weights are kept outside the graph (over 2 GB): too large for a browser")
        else:
            graphs[v] = path
    for v, answer in run_probe(package, graphs, texts).items() if graphs else ():
        if "error" in answer:
            trials[v] = Trial(v, error=answer["error"])
            continue
        diff, agreement = against_python(package, v, texts, np.asarray(answer["logits"], dtype=np.float32))
        trials[v] = Trial(v, ms_per_row=answer["ms_per_row"], max_abs_diff=diff, agreement=agreement)
    return [trials[v] for v in variants]


def against_python(package: Package, variant: str, texts: Sequence[Text], got: np.ndarray) -> tuple[float, float]:
    """(max |Δlogit|, share of rows with the same labels) of `got` against Python's ONNX Runtime: the
    same label, or for a multi-label model the same set over the thresholds."""
    with Predictor(package, variant=variant, provider="cpu") as predictor:
        want = predictor.predict_logits(texts)
        thresholds = predictor.thresholds or None
    same = (predictions(got, thresholds) == predictions(want, thresholds)).reshape(len(texts), -1).all(axis=1)
    return float(np.abs(got - want).max()), float(same.mean())


def choose(trials: Sequence[Trial], asked: bool = False) -> tuple[Trial, str]:
    """The fastest usable trial, and why it was chosen; one line naming what failed when none is usable.
    `asked` (--variant): the one trial need only load; its answers are reported, not required."""
    if asked and trials[0].error is None:
        t = trials[0]
        return t, (f"asked for with --variant: {t.ms_per_row:.1f} ms a row in onnxruntime-web, max |Δlogit| "
                   f"{t.max_abs_diff:.1e} from Python, {t.agreement:.1%} the same labels")
    usable = sorted((t for t in trials if t.usable), key=lambda t: t.ms_per_row)
    if not usable:
        ops = sorted({op for t in trials if t.error and (op := missing_op(t.error))})
        tried = ", ".join(t.variant for t in trials)
        if ops:
            raise OnnxpackError(f"onnxruntime-web {RELEASES[ORT_WEB]} has no kernel for {', '.join(ops)}, which every "
                                f"variant tried uses ({tried})",
                                hint="export-web a variant without it (e.g. run `onnxpack optimize` for plain ones)")
        reasons = "; ".join(f"{t.variant}: {t.error or f'max |diff| {t.max_abs_diff:.1e} from Python'}" for t in trials)
        raise OnnxpackError(f"no variant runs in onnxruntime-web {RELEASES[ORT_WEB]} as in Python ({reasons[:400]})",
                            hint="pass --variant NAME to carry one anyway, or re-export the package")
    best = usable[0]
    faster = [t for t in trials if t.error is None and not t.usable and t.ms_per_row < best.ms_per_row]
    why = "the fastest in onnxruntime-web of the variants that load and answer as Python does" if len(usable) > 1 \
        else "the only variant that loads and answers as Python does" if len(trials) > 1 else "the package's one variant"
    why += f" ({best.ms_per_row:.1f} ms a row" + "".join(f"; {t.variant} {t.ms_per_row:.1f}" for t in usable[1:]) + ")"
    for t in faster:
        why += (f"; {t.variant} is faster there ({t.ms_per_row:.1f} ms) but answers otherwise: max |Δlogit| "
                f"{t.max_abs_diff:.1e}, {t.agreement:.1%} the same labels (--variant {t.variant} carries it anyway)")
    return best, why


@dataclasses.dataclass
class WebExport:
    folder: Path
    variant: str
    why: str
    trials: list[Trial]
    sizes: dict[str, int]  # file (relative to the folder) -> bytes
    gzip_bytes: int  # the whole folder, each file gzipped as a static host would send it

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())


def page_head() -> str:
    """index.html's policy and module script: scripts and WebAssembly from the folder only, fetch() to it."""
    policy = content_security_policy(page.template(), script_self=True)
    return (f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
            '<script type="module" src="app.js"></script>')


def export_web(package: Package, out: Path, texts: Sequence[Text], variant: str | None = None, force: bool = False,
               on_step: Callable[[str], None] | None = None) -> WebExport:
    """Write the static folder for `package` at `out` (see the module's docstring). `texts` are the real
    sentences each candidate variant is checked on; `variant` skips the choice (it must still pass)."""
    package.require_onnx("export-web")
    with AtomicDir(out, force=force) as tmp:
        ensure_runtime(on_step)
        candidates = [variant] if variant else package.variant_names()
        if variant:
            package.variant_path(variant)  # an unknown name is one line
        if on_step:
            on_step(f"checking {', '.join(candidates)} in onnxruntime-web on {len(texts)} rows")
        trials = try_variants(package, candidates, texts)
        best, why = choose(trials, asked=variant is not None)
        sizes = write_folder(tmp, package, best.variant, why, trials)
        if on_step:
            on_step("measuring what the folder costs to ship (gzip)")
        gzip_bytes = sum(gzipped_size(tmp / name) for name in sizes)
    return WebExport(out, best.variant, why, trials, sizes, gzip_bytes)


def write_folder(folder: Path, package: Package, variant: str, why: str, trials: Sequence[Trial]) -> dict[str, int]:
    """The static folder's files for one variant, in `folder` (which exists); each file's size."""
    (folder / "vendor").mkdir(exist_ok=True)
    for name, source in VENDOR.items():
        shutil.copyfile(home() / "node_modules" / source, folder / "vendor" / name)
    (folder / "vendor" / "LICENSES.txt").write_text(licenses(), encoding="utf-8")
    for name, source in OWN.items():
        shutil.copyfile(HERE / source, folder / name)
    shutil.copyfile(package.variant_path(variant), folder / MODEL)
    shutil.copyfile(package.tokenizer_path, folder / TOKENIZER)
    config = web_config(package)
    if config["tokenizer_config"]:
        shutil.copyfile(package.root / TOKENIZER_CONFIG, folder / TOKENIZER_CONFIG)
    model = {key: config[key] for key in ("labels", "pairs", "multi_label", "thresholds", "max_length")}
    model |= {"long_text": "truncate", "chunk": False, "explain": False, "browser": True}
    (folder / "index.html").write_text(page.render(package.name, model, head=page_head()), encoding="utf-8")
    sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    manifest = {"format": FORMAT, "name": package.name, "variant": variant, "why": why,
                "source": {"package": str(package.root), "variant": variant,
                           "sha256": package.manifest.files.get(package.variant_path(variant).name)},
                "web": config, "runtime": versions(), "trials": [dataclasses.asdict(t) for t in trials],
                "files": {name: sha256_file(folder / name) for name in sizes},
                "onnxpack_version": __version__, "created": now()}
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return sizes | {"manifest.json": (folder / "manifest.json").stat().st_size}


def gzipped_size(path: Path) -> int:
    """Bytes of `path` gzipped at level 6, what a static host's compression sends."""
    stream = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # wbits 16+: the gzip container
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            size += len(stream.compress(chunk))
    return size + len(stream.flush())


def licenses() -> str:
    """vendor/LICENSES.txt: each npm package the folder ships, its version and license."""
    lines = []
    for name in RELEASES:
        meta = json.loads((home() / "node_modules" / name / "package.json").read_text(encoding="utf-8"))
        lines.append(f"{name} {meta['version']}: {meta.get('license', 'see its package')} license, "
                     f"{meta.get('homepage') or 'https://www.npmjs.com/package/' + name}")
    return "The files in this folder come from these npm packages:\n" + "\n".join(lines) + "\n"


@contextlib.contextmanager
def static_server(folder: Path) -> Iterator[str]:
    """A plain static file server for `folder` on loopback, in a thread; yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def headless_chromium(binary: str, *args: str, capabilities: dict[str, Any] | None = None) -> Any:
    """A selenium driver for headless Chromium that can reach loopback only (no other host name
    resolves), with more command-line `args` and `capabilities` if given."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", *args):
        options.add_argument(arg)
    for name, value in (capabilities or {}).items():
        options.set_capability(name, value)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


# Runs in the page: window.onnxpack.predict on the texts, timed by the page's own clock after a warm-up
# call (the first run of a session sets up its kernels).
PREDICT_IN_PAGE = """const done = arguments[arguments.length - 1];
window.onnxpack.ready.then(async () => {
  await window.onnxpack.predict(arguments[0].slice(0, 2));
  const started = performance.now();
  const results = await window.onnxpack.predict(arguments[0]);
  done({results, ms: performance.now() - started,
        resources: performance.getEntriesByType("resource").map((e) => e.name)});
}).catch((e) => done({error: String(e && e.message ? e.message : e)}));"""
PAGE_TIMEOUT_S = 300


def in_browser(package: Package, variant: str, texts: Sequence[Text], binary: str) -> Comparison:
    """The variant's logits from export-web's page in headless Chromium, against Python's, on `texts`
    (check's web runtime). A page that does not load gives a Comparison with its error."""
    ensure_runtime()
    with tempfile.TemporaryDirectory(prefix="onnxpack-web-check-") as tmp:
        write_folder(Path(tmp), package, variant, "asked for by check", [])
        with static_server(Path(tmp)) as url:
            driver = headless_chromium(binary)
            try:
                driver.set_script_timeout(PAGE_TIMEOUT_S)
                driver.get(url + "index.html")
                answer = driver.execute_async_script(PREDICT_IN_PAGE, as_json(texts))
            finally:
                driver.quit()
    runtime = f"onnxruntime-web {versions()[ORT_WEB]} in Chromium"
    if answer.get("error"):
        return Comparison(runtime, len(texts), float("nan"), 0.0, error=answer["error"])
    foreign = [u for u in answer["resources"] if not u.startswith(url)]
    if foreign:
        return Comparison(runtime, len(texts), float("nan"), 0.0, error=f"the page fetched from elsewhere: {foreign[0]}")
    diff, agreement = against_python(package, variant, texts,
                                     np.asarray([r["logits"] for r in answer["results"]], dtype=np.float32))
    return Comparison(runtime, len(texts), diff, agreement, ms_per_row=answer["ms"] / len(texts))
