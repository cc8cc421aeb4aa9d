"""serve/prediction_log.py and the monitor end to end: every answer logged, files that appear whole
and rotate by size and age, nothing answered lost at SIGTERM, a folder it cannot write to refused in
one line; and the issue's checks on the tiny package: the validation rows replayed through a real
server pass `onnxpack monitor`, a shifted stream (texts 3x longer, another language) fails it."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import one_error_line
from live import HOST, free_port, metric, ready, running, wait_until
from typer.testing import CliRunner

from onnxpack.cli import app as cli_app
from onnxpack.core.config import ServeConfig
from onnxpack.core.data import load_splits
from onnxpack.core.errors import OnnxpackError
from onnxpack.serve import create_app
from onnxpack.serve.prediction_log import PredictionLog

LABELS = ["unacceptable", "acceptable"]


@pytest.fixture(scope="module")
def verified(tmp_path_factory, package_dir, small_cola) -> Path:
    """A copy of the tiny package with the reference profile `verify` stores."""
    from onnxpack.pytorch.verify import verify

    root = tmp_path_factory.mktemp("verified") / package_dir.name
    shutil.copytree(package_dir, root)
    verify(root, str(small_cola))
    return root


@pytest.fixture(scope="module")
def validation(small_cola) -> list[str]:
    return load_splits(str(small_cola), need_train=False).validation.texts


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]


def answer(n: int, k: int = 0) -> tuple:
    logits = np.tile(np.array([[0.0, 1.0]], dtype=np.float32), (n, 1))
    return [f"text {k}-{i}" for i in range(n)], logits, [(5 + i, 0, False) for i in range(n)], None


# ---- the writer ----

def test_every_answer_is_a_line_and_files_rotate_by_size(tmp_path):
    log = PredictionLog(tmp_path / "logs", LABELS, False, False, max_bytes=2_000, max_age_s=3600)
    log.start()
    for k in range(40):
        log.append(*answer(3, k))
        time.sleep(0.002)  # several writes, so several files
    log.close()
    files = sorted((tmp_path / "logs").iterdir())
    assert len(files) > 2 and all(f.name.startswith("predictions-") and f.suffix == ".jsonl" for f in files)
    longest = max(len(line) for f in files for line in f.read_bytes().splitlines(keepends=True))
    assert all(f.stat().st_size < 2_000 + longest for f in files)  # a new file once the bound is reached
    got = lines(tmp_path / "logs")
    assert len(got) == 120 and log.written._value.get() == 120
    first = got[0]
    assert first["sha256"] == hashlib.sha256(b"text 0-0").hexdigest() and "text" not in first
    assert (first["label"], first["score"], first["length"], first["windows"], first["unknown"], first["truncated"]) \
        == ("acceptable", pytest.approx(0.731059, abs=1e-6), 5, 1, 0, False)
    assert first["time"].endswith("Z")


def test_files_rotate_by_age_while_idle_and_texts_only_when_asked(tmp_path):
    log = PredictionLog(tmp_path, LABELS, False, True, max_bytes=1 << 30, max_age_s=0.3)
    log.start()
    try:
        log.append([("first", "second")], np.zeros((1, 2), np.float32), [(9, 1, True)], [2])
        wait_until(lambda: list(tmp_path.glob("predictions-*.jsonl")), timeout=10, what="the file to rotate")
        assert not list(tmp_path.glob(".*.tmp"))  # no request since: the file was put in place all the same
    finally:
        log.close()
    (row,) = lines(tmp_path)
    assert row["text"] == ["first", "second"] and row["sha256"] == hashlib.sha256(b"first\tsecond").hexdigest()
    assert (row["windows"], row["unknown"], row["truncated"]) == (2, 1, True)


def test_a_killed_servers_temp_file_is_put_in_place_by_the_next(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    name = f"predictions-20250101T000000-{int(dead.stdout)}-0001.jsonl"
    (tmp_path / f".{name}.tmp").write_text('{"a": 1}\n')
    log = PredictionLog(tmp_path, LABELS, False, False, max_bytes=1 << 20, max_age_s=60)
    log.start()
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.parametrize("make", [lambda p: p / "a-file" / "logs", lambda p: Path("/proc/onnxpack-logs")])
def test_a_folder_it_cannot_write_to_is_one_line(tmp_path, make):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OnnxpackError, match=r"^--log-predictions .* is not a folder this server can write to \("):
        PredictionLog(make(tmp_path), LABELS, False, False, 1 << 20, 60)


def test_serve_refuses_a_log_folder_it_cannot_write_to_in_one_line(package_dir, tmp_path):
    (tmp_path / "a-file").write_text("")
    result = CliRunner().invoke(cli_app, ["serve", str(package_dir), "--log-predictions",
                                          str(tmp_path / "a-file" / "logs")])
    assert one_error_line(result).startswith(f"error: --log-predictions {tmp_path / 'a-file' / 'logs'} is not a "
                                             "folder this server can write to (Not a directory)")


# ---- the checks, through real servers ----

def replay(base: str, texts: list[str], per_request: int = 16) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        for i in range(0, len(texts), per_request):
            assert client.post("/predict", json={"texts": texts[i:i + per_request]}).status_code == 200


def monitor(package: Path, logs: Path, *args: str):
    result = CliRunner().invoke(cli_app, ["monitor", str(package), "--input", str(logs), *args])
    assert "Traceback" not in result.output
    return result


@pytest.mark.timeout(300)
def test_validation_replayed_through_a_server_passes_and_sigterm_loses_nothing(verified, validation, tmp_path):
    """`onnxpack serve --log-predictions` fed the validation rows 16 per request, then SIGTERM (as the
    acceptance check runs it): every answer is in a finished file, and monitor finds every PSI < 0.1."""
    port, logs = free_port(), tmp_path / "logs"
    base = f"http://{HOST}:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "onnxpack", "serve", str(verified), "--host", HOST, "--port",
                             str(port), "--grpc-port", "0", "--log-predictions", str(logs)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: ready(base), what="the server to be ready")
        replay(base, validation)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert not [p.name for p in logs.iterdir() if p.name.startswith(".")]  # every file put in place
    got = lines(logs)
    assert [row["sha256"] for row in got] == [hashlib.sha256(t.encode()).hexdigest() for t in validation]
    result = monitor(verified, logs, "--json", str(tmp_path / "m.json"), "--min-texts", "50")  # 64 validation rows
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["records"] == len(validation) and report["corrupt"] == 0 and not report["drifted"]
    assert {d["quantity"] for d in report["drifts"] if d["judged"]} >= {"labels", "length", "unknown_rate",
                                                                       "truncation_rate"}
    assert {d["quantity"] for d in report["drifts"]} == {"labels", "score[unacceptable]", "score[acceptable]",
                                                         "length", "unknown_rate", "truncation_rate"}
    assert all(d["psi"] is None or d["psi"] < 0.1 for d in report["drifts"]), report["drifts"]
    assert "no drift" in result.stdout


def shifted(verified: Path, texts: list[str], folder: Path) -> dict:
    with running(create_app(verified, ServeConfig(grpc_port=0, log_predictions=str(folder)))) as base:
        replay(base, texts)
    result = monitor(verified, folder, "--json", str(folder.with_suffix(".json")), "--min-texts", "50")
    assert result.exit_code == 1, result.output
    assert "drift: PSI over 0.25 on" in result.stdout
    return {d["quantity"]: d for d in json.loads(folder.with_suffix(".json").read_text())["drifts"]}


@pytest.mark.timeout(300)
def test_texts_three_times_longer_drift_on_length(verified, validation, tmp_path):
    rng = np.random.default_rng(3)
    longer = [" ".join(rng.choice(validation, 3)) for _ in range(len(validation))]
    drifts = shifted(verified, longer, tmp_path / "longer")
    assert drifts["length"]["psi"] > 0.25 and drifts["length"]["drifted"] and drifts["length"]["ks_p"] < 0.01


@pytest.mark.timeout(300)
def test_another_language_drifts_on_unknown_tokens(verified, validation, tmp_path):
    greek = ["η γάτα κάθεται στο χαλί", "ο Γιάννης έγραψε το βιβλίο", "είδε αυτή αυτόν", "πού πήγαν τα παιδιά;"] * 16
    drifts = shifted(verified, greek, tmp_path / "greek")
    assert drifts["unknown_rate"]["psi"] > 0.25 and drifts["unknown_rate"]["drifted"]


def test_metrics_count_what_the_log_holds(verified, validation, tmp_path):
    """/metrics and the log are two views of the same answers, with the reference's bucket edges."""
    from onnxpack.core.package import Package
    from onnxpack.runtime.monitor import Profile

    app = create_app(verified, ServeConfig(grpc_port=0, log_predictions=str(tmp_path)))
    with running(app) as base:
        replay(base, validation[:40] + ["the cat " * 100])
        assert metric(base, "onnxpack_predictions_total", label=LABELS[0]) + \
            metric(base, "onnxpack_predictions_total", label=LABELS[1]) == 41  # counted before answered
        wait_until(lambda: metric(base, "onnxpack_prediction_log_records_total") == 41, what="the log's writes")
        text = httpx.get(f"{base}/metrics").text
    reference = Profile.from_dict(Package.open(verified).manifest.reference, "reference")
    got = lines(tmp_path)
    assert len(got) == 41
    live = app.state.service.metrics.predictions.profile()
    assert live.n == 41 and live.truncated == 1 == sum(row["truncated"] for row in got)
    assert live.tokens == sum(row["length"] for row in got)
    assert live.length_edges == reference.length_edges and live.score_edges == reference.score_edges
    for name in LABELS:
        assert f'onnxpack_predictions_total{{label="{name}"}} {float(sum(r["label"] == name for r in got))}' in text
    last = reference.length_edges[-1]
    assert f'onnxpack_text_tokens_bucket{{le="{last}"}} 41.0' in text and "onnxpack_text_tokens_count 41.0" in text
    assert 'onnxpack_prediction_score_bucket{label="acceptable",le="0.5"}' in text
    assert "onnxpack_truncated_texts_total 1.0" in text and "onnxpack_prediction_log_records_total 41.0" in text
