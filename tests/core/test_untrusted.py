"""untrusted.py: every malformed or hostile model file in tests/hostile.py is refused by every command
that reads a graph, with one line and exit status 1, no traceback, no hang, and nothing written."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import hostile
import numpy as np
import onnx
import pytest
from conftest import hostile_package
from live import HTTP_ONLY
from onnx import numpy_helper
from typer.testing import CliRunner

from onnxpack.cli import app
from onnxpack.core import loops, untrusted
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import MANIFEST
from onnxpack.serve import create_app

PROBE_TIMEOUT_S = 5  # the tests' limit for a first run (the default: 15 s + 10 s per GB of graph)
ACCEPTANCE_S = 5  # ../shared/acceptance/operations: a Loop bomb refused within 5 s, with the default limit


@pytest.fixture(autouse=True)
def short_probe(monkeypatch):
    monkeypatch.setenv("ONNXPACK_PROBE_TIMEOUT", str(PROBE_TIMEOUT_S))  # for this process and the CLI's children


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
    "diff": lambda pkg, out: ["diff", str(pkg), str(pkg), "--json", str(out / "diff.json")],
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
                "loop_bomb": "Loop node (unnamed, output 'acc') runs 4611686018427387904 turns (a constant trip count "
                             "over 1048576, and a condition its body keeps true); onnxpack refuses graphs that cannot finish",
                "loop_bomb_in_if": "Loop node 'hidden' runs 1099511627776 turns (a constant trip count over 1048576)",
                "loop_bomb_folded": "Loop node 'folded' runs 4611686018427387904 turns",
                "endless_loop": "Loop node 'forever' never ends (no trip count, and a condition its body keeps true)",
                "nested_loop_bomb": "Loop node 'inner' runs 4194304 turns in all (2048 on each of 2048 turns of the "
                                    "Loop node 'outer'; over 1048576)",
                "probe_loop_bomb": f"within {PROBE_TIMEOUT_S} s", "nested_if": "is not a readable ONNX model",
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
    monkeypatch.setattr(untrusted, "probe", lambda path, size_bytes=None: calls.append(path))
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


@pytest.mark.parametrize("case", ["random_bytes", "loop_bomb", "probe_loop_bomb", "constant_of_shape_bomb"])
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


# ---- Loops that cannot finish: refused by reading the graph (loops.py), not by the probe's time limit ----

def test_the_acceptance_loop_bomb_is_refused_at_once_by_predict_and_serve(package_dir, tmp_path, monkeypatch):
    """../shared/acceptance/operations' Loop of 2^62 turns, in a package with matching hashes, under the
    default probe limit (no $ONNXPACK_PROBE_TIMEOUT): `predict` and `serve` as users run them, `optimize`
    and `inspect` in process; one line each, exit 1, and predict within the acceptance's 5 s."""
    monkeypatch.delenv("ONNXPACK_PROBE_TIMEOUT")
    package = hostile_package(package_dir, tmp_path, "acceptance_loop_bomb")
    message = ("Loop node (unnamed, output 'vf') runs 4611686018427387904 turns (a constant trip count over 1048576, "
               "and a condition its body keeps true); onnxpack refuses graphs that cannot finish (hint: a Loop must end")
    env = {k: v for k, v in os.environ.items() if k != "ONNXPACK_PROBE_TIMEOUT"}
    for command, limit in ((["predict", str(package), "a sentence"], ACCEPTANCE_S),
                           (["serve", str(package), "--port", "0", "--grpc-port", "0"], untrusted.PROBE_BASE_S)):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "onnxpack", *command], capture_output=True, text=True,
                                timeout=60, env=env)
        took = time.monotonic() - started
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and message in lines[0], (command[0], lines)
        assert took < limit, (command[0], took)  # under the probe's own 15 s: refused by looking
    for args in (["optimize", str(package), "--variants", "optimized"], ["inspect", str(package)],
                 ["inspect", str(package / "model.onnx")]):
        result = CliRunner().invoke(app, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], (args[0], result.output)


def test_finite_loops_pass_the_static_check(tmp_path, monkeypatch):
    """Not refused by looking: 10 constant turns; torch.onnx's `while` (a 2^63 - 1 cap, a condition the body
    computes); a trip count from the input (two graphs). The first two also pass their first run."""
    monkeypatch.setattr(untrusted, "_cache_dir", lambda: tmp_path / "cache")
    for case in ("small_loop", "while_loop", "input_dependent_loop", "probe_loop_bomb"):
        folder = tmp_path / case
        folder.mkdir()
        untrusted.check_file(getattr(hostile, case)(folder))
        if case in ("small_loop", "while_loop"):
            untrusted.trust(folder / "model.onnx")


def test_the_bound_and_what_is_folded(tmp_path):
    """MAX_TURNS turns pass and one more is refused, however the trip count is written; a condition the body
    computes from data makes the trip count a cap."""
    model = onnx.load(str(hostile.small_loop(tmp_path)))
    trips = next(t for t in model.graph.initializer if t.name == "trips")
    for count, refused in ((loops.MAX_TURNS, False), (loops.MAX_TURNS + 1, True), (-(1 << 62), False)):
        trips.CopyFrom(numpy_helper.from_array(np.array(count, np.int64), "trips"))
        assert (loops.endless_loop(model) is not None) == refused, count
    # 2^10 * 2^10 + 1 through Reshape, Unsqueeze, Squeeze, Cast from int32, Add: folded
    model.graph.initializer.remove(trips)
    model.graph.initializer.append(numpy_helper.from_array(np.array([1 << 10], np.int32), "k"))
    chain = [
        onnx.helper.make_node("Constant", [], ["one_i"], value_int=1),
        onnx.helper.make_node("Cast", ["k"], ["k64"], to=onnx.TensorProto.INT64),
        onnx.helper.make_node("Mul", ["k64", "k64"], ["kk"]),
        onnx.helper.make_node("Unsqueeze", ["kk", "axes"], ["kk2"]),
        onnx.helper.make_node("Squeeze", ["kk2", "axes"], ["kk1"]),
        onnx.helper.make_node("Reshape", ["kk1", "scalar"], ["kk0"]),
        onnx.helper.make_node("Add", ["kk0", "one_i"], ["trips"])]
    nodes = chain + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "axes"),
                                    numpy_helper.from_array(np.zeros(0, np.int64), "scalar")])
    onnx.checker.check_model(model)
    assert "runs 1048577 turns" in (loops.endless_loop(model) or "")
    body = next(n for n in model.graph.node if n.op_type == "Loop").attribute[0].g
    body.node[0].CopyFrom(onnx.helper.make_node("Greater", ["acc_in", "one"], ["flag"]))
    body.node.insert(1, onnx.helper.make_node("Not", ["flag"], ["cond_out"]))  # ends once acc > 1: data decides
    onnx.checker.check_model(model)
    assert loops.endless_loop(model) is None


def test_the_probe_limit_grows_with_the_graph(tmp_path, monkeypatch):
    """15 s + 10 s per GB of graph file and external data; $ONNXPACK_PROBE_TIMEOUT overrides it; a bad value
    is one line; the probe uses the limit for the size trust() measured."""
    monkeypatch.delenv("ONNXPACK_PROBE_TIMEOUT")
    assert untrusted.probe_timeout(0) == 15
    assert untrusted.probe_timeout(91_000_000) == pytest.approx(15.91)  # the MiniLM package
    assert untrusted.probe_timeout(3_500_000_000) == pytest.approx(50)
    monkeypatch.setenv("ONNXPACK_PROBE_TIMEOUT", "7.5")
    assert untrusted.probe_timeout(3_500_000_000) == 7.5
    for bad in ("soon", "0", "-3", "inf", "nan"):
        monkeypatch.setenv("ONNXPACK_PROBE_TIMEOUT", bad)
        with pytest.raises(OnnxpackError, match="is not a number of seconds"):
            untrusted.probe_timeout(0)
    monkeypatch.delenv("ONNXPACK_PROBE_TIMEOUT")
    (tmp_path / "w.bin").write_bytes(b"\0" * 8)
    path = hostile._external(tmp_path, "w.bin")
    assert untrusted.graph_bytes(path, untrusted.check_file(path)) == path.stat().st_size + 8

    def timed_out(*args, timeout, **kwargs):
        raise subprocess.TimeoutExpired(args[0], timeout)

    monkeypatch.setattr(untrusted.subprocess, "run", timed_out)
    with pytest.raises(OnnxpackError, match="within 35 s"):
        untrusted.probe(path, 2_000_000_000)


def test_an_ort_file_is_probed_not_parsed_as_a_protobuf(package_dir, tmp_path, monkeypatch):
    """An .ort (ONNX Runtime's FlatBuffers format, export-mobile's) skips the protobuf checks; what is not a
    sound one (garbage, cut short, an ONNX protobuf under the name) costs one line, from its header or the probe."""
    import onnxruntime as ort

    from onnxpack.core import ortformat

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing remembered from other runs
    good = tmp_path / "good.ort"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(good)
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(package_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    untrusted.trust(good)
    assert ortformat.graph_inputs(good) == [("input_ids", "int64"), ("attention_mask", "int64")]
    data = good.read_bytes()
    middle = bytearray(data)
    middle[len(data) // 3:len(data) // 3 + 4096] = os.urandom(4096)
    cases = {"empty.ort": b"", "garbage.ort": b"\x10\x00\x00\x00ORTM" + os.urandom(2000),
             "not-ort.ort": os.urandom(3000), "half.ort": data[:len(data) // 2], "onnx.ort": (package_dir / "model.onnx").read_bytes(),
             "scrambled.ort": bytes(middle)}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        try:
            untrusted.trust(path)
        except OnnxpackError as e:
            assert "\n" not in e.message and str(path) in e.message, (name, e.message)
        else:
            assert name == "scrambled.ort", name  # random weights may still load; never a crash of this process


def test_a_verdict_holds_for_the_bytes_read_as_one_format(package_dir, tmp_path):
    """ONNX Runtime reads a file by its name: the same bytes refused as an .ort are still trusted as an
    .onnx, and trusted .onnx bytes renamed .ort are still refused."""
    as_ort = tmp_path / "model.ort"
    shutil.copyfile(package_dir / "model.onnx", as_ort)
    for _ in range(2):  # the second time from the verdict kept for those bytes
        with pytest.raises(OnnxpackError, match="not an ORT-format model"):
            untrusted.trust(as_ort)
    untrusted.trust(package_dir / "model.onnx")
