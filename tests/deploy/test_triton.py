"""triton.py and kserve.py: the repository parses as Triton's ModelConfig, its checks catch
what the parse misses, its Python steps tokenize and label as `predict` does, and a real Triton
server (the one PyPI's nvidia-pytriton bundles) answers raw text with `predict`'s labels."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import provision
from typer.testing import CliRunner

from onnxpack.cli import app
from onnxpack.core.config import ServingConfig
from onnxpack.core.errors import OnnxpackError
from onnxpack.core.package import Package
from onnxpack.deploy import kserve
from onnxpack.deploy.triton import (
    model_names,
    read_config,
    validate,
    write_repository,
)
from onnxpack.runtime.feed import encode, package_tokenizer
from onnxpack.runtime.predictor import Predictor

TEXTS = ["the book was written by john", "him saw she", "go", "what did you wonder whether mary bought",
         " ".join(["cat"] * 300)]  # the last is truncated to max_length


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.parent.parent.name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def repo(package_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "models"
    write_repository(package_dir, out)
    return out


def test_layout_and_every_config_parses_as_triton_model_config(repo, package_dir):
    names = model_names("tiny-cola")
    assert sorted(p.name for p in repo.iterdir()) == sorted(names.values())
    configs = validate(repo)
    model, ensemble = configs[names["model"]], configs[names["ensemble"]]
    assert model.backend == "onnxruntime" and model.max_batch_size == 32 and model.dynamic_batching is not None
    assert [list(t.dims) for t in model.input] == [[-1], [-1]] and list(model.output[0].dims) == [2]
    assert (repo / names["model"] / "labels.txt").read_text().split() == Package.open(package_dir).manifest.labels
    assert [t.name for t in ensemble.input] == ["text"] and ensemble.input[0].data_type == 13  # TYPE_STRING
    assert [t.name for t in ensemble.output] == ["logits", "label", "score"]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        names["tokenizer"], names["model"], names["postprocess"]]
    assert (repo / names["ensemble"] / "1").is_dir()  # Triton loads no ensemble without a version folder


def test_tokenizer_step_gives_the_feed_predict_builds_padded_to_max_length(repo, package_dir):
    folder = repo / "tiny-cola_tokenizer" / "1"
    step = _module(folder / "model.py")
    m = Package.open(package_dir).manifest
    tokenizer = step.fixed_length_tokenizer(str(folder / "tokenizer.json"), m.max_length, m.pad_token_id)
    got = step.encode(tokenizer, TEXTS, ["input_ids", "attention_mask"])
    want = encode(package_tokenizer(Package.open(package_dir).tokenizer_path, m.max_length, m.pad_token_id),
                  TEXTS, ["input_ids", "attention_mask"])
    assert got["input_ids"].shape == (len(TEXTS), m.max_length)
    width = want["input_ids"].shape[1]
    np.testing.assert_array_equal(got["input_ids"][:, :width], want["input_ids"])
    np.testing.assert_array_equal(got["attention_mask"][:, :width], want["attention_mask"])
    assert (got["input_ids"][:, width:] == m.pad_token_id).all() and (got["attention_mask"][:, width:] == 0).all()
    with pytest.raises(ValueError, match="text 1 is empty"):
        step.decode_texts(np.array([[b"fine"], [b"  "]], dtype=object), "text")


def test_postprocess_step_gives_predicts_label_and_score(repo, package_dir):
    step = _module(repo / "tiny-cola_postprocess" / "1" / "model.py")
    with Predictor(package_dir) as predictor:
        logits = predictor.predict_logits(TEXTS)
        want = predictor.predict(TEXTS)
        out = step.label_and_score(logits, predictor.labels, False, [])
    assert [v[0].decode() for v in out["label"]] == [w["label"] for w in want]
    np.testing.assert_allclose(out["score"][:, 0], [w["score"] for w in want], atol=1e-6)
    multi = step.label_and_score(np.array([[3.0, -3.0, 0.2]]), ["a", "b", "c"], True, [0.5, 0.5, 0.6])
    assert multi["label"][0][0] == b"a" and json.loads(multi["labels"][0][0]) == ["a"]


def _edit(repo: Path, model: str, old: str, new: str) -> None:
    path = repo / model / "config.pbtxt"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("model, old, new, message", [
    ("tiny-cola", "max_batch_size: 32", "max_batch_size: 32\nnot_a_field: 1", "not a valid Triton model config"),
    ("tiny-cola", "dims: -1\n", "dims: -1\n  dims: 4\n", "has dims \\[-1, 4\\] in the config but \\[-1\\]"),
    ("tiny-cola", "dims: 2\n", "dims: 3\n", "does not hold one label per logit \\(3\\)"),
    ("tiny-cola", 'name: "input_ids"', 'name: "ids"', "are not the graph's"),
    ("tiny-cola", "TYPE_INT64", "TYPE_INT32", "is TYPE_INT32 in the config but INT64"),
    ("tiny-cola_text", 'value: "input_ids"\n    }\n  }\n  step', 'value: "ids"\n    }\n  }\n  step',
     "reads 'input_ids' before any step makes it"),
    ("tiny-cola_text", 'model_name: "tiny-cola_postprocess"', 'model_name: "gone"', "'gone' is not in the repository"),
    ("tiny-cola_text", "max_batch_size: 32", "max_batch_size: 64", "exceeds step"),
    ("tiny-cola_postprocess", "dims: 2\n", "dims: 5\n", "is TYPE_FP32 \\[2\\] where it is made but TYPE_FP32 \\[5\\]"),
    ("tiny-cola", "backend:", 'model_operations { op_library_filename: "/tmp/evil.so" }\nbackend:', "custom operations"),
])
def test_validation_catches_what_the_parse_misses(repo, tmp_path, model, old, new, message):
    copy = Path(shutil.copytree(repo, tmp_path / "models"))
    _edit(copy, model, old, new)
    with pytest.raises(OnnxpackError, match=message):
        validate(copy)


def test_a_graph_without_a_dynamic_batch_axis_is_refused(repo, tmp_path):
    import onnx

    copy = Path(shutil.copytree(repo, tmp_path / "models"))
    path = copy / "tiny-cola" / "1" / "model.onnx"
    proto = onnx.load(str(path))
    for tensor in list(proto.graph.input) + list(proto.graph.output):
        tensor.type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(proto, str(path))
    with pytest.raises(OnnxpackError, match="needs a dynamic first axis"):
        validate(copy)


def test_folder_rules(package_dir, tmp_path):
    occupied = tmp_path / "occupied"
    (occupied / "someone_elses_model").mkdir(parents=True)
    with pytest.raises(OnnxpackError, match="already holds someone_elses_model"):
        write_repository(package_dir, occupied)
    assert [p.name for p in occupied.iterdir()] == ["someone_elses_model"]
    with pytest.raises(OnnxpackError, match="does not exist"):
        write_repository(package_dir, tmp_path / "missing" / "models")
    out = tmp_path / "models"
    write_repository(package_dir, out)
    (out / "tiny-cola" / "labels.txt").write_text("stale\n")
    write_repository(package_dir, out, ServingConfig(max_batch=8, instances=2))  # a rerun replaces its own models
    assert read_config(out / "tiny-cola" / "config.pbtxt").instance_group[0].count == 2
    assert (out / "tiny-cola" / "labels.txt").read_text() != "stale\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "occupied"]  # no temp folder left


def test_pad_to_a_shorter_fixed_length(package_dir, tmp_path):
    configs = validate(write_repository(package_dir, tmp_path / "m", ServingConfig(pad_to=16))["repository"])
    tokenizer = configs["tiny-cola_tokenizer"]
    assert [list(t.dims) for t in tokenizer.output] == [[16], [16]]
    assert tokenizer.parameters["max_length"].string_value == "16"
    with pytest.raises(OnnxpackError, match="--pad-to 999 must be between 2 and the package's max_length 64"):
        write_repository(package_dir, tmp_path / "n", ServingConfig(pad_to=999))


def test_pair_and_multi_label_packages(tmp_path, tiny_model_dir):
    from conftest import tiny_family_folder

    from onnxpack.core.config import ExportConfig
    from onnxpack.pytorch.export import export

    folder = tiny_family_folder("bert", tiny_model_dir, tmp_path / "hf", ["x", "y", "z"],
                                problem_type="multi_label_classification")
    export(folder, tmp_path / "pkg", ExportConfig(pairs=True, name="nli"))
    configs = validate(write_repository(tmp_path / "pkg", tmp_path / "models")["repository"])
    ensemble = configs["nli_text"]
    assert [t.name for t in ensemble.input] == ["text", "text_pair"]
    assert [t.name for t in ensemble.output] == ["logits", "label", "score", "labels"]
    assert [t.name for t in configs["nli"].input] == ["input_ids", "attention_mask", "token_type_ids"]


def test_kserve_document(tmp_path):
    doc = kserve.inference_service("Tiny_Cola", "gs://bucket/models", "24.09", gpu=True)
    kserve.write(tmp_path / "isvc.yaml", doc)
    loaded = yaml.safe_load((tmp_path / "isvc.yaml").read_text())
    model = loaded["spec"]["predictor"]["model"]
    assert loaded["metadata"]["name"] == "tiny-cola" and model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] == "triton" and model["storageUri"] == "gs://bucket/models"
    assert model["runtimeVersion"] == "24.09-py3" and model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for field, value, message in (("storageUri", "/local/path", "storageUri"), ("protocolVersion", "v1", "v2"),
                                  ("replicas", 3, "unknown fields")):
        bad = json.loads(json.dumps(doc))
        bad["spec"]["predictor"]["model"][field] = value
        with pytest.raises(OnnxpackError, match=message):
            kserve.validate(bad)


def test_cli_export_serving(package_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["export-serving", str(package_dir), "--triton", str(tmp_path / "models"),
                                 "--kserve", str(tmp_path / "isvc.yaml"), "--max-batch", "16"])
    assert result.exit_code == 0, result.output
    assert "tiny-cola_text" in result.output and (tmp_path / "isvc.yaml").is_file()
    assert read_config(tmp_path / "models" / "tiny-cola_text" / "config.pbtxt").max_batch_size == 16
    (tmp_path / "occupied" / "other_model").mkdir(parents=True)
    for args, message in ((["--max-batch", "0"], "--max-batch must be at least 1, got 0"),
                          (["--variant", "int4"], "has no variant 'int4'"),
                          (["--target", "triton==99.01"], "unknown Triton release 99.01"),
                          (["--target", "onnxruntime==1.20"], "is not a Triton release"),
                          (["--target", "triton==22.03"], "cannot load fp32 (model.onnx): ai.onnx opset 18 > 15"),
                          (["--kserve", str(tmp_path / "nowhere" / "x.yaml")], "does not exist"),
                          (["--model-backend", "tensorrt"], "unknown model backend 'tensorrt'"),
                          (["--triton", str(tmp_path / "occupied")], "already holds other_model")):
        before = sorted(p.name for p in tmp_path.iterdir())
        result = runner.invoke(app, ["export-serving", str(package_dir), "--triton", str(tmp_path / "m2"), *args])
        assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
        assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: ")
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
        assert [p.name for p in (tmp_path / "occupied").iterdir()] == ["other_model"]


# --- a real Triton ------------------------------------------------------------------------------------------

# A Python environment for Triton's Python-backend stub: nvidia-pytriton's Triton 2.51 server, and what
# the repository's Python steps import. Its own venv, because that stub is built against numpy 1. The
# first run builds it at the project root; $ONNXPACK_TRITON_ENV names one of your own, used as it is.
OWN_ENV = os.environ.get("ONNXPACK_TRITON_ENV")
TRITON_ENV = Path(OWN_ENV or Path(__file__).parents[2] / ".venv-triton")
TRITON_REQUIREMENTS = ["nvidia-pytriton==0.7.0", "onnxruntime", "tokenizers"]
INSTALL = f"python3 -m venv {TRITON_ENV} && {TRITON_ENV}/bin/pip install {' '.join(TRITON_REQUIREMENTS)}"
READY = TRITON_ENV / ".onnxpack-ready"  # written last: the venv is complete
LOCK = TRITON_ENV / ".onnxpack-setup.lock"  # inside the venv's folder, which .gitignore already covers


def _build_triton_env() -> None:
    """The venv, built in place (a venv cannot be moved once made): the lock is held, READY is not there."""
    for path in TRITON_ENV.iterdir():  # what a killed build left
        if path != LOCK:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    python = getattr(sys, "_base_executable", sys.executable)  # the Python this venv's was made from
    for command in ([python, "-m", "venv", str(TRITON_ENV)],
                    [str(TRITON_ENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                     *TRITON_REQUIREMENTS]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"`{' '.join(command[1:4])}` failed: {last}")
    READY.write_text(" ".join(TRITON_REQUIREMENTS) + "\n")


@pytest.fixture(scope="session")
def triton_env(pytestconfig) -> Path:
    """TRITON_ENV, built by the first run that needs it (under a lock: parallel runs wait for it)."""
    if not OWN_ENV:
        try:
            provision(pytestconfig, LOCK, READY.is_file, _build_triton_env,
                      f"setting up {TRITON_ENV.name} for the real-Triton test (first run only, ~1-2 min)")
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"could not set up {TRITON_ENV} for the real-Triton test ({e}); it needs PyPI, or: {INSTALL}")
    return TRITON_ENV


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def triton(triton_env, package_dir, tmp_path_factory):
    """A real Triton (2.51, from PyPI's nvidia-pytriton wheel) serving a repository written with
    --model-backend python: that build has the Python backend but no onnxruntime backend.
    Everything listens on 127.0.0.1."""
    servers = sorted(TRITON_ENV.glob("lib/python3*/site-packages/pytriton/tritonserver"))
    if not servers or not (servers[0] / "bin" / "tritonserver").is_file():
        pytest.skip(f"needs Triton's server binary: {INSTALL}")
    server = servers[0]
    python = server.parts[-4]  # "python3.11": the stub must match the environment's Python
    root = tmp_path_factory.mktemp("tritonserver")
    backends = root / "backends" / "python"
    backends.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy(server / "backends" / "python" / name, backends)
    shutil.copy(server / "python_backend_stubs" / python.removeprefix("python") / "triton_python_backend_stub", backends)
    repo = root / "models"
    write_repository(package_dir, repo, ServingConfig(model_backend="python", max_batch=8))
    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    # The stub embeds the environment's Python: its libpython (and the wheel's own libraries), and
    # `python3` first on PATH, through which it finds the environment's site-packages.
    base = subprocess.run([TRITON_ENV / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    env["LD_LIBRARY_PATH"] = f"{server.parent.parent / 'nvidia_pytriton.libs'}:{base}"
    env["PATH"] = f"{TRITON_ENV / 'bin'}:{env.get('PATH', '')}"
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [str(server / "bin" / "tritonserver"), "--model-repository", str(repo), "--backend-directory",
         str(root / "backends"), "--http-address", "127.0.0.1", "--http-port", str(http), "--grpc-address",
         "127.0.0.1", "--grpc-port", str(grpc), "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics),
         "--allow-gpu-metrics", "false", "--allow-cpu-metrics", "false", "--exit-on-error", "true",
         "--strict-readiness", "true", "--pinned-memory-pool-byte-size", "0"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{http}")
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"tritonserver exited {process.returncode}: {(root / 'server.log').read_text()[-2000:]}")
            try:
                if client.is_server_ready():
                    break
            except Exception:  # noqa: BLE001 -- not listening yet
                pass
            assert time.monotonic() < deadline, (root / "server.log").read_text()[-2000:]
            time.sleep(0.2)
        yield types.SimpleNamespace(client=client, url=f"127.0.0.1:{http}")
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_real_triton_answers_raw_text_as_predict_does(triton, package_dir):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    texts = np.array([[t.encode()] for t in TEXTS], dtype=object)
    text = httpclient.InferInput("text", list(texts.shape), "BYTES")
    text.set_data_from_numpy(texts)
    outputs = [httpclient.InferRequestedOutput(n) for n in ("logits", "label", "score")]
    result = triton.client.infer("tiny-cola_text", [text], outputs=outputs)
    with Predictor(package_dir) as predictor:
        want = predictor.predict(TEXTS)
        want_logits = predictor.predict_logits(TEXTS)
    np.testing.assert_allclose(result.as_numpy("logits"), want_logits, atol=1e-5)
    assert [v[0].decode() for v in result.as_numpy("label")] == [w["label"] for w in want]
    np.testing.assert_allclose(result.as_numpy("score")[:, 0], [w["score"] for w in want], atol=1e-5)
    # Triton's classification extension, through labels.txt: "score:index:label" for the top class. (An
    # ensemble asked for only some outputs can fail with "unexpected deadlock": Triton issue #7482.)
    top = triton.client.infer("tiny-cola_text", [text], outputs=[httpclient.InferRequestedOutput("logits", class_count=1),
                                                          httpclient.InferRequestedOutput("label")])
    assert [v[0].decode().split(":")[2] for v in top.as_numpy("logits")] == [w["label"] for w in want]
    from conftest import (
        v2_client,  # the README's one client script, as against onnxpack serve
    )

    got = v2_client().classify(triton.url, "tiny-cola_text", TEXTS)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-5)
    blank = httpclient.InferInput("text", [1, 1], "BYTES")
    blank.set_data_from_numpy(np.array([[b"   "]], dtype=object))
    with pytest.raises(InferenceServerException, match="text 0 is empty"):
        triton.client.infer("tiny-cola_text", [blank])
