"""cli/ship.py's check: one warning line when a package's gate figures were measured on a CPU with
another int8 path, and the check still passes."""

from __future__ import annotations

from onnxpack.cli import app
from onnxpack.core import cpu
from onnxpack.core.package import FP32, MODEL, Package


def _record_cpu(package_dir, variants: dict[str, str]) -> None:
    """Write a recorded CPU with the given int8 path into each variant's figures."""
    package = Package.open(package_dir)
    package.update_manifest(variants={name: {"file": MODEL, "cpu": cpu.record() | {"processor": "Elsewhere CPU",
                                                                                     "int8_path": path}}
                                      for name, path in variants.items()})


def _other_path() -> str:
    return "avx2" if cpu.int8_path() != "avx2" else "vnni"


def test_check_warns_once_on_another_int8_path(runner, package_copy):
    _record_cpu(package_copy, {FP32: _other_path(), "int8": _other_path()})  # measured on one machine: one line
    result = runner.invoke(app, ["check", str(package_copy), "--rows", "8", "--runtime", "ort-format"])
    assert result.exit_code == 0, result.output  # a warning, not a failure
    lines = [line for line in result.stderr.splitlines() if "int8 path" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"warning {FP32}, int8: gate figures (agreement, speed) were measured on another CPU")
    assert f"int8 path {_other_path()}" in lines[0] and f"this machine's int8 path is {cpu.int8_path()}" in lines[0]


def test_check_is_quiet_on_the_same_int8_path(runner, package_copy):
    _record_cpu(package_copy, {FP32: cpu.int8_path()})
    result = runner.invoke(app, ["check", str(package_copy), "--rows", "8", "--runtime", "ort-format"])
    assert result.exit_code == 0, result.output
    assert "int8 path" not in result.output
