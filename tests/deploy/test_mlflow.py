"""deploy/mlflow.py and `onnxpack mlflow log`: against a real `mlflow server` (SQLite store) on loopback,
the logged pyfunc model and `mlflow models serve` answer exactly as `onnxpack predict` does; the
embedded default is a local file store; a changed artifact is refused on load; an unreachable store
and a folder that is not a package are one line; `train --logger mlflow` logs validation metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import one_error_line
from live import HOST, free_port, wait_until

pytest.importorskip("mlflow", reason="needs onnxpack[mlflow] (the test extra installs it)")
pytest.importorskip("pandas", reason="needs onnxpack[mlflow] (the test extra installs it)")

import mlflow
import pandas as pd

from onnxpack.cli import app
from onnxpack.core.errors import PackageError
from onnxpack.core.package import Package
from onnxpack.deploy.mlflow import run_metrics, store_env

TEXTS = ["The boy is sitting on a bench.", "Him saw she.", "the book was written by john", "go"]
BIN = Path(sys.executable).parent
# Subprocesses find the venv's console scripts (`mlflow models serve` execs `uvicorn`) and never the hub.
ENV = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
URI = re.compile(r"(runs:/\S+|models:/\S+|file://\S+)")


@contextlib.contextmanager
def started(args: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None,
            timeout: float = 90) -> Iterator[subprocess.Popen]:
    """A server process in its own session, ready when `ready_url` answers 200; always terminated."""
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env or ENV, start_new_session=True)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{args[:4]} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            return httpx.get(ready_url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout=timeout, what=" ".join(args[2:4]))
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """`mlflow server` on a free loopback port with a SQLite store, as a team runs it."""
    if importlib.util.find_spec("sqlalchemy") is None:
        pytest.skip("`mlflow server` needs the full mlflow package: pip install -e '.[test]' brings it")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--default-artifact-root", str(root / "artifacts"), "--host", HOST, "--port", str(port),
            "--workers", "1"]
    with started(args, f"http://{HOST}:{port}/health", root / "server.log"):
        yield f"http://{HOST}:{port}"


def invoke(runner, *args: str):
    return runner.invoke(app, [str(a) for a in args])


def uris(output: str) -> dict[str, str]:
    """`mlflow log`'s lines, `key: value`."""
    return dict(line.split(": ", 1) for line in output.splitlines() if ": " in line and not line.startswith("run "))


def predict_cli(runner, package: Path, *texts: str, pair: bool = False) -> list[dict]:
    result = invoke(runner, "predict", package, *(["--pair"] if pair else []), *texts)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def answers(frame: pd.DataFrame) -> list[dict]:
    """A pyfunc DataFrame as predict's objects (label, score, scores)."""
    assert list(frame.columns)[:3] == ["label", "score", "scores"]
    return [{"label": r["label"], "score": r["score"], "scores": dict(r["scores"])} for r in frame.to_dict("records")]


def strip(results: list[dict]) -> list[dict]:
    return [{k: r[k] for k in ("label", "score", "scores")} for r in results]


@pytest.fixture(scope="module")
def logged(server, package_dir) -> dict[str, str]:
    """The tiny package logged to the server and registered, through the CLI."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["mlflow", "log", str(package_dir), "--tracking-uri", server,
                                      "--register", "tiny-cola", "--experiment", "tests"])
    assert result.exit_code == 0, (result.output, result.exception)
    lines = uris(result.stdout)
    assert re.fullmatch(r"runs:/[0-9a-f]{32}/model", lines["model"]), result.stdout
    assert re.fullmatch(r"models:/tiny-cola/\d+", lines["registered"]), result.stdout
    return lines


@contextlib.contextmanager
def tracking(uri: str) -> Iterator[None]:
    with store_env(uri):
        yield


def test_the_logged_model_answers_as_predict_from_the_server_and_the_registry(runner, server, logged, package_dir):
    expected = strip(predict_cli(runner, package_dir, *TEXTS))
    with tracking(server):
        for uri in (logged["model"], logged["registered"]):
            model = mlflow.pyfunc.load_model(uri)
            assert answers(model.predict(pd.DataFrame({"text": TEXTS}))) == expected
        signature = model.metadata.signature
        assert signature.inputs.input_names() == ["text"]
        assert signature.outputs.input_names() == ["label", "score", "scores"]
        client = mlflow.MlflowClient(server)
        run = client.get_run(logged["model"].split("/")[1])
        version = client.get_model_version("tiny-cola", logged["registered"].rsplit("/", 1)[1])
    manifest = Package.open(package_dir).manifest
    assert run.data.metrics["parity.max_abs_diff"] == manifest.parity["max_abs_diff"]
    assert run.data.params["labels"] == ",".join(manifest.labels)
    assert run.data.tags["onnxpack.package"] == "tiny-cola"
    assert version.run_id == run.info.run_id and version.status == "READY"


def test_mlflow_models_serve_answers_as_predict(runner, server, logged, package_dir, tmp_path):
    expected = strip(predict_cli(runner, package_dir, *TEXTS))
    port = free_port()
    args = [sys.executable, "-m", "mlflow", "models", "serve", "-m", logged["registered"], "--env-manager", "local",
            "--host", HOST, "-p", str(port)]
    with started(args, f"http://{HOST}:{port}/ping", tmp_path / "serve.log", env=ENV | {"MLFLOW_TRACKING_URI": server}):
        body = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}
        response = httpx.post(f"http://{HOST}:{port}/invocations", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == expected
        wrong = httpx.post(f"http://{HOST}:{port}/invocations", json={"dataframe_records": [{"txt": "x"}]}, timeout=30)
        assert wrong.status_code == 400 and "text" in wrong.json()["message"]


def test_a_pair_multi_label_model_reads_text_and_text_pair(runner, tiny_model_dir, tmp_path, monkeypatch):
    from conftest import LARGE_WEIGHTS_ATOL, tiny_family_folder

    from onnxpack.core.config import ExportConfig
    from onnxpack.pytorch.export import export

    folder = tiny_family_folder("bert", tiny_model_dir, tmp_path / "hf", ["a", "b", "c"],
                                problem_type="multi_label_classification", initializer_range=0.5)
    package = export(folder, tmp_path / "pkg", ExportConfig(pairs=True, atol=LARGE_WEIGHTS_ATOL)).root
    firsts, seconds = ["the cat sat on the mat", "go"], ["a dog barked at it", "the book was written by john"]
    result = invoke(runner, "mlflow", "log", package, "--tracking-uri", (tmp_path / "mlruns").as_uri())
    assert result.exit_code == 0, result.output
    model = mlflow.pyfunc.load_model(uris(result.stdout)["files"])  # a file store's files: no tracking store needed
    assert model.metadata.signature.inputs.input_names() == ["text", "text_pair"]
    frame = model.predict(pd.DataFrame({"text": firsts, "text_pair": seconds}))
    expected = predict_cli(runner, package, *(t for p in zip(firsts, seconds) for t in p), pair=True)
    assert answers(frame) == strip(expected)
    assert [list(x) for x in frame["labels"]] == [r["labels"] for r in expected]
    with pytest.raises(Exception, match="text_pair"):  # MLflow's schema check names the missing column
        model.predict(pd.DataFrame({"text": firsts}))


def test_the_default_store_is_a_local_file_store_whose_printed_uri_loads_in_a_fresh_process(
        runner, package_dir, tmp_path, monkeypatch):
    """No --tracking-uri and no $MLFLOW_TRACKING_URI: ./mlruns, a file store (MLflow's own default is a
    SQLite file). The first URI printed loads in a process that only names the store, as a user's does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = invoke(runner, "mlflow", "log", package_dir)
    assert result.exit_code == 0, result.output
    lines = uris(result.stdout)
    assert lines["files"].startswith((tmp_path / "mlruns").as_uri() + "/")
    assert re.fullmatch(r"runs:/[0-9a-f]{32}/model", lines["model"])
    assert not (tmp_path / "mlflow.db").exists()
    first = URI.search(result.stdout + result.stderr).group(1)
    code = ("import sys, json, mlflow, pandas as pd\n"
            f"mlflow.set_tracking_uri({(tmp_path / 'mlruns').as_uri()!r})\n"
            f"model = mlflow.pyfunc.load_model({first!r})\n"
            f"print(json.dumps(model.predict(pd.DataFrame({{'text': {TEXTS!r}}})).to_dict('records')))\n")
    env = {k: v for k, v in ENV.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert [{"label": r["label"], "score": r["score"], "scores": r["scores"]} for r in got] == \
        strip(predict_cli(runner, package_dir, *TEXTS))


def test_a_changed_artifact_is_refused_on_load_with_one_line(runner, package_dir, tmp_path):
    result = invoke(runner, "mlflow", "log", package_dir, "--tracking-uri", (tmp_path / "mlruns").as_uri())
    assert result.exit_code == 0, result.output
    files = uris(result.stdout)["files"]
    onnx_file = Path(files.removeprefix("file://")) / "artifacts" / "package" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(PackageError, match="^package file model.onnx was altered") as error:
        mlflow.pyfunc.load_model(files)
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("server_kind", ["closed port", "silent"])
def test_an_unreachable_tracking_server_is_one_line_within_30_s(package_dir, server_kind):
    """A port nobody listens on, and one that accepts connections and never answers (a hung server, a
    firewall that swallows packets): `onnxpack mlflow log` as a user runs it, one line on stderr."""
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        if server_kind == "silent":
            listener.listen(8)  # the kernel completes the handshake; nothing ever reads or answers
        port = listener.getsockname()[1]
        uri = f"http://{HOST}:{port}"
        started_at = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "onnxpack", "mlflow", "log", str(package_dir), "--tracking-uri",
                               uri], capture_output=True, text=True, env=ENV, timeout=60, check=False)
        seconds = time.monotonic() - started_at
    assert done.returncode == 1 and done.stdout == "", (done.returncode, done.stdout)
    reason = {"closed port": "refused the connection", "silent": "did not answer in time"}[server_kind]
    assert done.stderr.splitlines() == [(f"error: MLflow tracking server {uri} {reason} (hint: check --tracking-uri: "
                                         "a running `mlflow server`, or a writable file:// folder)")], done.stderr
    assert seconds < 30, seconds


@pytest.mark.parametrize("make", ["empty folder", "a file", "missing"])
def test_a_folder_that_is_not_a_package_is_one_line(runner, tmp_path, make):
    target = tmp_path / "not-a-package"
    if make == "empty folder":
        target.mkdir()
    elif make == "a file":
        target.write_text("hello")
    result = invoke(runner, "mlflow", "log", target, "--tracking-uri", (tmp_path / "mlruns").as_uri())
    line = one_error_line(result)
    assert "not a package" in line or "not a directory" in line, line
    assert not (tmp_path / "mlruns").exists()  # refused before MLflow was touched


def test_run_metrics_flatten_every_variant_figure_and_parity(package_dir):
    package = Package.open(package_dir)
    variants = {"fp32": {"file": "model.onnx", "mcc": 0.5, "items_per_s": 900.0, "batch_invariant": True,
                         "cpu": {"avx2": True}},
                "int8-cascade": {"file": "model.int8-cascade.onnx", "agreement": 0.997, "mcc_drop": 0.01, "n": 1043}}
    package.manifest = dataclasses.replace(package.manifest, variants=variants)
    metrics = run_metrics(package)
    assert metrics["int8-cascade.agreement"] == 0.997 and metrics["int8-cascade.n"] == 1043.0
    assert metrics["fp32.mcc"] == 0.5 and metrics["parity.max_abs_diff"] == package.manifest.parity["max_abs_diff"]
    assert not [k for k in metrics if k.endswith((".file", ".batch_invariant", ".cpu", ".avx2"))]


def test_train_logger_mlflow_logs_validation_metrics(small_cola, tiny_model_dir, tmp_path, monkeypatch):
    from onnxpack.core.config import TrainConfig
    from onnxpack.pytorch.train import fit

    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    result = fit(TrainConfig(data=str(small_cola), model=str(tiny_model_dir), epochs=1, batch_size=64,
                             max_length=32, logger="mlflow"), tmp_path / "run")
    assert result.tracking_uri == store and result.mlflow_run
    with tracking(store):
        run = mlflow.MlflowClient(store).get_run(result.mlflow_run)
        history = mlflow.MlflowClient(store).get_metric_history(result.mlflow_run, "val_loss")
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert {"val_loss", "val_mcc", "best_val_mcc", "best_val_loss"} <= set(run.data.metrics), run.data.metrics
    assert run.data.metrics["best_val_mcc"] == pytest.approx(result.metrics["val_mcc"])
    assert len(history) >= 2  # one per validation: the curve, not only the end
    assert (tmp_path / "run" / "logs" / "metrics.csv").is_file()  # the CSV log is still written


def test_train_logger_is_checked(runner, tmp_path):
    line = one_error_line(invoke(runner, "train", "--out", tmp_path / "run", "--logger", "wandb"))
    assert line == "error: --logger must be csv or mlflow, got 'wandb'"
