"""The one-way rule: checkpoint -> package -> runtime. The floors import only downwards
(import-linter's contracts in pyproject.toml), nothing outside onnxpack.pytorch imports a model
framework, and the runtime side works in a process where torch cannot even be imported."""

from __future__ import annotations

import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import onnxpack

ROOT = Path(__file__).resolve().parents[1]
MODEL_FRAMEWORKS = ("torch", "lightning", "pytorch_lightning", "transformers", "torchmetrics", "datasets")
# Run first in a child process: importing any of these raises, as on a host without them.
BLOCK_FRAMEWORKS = f"""
import importlib.abc, sys
class _NoFrameworks(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {MODEL_FRAMEWORKS!r}:
            raise ImportError(f"{{name}} is not installed (blocked by the test)")
sys.meta_path.insert(0, _NoFrameworks())
"""


def runtime_modules() -> list[str]:
    """Every module outside the torch side, found by walking the package (not a list to forget to extend)."""
    names = [m.name for m in pkgutil.walk_packages(onnxpack.__path__, "onnxpack.")]
    assert "onnxpack.runtime.optimize" in names and "onnxpack.serve.grpc_api" in names
    return [n for n in names if not n.startswith("onnxpack.pytorch") and n != "onnxpack.__main__"]


def test_the_import_contracts_hold():
    """import-linter's layers and forbidden contracts (pyproject.toml), as `lint-imports` checks them."""
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") == 2


def test_no_module_outside_the_torch_side_loads_a_model_framework():
    modules = runtime_modules()
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"    loaded = [f for f in {MODEL_FRAMEWORKS!r} if f in sys.modules]\n"
            "    assert not loaded, f'importing {name} loaded {loaded}'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.timeout(900)
def test_every_default_variant_builds_where_torch_cannot_be_imported(package_dir, small_cola, tmp_path):
    """optimize, int8-static included, with torch unimportable: a third-party helper (ONNX Runtime's
    symbolic_shape_infer) pulled torch in at call time once, which no import test sees."""
    from onnxpack.core.config import OptimizeConfig

    package = shutil.copytree(package_dir, tmp_path / "pkg")
    # Gates wide open: this is about building each variant without torch, not about the tiny model's accuracy.
    code = BLOCK_FRAMEWORKS + (
        "import sys\n"
        "from onnxpack.core.config import OptimizeConfig\n"
        "from onnxpack.runtime.optimize import optimize\n"
        f"optimize({str(package)!r}, OptimizeConfig(data={str(small_cola)!r}, calibration_rows=64, max_mcc_drop=1.0,"
        " min_agreement=0.0))\n"
        f"assert not [f for f in {MODEL_FRAMEWORKS!r} if f in sys.modules]\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    variants = set(json.loads((package / "manifest.json").read_text())["variants"])
    # fp16 is built on a GPU only; every other default variant is in the package
    assert set(OptimizeConfig().variants) - {"fp16"} <= variants, variants
