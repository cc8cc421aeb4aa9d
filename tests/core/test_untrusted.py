"""untrusted.py: every malformed or hostile model file in tests/hostile.py is refused by every command
that reads a graph, with one line and exit status 1, no traceback, no hang, and nothing written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import hostile
import pytest
from conftest import hostile_package
from live import HTTP_ONLY
from typer.testing import CliRunner

from onnxpack.cli import app
from onnxpack.core import untrusted
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import MANIFEST
from onnxpack.serve import create_app

PROBE_TIMEOUT_S = 5  # the tests' limit for a first run (the default is 60)


@pytest.fixture(autouse=True)
def short_probe(monkeypatch):
    monkeypatch.setattr(untrusted, "PROBE_TIMEOUT_S", PROBE_TIMEOUT_S)


COMMANDS = {
    "inspect": lambda pkg, out: ["inspect", str(pkg)],
    "inspect-file": lambda pkg, out: ["inspect", str(pkg / "model.onnx")],
    "verify": lambda pkg, out: ["verify", str(pkg)],
    "predict": lambda pkg, out: ["predict", str(pkg), "The boy is sitting on a bench."],
    "optimize": lambda pkg, out: ["optimize", str(pkg), "--variants", "optimized"],
    "bench": lambda pkg, out: ["bench", str(pkg), "--batch-sizes", "1", "--seq-lens", "8", "--rounds", "1", "--no-torch"],
    "graph": lambda pkg, out: ["graph", str(pkg), "--out", str(out / "graph.html")],
    "batch": lambda pkg, out: ["batch", str(pkg), "--input", str(out / "in.tsv"), "--output", str(out / "o.jsonl")],
    "export-serving": lambda pkg, out: ["export-serving", str(pkg), "--triton", str(out / "triton")],
    "check": lambda pkg, out: ["check", str(pkg)],
}


@pytest.mark.parametrize("case", list(hostile.CASES))
def test_every_command_refuses_a_hostile_model(package_dir, tmp_path, case):
    package = hostile_package(package_dir, tmp_path / "p", case)
    out = tmp_path / "out"
    out.mkdir()
    (out / "in.tsv").write_text("sentence\nThe boy is sitting on a bench.\n")
    manifest = (package / MANIFEST).read_bytes()
    runner = CliRunner()
    for command, args in COMMANDS.items():
        if command == "inspect-file" and case in hostile.PACKAGE_ONLY:
            continue
        started = time.monotonic()
        result = runner.invoke(app, args(package, out))
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (command, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (command, result.exception)
        assert time.monotonic() - started < PROBE_TIMEOUT_S + 60, command
        assert sorted(p.name for p in out.iterdir()) == ["in.tsv"], command  # no partial output
        assert (package / MANIFEST).read_bytes() == manifest, command  # the package is left as it was
    with pytest.raises(OnnxpackError):  # `serve` refuses before it listens (its CLI run: the test below)
        create_app(package, HTTP_ONLY)


def test_refusals_name_the_problem(tmp_path):
    expected = {"empty": "is empty (0 bytes)", "random_bytes": "is not a readable ONNX model",
                "external_parent": "outside the graph's folder", "external_symlink": "is missing or a link",
                "external_offset_past_end": "reads bytes 1048576..1048584", "external_extra_keys": "'__class__'",
                "huge_declared_dims": "declares [2147483648, 2147483648]", "constant_of_shape_bomb": "memory limit",
                "loop_bomb": f"within {PROBE_TIMEOUT_S} s", "nested_if": "is not a readable ONNX model",
                "cycle": "topologically sorted", "recursive_function": "Cycle detected",
                "custom_domain": "never loads custom-op libraries", "ir_version_99": "IR version 99"}
    for case, message in expected.items():
        folder = tmp_path / case
        folder.mkdir()
        with pytest.raises(OnnxpackError, match=None) as raised:
            untrusted.trust(hostile.CASES[case](folder))
        assert message in raised.value.message, (case, raised.value.message)


def test_a_good_graph_is_probed_once_then_remembered(package_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(untrusted, "_cache_dir", lambda: tmp_path / "cache")
    calls = []
    monkeypatch.setattr(untrusted, "probe", lambda path: calls.append(path))
    untrusted.trust(package_dir / "model.onnx")
    untrusted.trust(package_dir / "model.onnx")
    assert len(calls) == 1 and len(list((tmp_path / "cache").iterdir())) == 1


def test_the_probe_runs_a_real_model_in_a_subprocess(package_dir):
    untrusted.probe(package_dir / "model.onnx")  # no error: a real classifier loads and runs


def test_pickle_payloads_are_not_run(trained_run, tmp_path):
    """A checkpoint carrying a pickle payload: loading it must not run the payload."""
    import pickle

    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.ckpt"
    with open(bad, "wb") as f:
        torch.save({"state_dict": Payload()}, f, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    result = CliRunner().invoke(app, ["export", str(bad), "--out", str(tmp_path / "pkg")])
    assert result.exit_code == 1 and result.output.startswith("error: ") and not marker.exists(), result.output
    assert not (tmp_path / "pkg").exists()


@pytest.mark.parametrize("case", ["random_bytes", "loop_bomb", "constant_of_shape_bomb"])
def test_serve_exits_with_one_line_on_a_package_it_cannot_serve(package_dir, tmp_path, case):
    package = hostile_package(package_dir, tmp_path, case)
    env = {**os.environ, "ONNXPACK_PROBE_TIMEOUT": str(PROBE_TIMEOUT_S)}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "onnxpack", "serve", str(package), "--port", "0"],
                            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S + 60, env=env)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert time.monotonic() - started < PROBE_TIMEOUT_S + 30
    assert signal.SIGTERM  # (the SIGTERM-while-stuck case is in test_serve.py)
