"""A second runtime for `onnxpack check`: the package's graph in onnxruntime-node (npm), compared with
Python's ONNX Runtime on the same feed of real sentences.

onnxruntime-node lives outside Python: `install()` puts it (CPU only) into a cache folder with npm.
Its npm postinstall would fetch CUDA libraries from nuget.org; ONNXRUNTIME_NODE_INSTALL=skip keeps
it to the CPU build the package already carries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from onnxpack.core.errors import OnnxpackError
from onnxpack.runtime.feed import Text, encode
from onnxpack.runtime.predictor import Predictor

from . import npm
from .comparison import Comparison

SCRIPT = Path(__file__).parent / "node" / "run.js"
PACKAGE = "onnxruntime-node@1.30"  # the npm release `check` installs and was measured with
RUN_TIMEOUT_S = 300
INSTALL_HINT = "run `onnxpack check --install-node-runtime` (needs node and npm)"


def home() -> Path:
    """Where onnxruntime-node is installed: $ONNXPACK_NODE_RUNTIME, else the user's cache."""
    return npm.cache_home("onnxruntime-node", "ONNXPACK_NODE_RUNTIME")


def available() -> str | None:
    """None when the second runtime can run here, else why not."""
    if shutil.which("node") is None:
        return "node is not installed (e.g. apt-get install nodejs npm)"
    if not npm.installed(home(), "onnxruntime-node"):
        return f"onnxruntime-node is not installed in {home()}: {INSTALL_HINT}"
    return None


def version() -> str:
    return npm.version(home(), "onnxruntime-node")


def install() -> Path:
    return npm.install(home(), [PACKAGE], env={"ONNXRUNTIME_NODE_INSTALL": "skip"})


def compare(predictor: Predictor, texts: Sequence[Text]) -> Comparison:
    """Logits of the predictor's graph in onnxruntime-node against Python's, one padded batch of `texts`."""
    reason = available()
    if reason:
        raise OnnxpackError(f"the second runtime cannot run: {reason}")
    feed = encode(predictor.tokenizer, texts, predictor.input_names)
    want = predictor.run(feed)
    with tempfile.TemporaryDirectory(prefix="onnxpack-node-") as tmp:
        feed_path = Path(tmp) / "feed.json"
        feed_path.write_text(json.dumps({n: {"dims": list(a.shape), "data": a.ravel().tolist()} for n, a in feed.items()}))
        model = predictor.package.variant_path(predictor.variant)
        try:
            result = subprocess.run(["node", str(SCRIPT), str(model), str(feed_path)], capture_output=True, text=True,
                                    timeout=RUN_TIMEOUT_S, env={**os.environ, "NODE_PATH": str(home() / "node_modules")})
        except subprocess.TimeoutExpired:
            raise OnnxpackError(f"onnxruntime-node did not finish within {RUN_TIMEOUT_S} s") from None
    if result.returncode != 0:
        raise OnnxpackError(f"onnxruntime-node cannot run {model.name}: {result.stderr.strip()[:500]}")
    answer = json.loads(result.stdout)
    out = answer["outputs"][predictor.output_name]
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["dims"])
    return Comparison(runtime=f"onnxruntime-node {answer['version']}", rows=len(texts),
                      max_abs_diff=float(np.abs(got - want).max()),
                      agreement=float((got.argmax(-1) == want.argmax(-1)).mean()),
                      ms_per_row=float(answer["ms"]) / len(texts))
