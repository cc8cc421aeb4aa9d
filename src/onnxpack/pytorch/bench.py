"""bench's PyTorch baseline: the package's source checkpoint in eager PyTorch, and compiled
where torch.compile works here. runtime.bench times these beside ONNX Runtime's variants."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onnxpack.core.config import BenchConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import Package
from onnxpack.runtime.bench import Runner
from onnxpack.runtime.feed import synthetic_feed, vocab_size

from .model import load_checkpoint


def torch_engines(package: Package, config: BenchConfig, notes: list[str]) -> dict[str, Callable[[dict[str, np.ndarray]], Runner]]:
    """{"torch": eager, "torch-compile": compiled} for the engines that work here, each a function
    of a feed that returns the runner bench times (runtime.bench.Baseline)."""
    checkpoint = config.checkpoint or package.manifest.source.get("path")
    if not checkpoint or not Path(checkpoint).exists():
        raise OnnxpackError(f"the PyTorch baseline needs the package's source checkpoint; {checkpoint} is not there",
                            hint="pass --checkpoint PATH, or --no-torch to benchmark ONNX Runtime only")
    torch.set_num_threads(config.threads)
    model, _, _ = load_checkpoint(checkpoint)
    engines = {"torch": model}
    if not config.compile:
        notes.append("torch.compile rows off: pass --compile (it compiles each shape, about a minute each on 2 cores)")
    else:
        try:
            compiled = torch.compile(model, dynamic=False)
            # Compile once here for the first shape the benchmark times, so a failure drops only this row.
            feed = synthetic_feed(config.batch_sizes[0], config.seq_lens[0], vocab_size(package),
                                  [t.name for t in package.manifest.inputs])
            with torch.inference_mode():
                compiled(**{k: torch.from_numpy(v) for k, v in feed.items()})
            engines["torch-compile"] = compiled
        except Exception as e:  # noqa: BLE001 -- any compiler failure just drops the optional row
            notes.append(f"torch.compile rows skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return {name: functools.partial(_runner, model) for name, model in engines.items()}


def _runner(model: Any, feed: dict[str, np.ndarray]) -> Runner:
    tensors = {k: torch.from_numpy(v) for k, v in feed.items()}

    def run() -> Any:
        with torch.inference_mode():
            return model(**tensors)

    return run
