"""scripts/peer_openvino.py: its one-line errors (OpenVINO missing, a bad package) and a short real
run on the tiny package, each in a subprocess as people run it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "peer_openvino.py"
# Runs the script with openvino and nncf unimportable, as where the extra is not installed.
BLOCKED = """
import runpy, sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("openvino", "nncf"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(*args: str, blocked: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", BLOCKED, str(SCRIPT)] if blocked else [sys.executable, str(SCRIPT)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, check=False)


def one_error_line(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def needs_openvino() -> None:
    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: pip install 'onnxpack[openvino]' (the test extra has it)")


def test_without_openvino_it_names_the_extra(tmp_path):
    line = one_error_line(run(str(tmp_path), blocked=True), 2)
    assert "openvino, nncf missing" in line
    assert "pip install 'onnxpack[openvino]'" in line


def test_a_bad_package_is_one_line(tmp_path):
    needs_openvino()
    line = one_error_line(run(str(tmp_path / "nowhere")), 1)
    assert "is not a directory" in line


@pytest.fixture(scope="module")
def optimized_package(tmp_path_factory, package_dir, small_cola) -> Path:
    from onnxpack.core.config import OptimizeConfig
    from onnxpack.runtime.optimize import optimize

    root = Path(shutil.copytree(package_dir, tmp_path_factory.mktemp("peer") / package_dir.name))
    optimize(root, OptimizeConfig(data=str(small_cola), variants=("optimized",), max_mcc_drop=1.0))
    return root


def test_a_package_without_optimized_is_refused(package_dir):
    needs_openvino()
    line = one_error_line(run(str(package_dir)), 1)
    assert "has no optimized variant" in line and "onnxpack optimize" in line


@pytest.mark.timeout(600)
def test_a_short_run(optimized_package, small_cola, tmp_path):
    needs_openvino()
    out = tmp_path / "peer.json"
    result = run(str(optimized_package), "--rounds", "1", "--rows", "24", "--calibration-rows", "16",
                 "--data", str(small_cola), "--json", str(out), timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    engines = figures["engines"]
    served = figures["served_default"]  # fp32 or optimized, whichever optimize timed faster
    assert served in ("fp32", "optimized")
    mark = lambda variant: " (served default)" if variant == served else ""
    assert list(engines) == [f"onnxpack fp32{mark('fp32')}", f"onnxpack optimized{mark('optimized')}",
                             "OpenVINO f32", "OpenVINO default", "OpenVINO int8 (NNCF)"]
    assert figures["rows"] == 24 and figures["rounds"] == 1
    assert all(len(row["rounds"]) == 1 and row["rows_per_s"] > 0 for row in engines.values())
    assert engines[f"onnxpack fp32{mark('fp32')}"]["agreement"] == 1.0
    # The same graph in f32, fed the same batches: the same labels, logits within float noise.
    assert engines["OpenVINO f32"]["agreement"] == 1.0
    assert engines["OpenVINO f32"]["max_abs_logit_diff"] < 1e-3
    assert engines["OpenVINO f32"]["vs_openvino_f32"] == 1.0
    compiled = figures["openvino"]["compiled"]
    assert {s["NUM_STREAMS"] for s in compiled.values()} == {"1"}
    assert {s["INFERENCE_NUM_THREADS"] for s in compiled.values()} == {"2"}
    assert compiled["OpenVINO f32"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert figures["openvino"]["calibration_rows"] == 16
    assert len(figures["targets"]) == 2
    for name in engines:
        assert name in result.stdout
    assert "OpenVINO f32" in result.stdout and ("PASS" in result.stdout or "FAIL" in result.stdout)
