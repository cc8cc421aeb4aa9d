"""onnxpack.serve (HTTP): a real uvicorn server on a free loopback port, spoken to over HTTP.

Most tests share one server on the default limits; those about loading, the concurrency
cap and SIGTERM start their own (in a thread, or as `python -m onnxpack serve`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from live import (
    HOST,
    HTTP_ONLY,
    TEXTS,
    Gate,
    free_port,
    metric,
    post,
    ready,
    running,
    wait_until,
)
from schemathesis.checks import positive_data_acceptance
from typer.testing import CliRunner

from onnxpack.cli import app as cli_app
from onnxpack.core.package import Package
from onnxpack.runtime.feed import default_stride, encode, encode_windows
from onnxpack.runtime.predictor import Predictor
from onnxpack.serve import ServeConfig, create_app
from onnxpack.serve import runner as serve_runner
from onnxpack.serve import service as serve_service
from onnxpack.serve.batcher import CALL_COST_TOKENS, MicroBatcher, length_groups
from onnxpack.serve.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]

@pytest.fixture(scope="module")
def base(package_dir) -> Iterator[str]:
    """One server with the default limits, shared by the module."""
    with running(create_app(package_dir, HTTP_ONLY)) as url:
        yield url


@pytest.fixture(scope="module")
def predictor(package_dir) -> Iterator[Predictor]:
    with Predictor(package_dir) as p:
        yield p


@pytest.fixture(scope="module")
def model_name(package_dir) -> str:
    return package_dir.name


# ---- the endpoints ----

def test_predict_answers_what_onnxpack_predict_prints(base, predictor, model_name):
    r = post(base, "/predict", {"texts": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model_name and body["truncated"] == []
    expected = predictor.predict(TEXTS)
    assert [p["text"] for p in body["predictions"]] == TEXTS
    for got, want in zip(body["predictions"], expected):
        assert got.keys() == want.keys() and got["label"] == want["label"]
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)


def test_long_text_is_truncated_and_said_so(base, predictor):
    long_text = " ".join(["the cat sat on the mat"] * 60)  # far past the tiny model's 64 positions
    r = post(base, "/predict", {"texts": ["go", long_text]})
    assert r.status_code == 200, r.text
    assert r.json()["truncated"] == [1]
    assert r.json()["predictions"][1]["score"] == pytest.approx(predictor.predict([long_text])[0]["score"], abs=1e-5)


def test_v2_health_and_metadata(base, predictor, model_name):
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{base}/v2").json()["name"] == "onnxpack"
    meta = httpx.get(f"{base}/v2/models/{model_name}").json()
    assert meta["name"] == model_name
    assert {(t["name"], t["datatype"]) for t in meta["inputs"]} == {
        ("text", "BYTES"), ("input_ids", "INT64"), ("attention_mask", "INT64")}
    assert [t["name"] for t in meta["outputs"]] == ["logits", "label", "score"]
    assert meta["outputs"][0]["shape"] == [-1, len(predictor.labels)]
    assert httpx.get(f"{base}/v2/models/{model_name}/ready").json() == {"ready": True}
    for path in ("", "/ready"):
        r = httpx.get(f"{base}/v2/models/nope{path}")
        assert r.status_code == 404 and model_name in r.json()["error"]


@pytest.mark.parametrize("shape,data", [([2], TEXTS[:2]), ([2, 1], [[TEXTS[0]], [TEXTS[1]]])])
def test_v2_infer_text(base, predictor, model_name, shape, data):
    r = post(base, f"/v2/models/{model_name}/infer",
             {"id": "42", "inputs": [{"name": "text", "shape": shape, "datatype": "BYTES", "data": data}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == model_name and body["id"] == "42" and body["parameters"] == {"truncated": []}
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["logits"]["shape"] == [2, len(predictor.labels)] and outputs["logits"]["datatype"] == "FP32"
    np.testing.assert_allclose(np.reshape(outputs["logits"]["data"], (2, -1)), predictor.predict_logits(TEXTS[:2]),
                               atol=1e-5)
    expected = predictor.predict(TEXTS[:2])
    assert outputs["label"] == {"name": "label", "datatype": "BYTES", "shape": [2],
                                "data": [e["label"] for e in expected]}
    assert outputs["score"]["data"] == pytest.approx([e["score"] for e in expected], abs=1e-5)


def test_tritons_own_client_gets_predicts_answers(base, predictor, model_name):
    """tritonclient.http, as scripts/v2_client.py uses it (no Content-Type, texts as [n, 1])."""
    from conftest import v2_client

    got = v2_client().classify(base.removeprefix("http://"), model_name, TEXTS)
    want = predictor.predict(TEXTS)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-6)


def test_v2_infer_tokens(base, predictor, model_name):
    feed = encode(predictor.tokenizer, TEXTS, predictor.input_names)
    # Extra padding columns (mask 0) must not change a row's logits.
    ids = np.pad(feed["input_ids"], ((0, 0), (0, 3)))
    mask = np.pad(feed["attention_mask"], ((0, 0), (0, 3)))
    r = post(base, f"/v2/models/{model_name}/infer", {
        "inputs": [{"name": "input_ids", "shape": list(ids.shape), "datatype": "INT64", "data": ids.tolist()},
                   {"name": "attention_mask", "shape": list(mask.shape), "datatype": "INT64",
                    "data": mask.ravel().tolist()}],
        "outputs": [{"name": "logits"}]})
    assert r.status_code == 200, r.text
    (logits,) = r.json()["outputs"]
    np.testing.assert_allclose(np.reshape(logits["data"], logits["shape"]), predictor.predict_logits(TEXTS), atol=1e-5)


def test_web_page_is_self_contained(base, model_name):
    r = httpx.get(f"{base}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert model_name in r.text and "default-src 'self'" in r.headers["content-security-policy"]
    assert "http://" not in r.text and "https://" not in r.text  # nothing fetched from elsewhere


# ---- limits and bad input: always a 4xx with {"error": ...}, never a 5xx ----

def _tokens(ids, mask, ids_shape=None, mask_shape=None, datatype="INT64"):
    return {"inputs": [
        {"name": "input_ids", "shape": ids_shape or [1, len(ids)], "datatype": datatype, "data": ids},
        {"name": "attention_mask", "shape": mask_shape or [1, len(mask)], "datatype": "INT64", "data": mask}]}


def _text_tensor(data, shape=None, datatype="BYTES", name="text"):
    return {"inputs": [{"name": name, "shape": shape or [len(data)], "datatype": datatype, "data": data}]}


BAD_PREDICT = {
    "invalid JSON": dict(raw=b'{"texts": [}', status=400, says="invalid JSON"),
    "invalid UTF-8": dict(raw=b'{"texts": ["\xff\xfe abc"]}', status=400, says="utf-8"),
    "lone surrogate": dict(raw=b'{"texts": ["\\ud800 abc"]}', status=400, says="texts[0]"),
    "empty text": dict(body={"texts": [""]}, status=400, says="texts[0]"),
    "only spaces": dict(body={"texts": ["ok", " \t "]}, status=400, says="texts[1]: is empty or only spaces"),
    "no texts": dict(body={"texts": []}, status=400, says="texts"),
    "texts missing": dict(body={}, status=400, says="texts"),
    "texts not a list": dict(body={"texts": "a sentence"}, status=400, says="texts"),
    "a text not a string": dict(body={"texts": ["ok", 3]}, status=400, says="texts[1]"),
    "unknown field": dict(body={"texts": ["ok"], "extra": 1}, status=400, says="extra"),
    "too many texts": dict(body={"texts": ["a b c"] * 129}, status=400, says="at most 128"),
    "text too long": dict(body={"texts": ["a" * 10_001]}, status=400, says="at most 10000 characters"),
    "body over 1 MiB": dict(body={"texts": ["word " * 220_000]}, status=413, says="over 1048576 bytes"),
    "deep nesting": dict(raw=b"[" * 100_000 + b"]" * 100_000, status=400, says="recursion"),
    "not JSON at all": dict(raw=b"texts=hello", headers={"Content-Type": "text/plain"}, status=400,
                            says="Content-Type: application/json"),
    "a JSON list": dict(body=["a sentence"], status=400, says="must be a JSON object"),
    "unknown long_text": dict(body={"texts": ["ok"], "long_text": "whole"}, status=400,
                              says="long_text must be truncate or chunk, got 'whole'"),
    "long_text not text": dict(body={"texts": ["ok"], "long_text": 1}, status=400,
                               says="long_text must be truncate or chunk, got 1"),
    "text too long for chunk": dict(body={"texts": ["word " * 8200], "long_text": "chunk"}, status=400,
                                    says="texts[0]: String should have at most 40960 characters"),
    "too many windows": dict(body={"texts": ["the cat sat on the mat " * 700], "long_text": "chunk"}, status=400,
                             says="per request (--max-windows)"),
}


@pytest.mark.parametrize("case", BAD_PREDICT.values(), ids=BAD_PREDICT.keys())
def test_bad_predict_requests_get_4xx(base, case):
    r = post(base, "/predict", case.get("body"), raw=case.get("raw"), headers=case.get("headers"))
    assert r.status_code == case["status"], r.text
    assert case["says"].lower() in r.json()["error"].lower()


def test_streamed_body_over_the_limit_gets_413(base):
    def chunks():  # no Content-Length: the server counts as the body arrives
        for _ in range(20):
            yield b" " * 65_536

    r = httpx.post(f"{base}/predict", content=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "over 1048576 bytes" in r.json()["error"]


BAD_INFER = {
    "unknown input": dict(body=_text_tensor(["hi"], name="sentence"), says="unknown input 'sentence'; known: text"),
    "text as INT64": dict(body=_text_tensor(["hi"], datatype="INT64"), says="must be BYTES"),
    "text shape 2-D": dict(body=_text_tensor(["hi", "ho"], shape=[1, 2]), says="expected [n] or [n, 1]"),
    "count differs from shape": dict(body=_text_tensor(["hi", "ho"], shape=[3]), says="2 values for shape [3]"),
    "empty text": dict(body=_text_tensor(["hi", " "]), says="data[1]: is empty"),
    "text not a string": dict(body=_text_tensor(["hi", 5]), says="data[1]"),
    "text and tokens": dict(body={"inputs": _text_tensor(["hi"])["inputs"] + _tokens([2], [1])["inputs"]},
                            says="not both"),
    "input twice": dict(body={"inputs": _text_tensor(["a"])["inputs"] * 2}, says="given twice"),
    "no attention_mask": dict(body={"inputs": _tokens([2], [1])["inputs"][:1]}, says="missing input 'attention_mask'"),
    "negative id": dict(body=_tokens([2, -5], [1, 1]), says="-5, outside the vocabulary"),
    "id past the vocabulary": dict(body=_tokens([2, 99_999_999], [1, 1]), says="outside the vocabulary"),
    "id past int64": dict(body=_tokens([2, 2 ** 70], [1, 1]), says="outside int64"),
    "float ids": dict(body=_tokens([2, 3.5], [1, 1]), says="must hold integers"),
    "bool ids": dict(body=_tokens([True, 3], [1, 1]), says="must hold integers"),
    "shape mismatch": dict(body=_tokens([2, 3, 4], [1, 1], mask_shape=[1, 2]), says="attention_mask has shape [1, 2]"),
    "1-D ids": dict(body=_tokens([2, 3], [1, 1], ids_shape=[2]), says="expected [n, n]"),
    "longer than the model": dict(body=_tokens([2] * 65, [1] * 65), says="1 to 64"),
    "mask not 0/1": dict(body=_tokens([2, 3], [1, 2]), says="only 0 and 1"),
    "ids as FP32": dict(body=_tokens([2, 3], [1, 1], datatype="FP32"), says="must be INT64"),
    "negative shape": dict(body=_tokens([2, 3], [1, 1], ids_shape=[1, -2]), says="greater than or equal to 0"),
    "zero rows": dict(body=_tokens([], [], ids_shape=[0, 2], mask_shape=[0, 2]), says="0 rows"),
    "unknown output": dict(body={**_text_tensor(["hi"]), "outputs": [{"name": "probs"}]}, says="unknown output"),
    "no inputs": dict(body={"inputs": []}, says="inputs"),
    "unknown long_text": dict(body={**_text_tensor(["hi"]), "parameters": {"long_text": "all"}},
                              says="parameter long_text must be truncate or chunk, got 'all'"),
    "too many windows": dict(body={**_text_tensor(["the cat sat on the mat " * 700]),
                                   "parameters": {"long_text": "chunk"}}, says="per request (--max-windows)"),
}


@pytest.mark.parametrize("case", BAD_INFER.values(), ids=BAD_INFER.keys())
def test_bad_infer_requests_get_4xx(base, model_name, case):
    r = post(base, f"/v2/models/{model_name}/infer", case["body"])
    assert r.status_code == 400, r.text
    assert case["says"] in r.json()["error"]


def test_defaults_are_on():
    config = ServeConfig()
    assert (config.max_body_bytes, config.max_texts, config.max_chars) == (1 << 20, 128, 10_000)
    assert config.max_batch == 32 and config.max_delay_ms == 5
    assert config.grpc_port == 8001  # a library user gets gRPC as `onnxpack serve` does
    assert (config.long_text, config.stride, config.aggregate, config.max_windows) == ("truncate", None, "mean", 64)


def test_openapi_declares_the_errors(base):
    paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    assert set(paths["/predict"]["post"]["responses"]) == {"200", "400", "413", "503"}
    assert set(paths["/explain"]["post"]["responses"]) == {"200", "400", "413", "503"}
    assert set(paths["/v2/models/{name}/infer"]["post"]["responses"]) == {"200", "400", "404", "413", "503"}
    assert paths["/predict"]["post"]["requestBody"]["content"]["application/json"]


def test_openapi_documents_long_text(base):
    schemas = httpx.get(f"{base}/openapi.json").json()["components"]["schemas"]
    modes = {"anyOf": [{"type": "string", "enum": ["truncate", "chunk"]}, {"type": "null"}]}
    for body in ("PredictRequest", "InferParameters"):
        field = schemas[body]["properties"]["long_text"]
        assert field["anyOf"] == modes["anyOf"] and "chunk" in field["description"]
    assert schemas["InferRequest"]["properties"]["parameters"]["anyOf"][0]["$ref"].endswith("/InferParameters")
    assert "windows" in schemas["Prediction"]["properties"]


# ---- micro-batching, ordering, metrics ----

def test_concurrent_requests_each_get_their_own_answers_in_order(base, predictor):
    texts = [f"{w} {TEXTS[i % len(TEXTS)]}" for i, w in enumerate(["the", "a", "one", "some"] * 8)]
    reference = {r["text"]: r for r in predictor.predict(texts)}
    # 32 concurrent clients, each with 1 to 4 texts: the defaults must answer all of them.
    requests = [texts[i:i + 1 + i % 4] for i in range(32)]

    async def burst():
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            return await asyncio.gather(*(client.post("/predict", json={"texts": t}) for t in requests))

    calls_before = metric(base, "onnxpack_batch_size_count")
    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 32
    for sent, r in zip(requests, responses):
        got = r.json()["predictions"]
        assert [p["text"] for p in got] == sent
        assert all(p["score"] == pytest.approx(reference[p["text"]]["score"], abs=1e-5) for p in got)
    rows = sum(len(t) for t in requests)
    assert metric(base, "onnxpack_batch_size_count") - calls_before < rows  # rows shared model calls


def test_batcher_gathers_rows_from_concurrent_requests(predictor):
    metrics = Metrics()
    batcher = MicroBatcher(predictor, max_batch=8, max_delay_s=30, metrics=metrics)

    async def eight_requests():
        return await asyncio.gather(*(batcher.infer(texts=["the cat sat"]) for _ in range(8)))

    try:
        results = asyncio.run(eight_requests())
    finally:
        batcher.close()
    # The batch filled up long before the 30 s delay: one model call for all eight.
    assert metrics.registry.get_sample_value("onnxpack_batch_size_count") == 1
    assert metrics.registry.get_sample_value("onnxpack_batch_size_sum") == 8
    expected = predictor.predict_logits(["the cat sat"])
    for logits, truncated, stats in results:
        np.testing.assert_allclose(logits, expected, atol=1e-5)
        assert truncated == [] and stats == []  # not observed: the batcher was not asked to


def test_a_request_that_fills_the_batch_wakes_the_gatherer(predictor):
    # the gatherer is woken for a first row and for a full batch, not for the rows between
    metrics = Metrics()
    batcher = MicroBatcher(predictor, max_batch=8, max_delay_s=30, metrics=metrics)

    async def three_then_five():
        return await asyncio.gather(batcher.infer(texts=["a b"] * 3), batcher.infer(texts=["c d e"] * 5))

    started = time.monotonic()
    try:
        asyncio.run(three_then_five())
    finally:
        batcher.close()
    assert time.monotonic() - started < 10  # not the 30 s deadline
    assert metrics.registry.get_sample_value("onnxpack_batch_size_sum") == 8


def test_length_groups():
    assert length_groups([7] * 10, call_cost=64) == [list(range(10))]
    groups = length_groups([5] * 15 + [60], call_cost=64)
    assert groups == [[15], list(range(15))]  # the long row alone: padding 15 rows to 60 costs more
    lengths = [3, 40, 12, 9, 40, 2, 25, 11]
    groups = length_groups(lengths, call_cost=8)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert [lengths[g[0]] for g in groups] == sorted((lengths[g[0]] for g in groups), reverse=True)


def test_metrics_move(base):
    before = {name: metric(base, name, **labels) for name, labels in [
        ("onnxpack_requests_total", {"route": "/predict", "status": "200"}),
        ("onnxpack_request_errors_total", {"route": "/predict", "status": "400"}),
        ("onnxpack_request_latency_seconds_count", {"route": "/predict"}),
        ("onnxpack_batch_size_count", {})]}
    assert post(base, "/predict", {"texts": ["go"]}).status_code == 200
    assert post(base, "/predict", {"texts": [""]}).status_code == 400
    assert metric(base, "onnxpack_requests_total", route="/predict", status="200") == before["onnxpack_requests_total"] + 1
    assert metric(base, "onnxpack_request_errors_total", route="/predict", status="400") == \
        before["onnxpack_request_errors_total"] + 1
    assert metric(base, "onnxpack_request_latency_seconds_count", route="/predict") == \
        before["onnxpack_request_latency_seconds_count"] + 2
    assert metric(base, "onnxpack_batch_size_count") == before["onnxpack_batch_size_count"] + 1
    text = httpx.get(f"{base}/metrics").text
    assert "# TYPE onnxpack_queue_depth gauge" in text and "# TYPE onnxpack_batch_size histogram" in text


# ---- long texts: read whole under long_text chunk ----

LONG = " ".join(["the cat sat on the mat"] * 30)  # 6 windows of the tiny model's 64 tokens (stride 16)


def test_chunk_reads_a_long_text_whole_as_predict_does(base, predictor):
    r = post(base, "/predict", {"texts": [LONG, "go"], "long_text": "chunk"})
    assert r.status_code == 200, r.text
    body = r.json()
    want = predictor.predict([LONG, "go"], long_text="chunk")
    assert body["truncated"] == [] and want[0]["windows"] > 1
    for got, w in zip(body["predictions"], want):
        assert got.keys() == w.keys() and (got["windows"], got["label"]) == (w["windows"], w["label"])
        assert got["scores"] == pytest.approx(w["scores"], abs=1e-5)


def test_a_short_text_under_chunk_answers_bit_for_bit_as_under_truncate(base, model_name):
    plain = post(base, "/predict", {"texts": ["go"]}).json()
    chunked = post(base, "/predict", {"texts": ["go"], "long_text": "chunk"}).json()
    assert chunked["predictions"][0].pop("windows") == 1 and chunked == plain
    infer = f"/v2/models/{model_name}/infer"
    plain = post(base, infer, _text_tensor(["go"])).json()
    chunked = post(base, infer, {**_text_tensor(["go"]), "parameters": {"long_text": "chunk"}}).json()
    assert chunked["parameters"].pop("windows") == [1] and chunked == plain


def test_v2_reads_the_long_text_parameter(base, predictor, model_name):
    """JSON, and Triton's client in binary: `windows` is a response parameter, beside `truncated`."""
    import tritonclient.http as httpclient

    want = predictor.predict_logits([LONG, "go"], long_text="chunk")
    windows = [r["windows"] for r in predictor.predict([LONG, "go"], long_text="chunk")]
    r = post(base, f"/v2/models/{model_name}/infer", {**_text_tensor([LONG, "go"]), "parameters": {"long_text": "chunk"}})
    assert r.status_code == 200, r.text
    assert r.json()["parameters"] == {"truncated": [], "windows": windows}
    logits = {o["name"]: o for o in r.json()["outputs"]}["logits"]["data"]
    np.testing.assert_allclose(np.reshape(logits, (2, -1)), want, atol=1e-5)
    with httpclient.InferenceServerClient(url=base.removeprefix("http://")) as client:
        text = httpclient.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.array([LONG.encode(), b"go"], dtype=np.object_))  # binary
        result = client.infer(model_name, [text], parameters={"long_text": "chunk"})
        np.testing.assert_allclose(result.as_numpy("logits"), want, atol=1e-5)
        assert result.get_response()["parameters"]["windows"] == windows
        plain = client.infer(model_name, [text])  # the server's default: truncate
        assert plain.get_response()["parameters"] == {"truncated": [0]}


@pytest.fixture(scope="module")
def chunk_base(package_dir) -> Iterator[str]:
    """A server that reads long texts whole unless asked otherwise: the max of the windows, stride 8,
    at most 8 windows per request."""
    config = ServeConfig(grpc_port=0, long_text="chunk", stride=8, aggregate="max", max_windows=8)
    with running(create_app(package_dir, config)) as url:
        yield url


def test_the_servers_default_and_a_requests_own_long_text(chunk_base, predictor):
    want = predictor.predict([LONG], long_text="chunk", stride=8, aggregate="max")[0]
    r = post(chunk_base, "/predict", {"texts": [LONG]})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"][0]
    assert got["windows"] == want["windows"] > 1 and got["scores"] == pytest.approx(want["scores"], abs=1e-5)
    r = post(chunk_base, "/predict", {"texts": [LONG], "long_text": "truncate"})
    assert r.status_code == 200 and r.json()["truncated"] == [0] and "windows" not in r.json()["predictions"][0]
    assert r.json()["predictions"][0]["score"] == pytest.approx(predictor.predict([LONG])[0]["score"], abs=1e-5)


def test_windows_over_max_windows_get_4xx_before_any_model_call(chunk_base, predictor, package_dir):
    windows = 2 * predictor.predict([LONG], long_text="chunk", stride=8)[0]["windows"]
    calls = metric(chunk_base, "onnxpack_batch_size_count")
    for path, body in [("/predict", {"texts": [LONG, LONG]}),
                       (f"/v2/models/{package_dir.name}/infer", _text_tensor([LONG, LONG]))]:
        r = post(chunk_base, path, body)
        assert r.status_code == 400, r.text
        assert r.json() == {"error": f"this request makes {windows} windows of 64 tokens under long_text chunk; the "
                                     "server takes at most 8 per request (--max-windows) (hint: send fewer or "
                                     "shorter texts per request)"}
    assert metric(chunk_base, "onnxpack_batch_size_count") == calls  # refused before the model ran
    # The character limit follows --max-windows under chunk (8 x 64 tokens x 10); under truncate it stays.
    long = "word " * 1100
    r = post(chunk_base, "/predict", {"texts": ["go", long]})
    assert r.status_code == 400 and r.json()["error"].startswith(
        "texts[1]: at most 5120 characters per text under long_text chunk, got 5500 (--max-windows 8")
    assert post(chunk_base, "/predict", {"texts": [long], "long_text": "truncate"}).status_code == 200
    r = post(chunk_base, "/predict", {"texts": ["a" * 10_001], "long_text": "truncate"})
    assert r.status_code == 400 and "at most 10000 characters" in r.json()["error"]


def test_explain_answers_as_the_predictor_does(base, predictor, model_name):
    texts = ["The boy is sitting on a bench.", LONG]
    r = post(base, "/explain", {"texts": texts})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == model_name
    got, want = r.json()["explanations"], predictor.explain(texts)
    assert [[w["word"] for w in g["words"]] for g in got] == [[w["word"] for w in x["words"]] for x in want]
    for g, x in zip(got, want):
        assert (g["label"], g["windows"]) == (x["label"], x["windows"]) and g["score"] == pytest.approx(x["score"], abs=1e-5)
        assert [w["attribution"] is None for w in g["words"]] == [w["attribution"] is None for w in x["words"]]
        np.testing.assert_allclose([w["attribution"] or 0 for w in g["words"]],
                                   [w["attribution"] or 0 for w in x["words"]], atol=1e-5)
    assert any(w["attribution"] is None for w in got[1]["words"])  # truncate: the long text's tail is not read
    r = post(base, "/explain", {"texts": [LONG], "long_text": "chunk"})
    assert r.status_code == 200, r.text
    (chunked,) = r.json()["explanations"]
    assert chunked["windows"] == predictor.predict([LONG], long_text="chunk")[0]["windows"] > 1
    assert all(w["attribution"] is not None for w in chunked["words"])


def test_explain_over_the_servers_limits_gets_4xx_before_any_model_call(chunk_base, predictor):
    calls = metric(chunk_base, "onnxpack_batch_size_count")
    read = sum(w["attribution"] is not None for w in predictor.explain([LONG])[0]["words"])  # under truncate
    texts = 512 // read + 1  # each text within the limit, all of them over it
    for body, error in [
        ({"texts": [LONG, LONG]}, "this request makes"),  # windows, under the server's chunk default
        ({"texts": [LONG] * texts, "long_text": "truncate"}, f"{texts * read} words to explain; the server explains at most 512 per "
                                                          "request (--max-words)"),
        ({"texts": ["   "]}, "texts[0]: is empty or only spaces"),
        ({"texts": ["a b"], "long_text": "whole"}, "long_text must be truncate or chunk"),
        ({"texts": ["a" * 10_001], "long_text": "truncate"}, "at most 10000 characters"),
    ]:
        r = post(chunk_base, "/explain", body)
        assert r.status_code == 400 and error in r.json()["error"], (body.keys(), r.text)
    assert metric(chunk_base, "onnxpack_batch_size_count") == calls


def test_windows_of_concurrent_requests_share_model_calls(package_dir, predictor):
    names, pad = predictor.input_names, predictor.package.manifest.pad_token_id
    feed, _ = encode_windows(predictor.chunker(default_stride(predictor.max_length)), [LONG], names, pad)
    lengths = feed["attention_mask"].sum(axis=1).tolist()
    # Full windows and a short last one: alone, each request takes two model calls (two length groups).
    assert len(set(lengths)) == 2 and max(lengths) - min(lengths) > CALL_COST_TOKENS
    n = len(lengths)
    config = ServeConfig(grpc_port=0, long_text="chunk", max_batch=2 * n, max_delay_ms=10_000)
    with running(create_app(package_dir, config)) as url:
        async def two():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                return await asyncio.gather(*(client.post("/predict", json={"texts": [LONG]}) for _ in range(2)))

        started = time.monotonic()
        first, second = asyncio.run(two())
        assert time.monotonic() - started < 8  # the batch filled up: no waiting for the 10 s delay
        assert first.status_code == second.status_code == 200 and first.json() == second.json()
        assert first.json()["predictions"][0]["windows"] == n
        # Both requests' 2n windows in two model calls: the full windows of both, then both last ones.
        assert metric(url, "onnxpack_batch_size_sum") == 2 * n
        assert metric(url, "onnxpack_batch_size_count") == 2


# ---- loading, the concurrency cap, shutdown ----

def test_ready_only_after_warm_up(package_dir, monkeypatch, model_name):
    gate = Gate(open_=False)
    monkeypatch.setattr(serve_service, "Predictor", gate.predictor_class())
    with running(create_app(package_dir, HTTP_ONLY), wait_ready=False) as base:
        assert gate.entered.wait(30)  # the warm-up inference has started, and is held
        assert httpx.get(f"{base}/v2/health/live").status_code == 200
        for path in ("/v2/health/ready", f"/v2/models/{model_name}/ready"):
            r = httpx.get(f"{base}{path}")
            assert r.status_code == 503 and r.json() == {"ready": False}
        r = post(base, "/predict", {"texts": ["go"]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        gate.opened.set()
        wait_until(lambda: ready(base), what="ready after warm-up")
        assert post(base, "/predict", {"texts": ["go"]}).status_code == 200


def test_over_the_cap_requests_queue_then_get_503(package_dir, monkeypatch):
    gate = Gate(open_=True)
    monkeypatch.setattr(serve_service, "Predictor", gate.predictor_class())
    config = ServeConfig(max_concurrency=1, max_queue=1, grpc_port=0)
    with running(create_app(package_dir, config)) as base:
        gate.opened.clear()
        gate.entered.clear()

        async def three():
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                first = asyncio.create_task(client.post("/predict", json={"texts": ["one"]}))
                await asyncio.to_thread(gate.entered.wait, 30)  # the first is in the model
                second = asyncio.create_task(client.post("/predict", json={"texts": ["two"]}))
                await asyncio.to_thread(wait_until, lambda: metric(base, "onnxpack_requests_waiting") == 1)
                third = await client.post("/predict", json={"texts": ["three"]})
                gate.opened.set()
                return await first, await second, third

        first, second, third = asyncio.run(three())
        assert third.status_code == 503 and third.headers["retry-after"] == "1" and "busy" in third.json()["error"]
        assert first.status_code == second.status_code == 200
        assert second.json()["predictions"][0]["text"] == "two"


def test_sigterm_finishes_in_flight_requests_then_exits(package_dir):
    port = free_port()
    base = f"http://{HOST}:{port}"
    # A long batching delay keeps a lone request in flight while SIGTERM arrives.
    proc = subprocess.Popen([sys.executable, "-m", "onnxpack", "serve", str(package_dir), "--host", HOST,
                             "--port", str(port), "--grpc-port", str(free_port()), "--max-delay-ms", "3000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: ready(base), what="the server to be ready")
        with httpx.Client(base_url=base, timeout=60) as client:
            result = {}
            request = threading.Thread(target=lambda: result.update(r=client.post("/predict", json={"texts": ["go"]})))
            request.start()
            wait_until(lambda: metric(base, "onnxpack_queue_depth") == 1, what="the request to be queued")
            proc.send_signal(signal.SIGTERM)
            wait_until(lambda: not _accepts(port), timeout=10, what="the server to stop accepting")
            assert request.is_alive()  # still in flight when new connections were refused
            request.join(30)
        assert result["r"].status_code == 200 and result["r"].json()["predictions"][0]["text"] == "go"
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert "Waiting for application shutdown" in output and "Finished server process" in output


def _accepts(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


# ---- the CLI, the web page in a browser, fuzzing ----

@pytest.mark.parametrize(("args", "message"), [
    (["--max-batch", "0"], "error: --max-batch must be at least 1, got 0"),
    (["--variant", "int4"], "no variant 'int4'"),
    (["--instances", "0"], "error: --instances must be at least 1, got 0"),
    (["--grpc-port", "70000"], "error: --grpc-port must be between 0 and 65535, got 70000"),
    (["--long-text", "whole"], "error: --long-text must be truncate or chunk, got 'whole'"),
    (["--aggregate", "median"], "error: --aggregate must be mean or max, got 'median'"),
    (["--stride", "64"], "error: --stride must be smaller than the window (64 tokens), got 64"),
    (["--max-windows", "0"], "error: --max-windows must be at least 1, got 0"),
    (["--max-words", "0"], "error: --max-words must be at least 1, got 0"),
    (["--log-texts"], "error: --log-texts needs --log-predictions DIR"),
    (["--log-predictions", "logs", "--log-max-mb", "0"], "error: --log-max-mb must be above 0, got 0.0"),
    (["--log-predictions", "logs", "--log-max-age-s", "-1"], "error: --log-max-age-s must be above 0, got -1.0"),
])
def test_serve_cli_reports_bad_options_in_one_line(package_dir, args, message):
    result = CliRunner().invoke(cli_app, ["serve", str(package_dir), *args])
    assert result.exit_code == 1 and message in result.output


def test_serve_cli_refuses_a_folder_that_is_not_a_package(tmp_path):
    result = CliRunner().invoke(cli_app, ["serve", str(tmp_path)])
    assert result.exit_code == 1 and "is not a package" in result.output


def test_serve_cli_takes_the_long_text_options(package_dir, monkeypatch):
    import onnxpack.serve

    made = {}
    monkeypatch.setattr(onnxpack.serve, "create_app", lambda package, config: made.setdefault("config", config))
    monkeypatch.setattr(onnxpack.serve, "run", lambda *args, **kwargs: None)
    result = CliRunner().invoke(cli_app, ["serve", str(package_dir), "--long-text", "chunk", "--max-windows", "16",
                                          "--stride", "8", "--aggregate", "max", "--max-words", "100"])
    assert result.exit_code == 0, result.output
    config = made["config"]
    assert (config.long_text, config.max_windows, config.stride, config.aggregate) == ("chunk", 16, 8, "max")
    assert config.max_words == 100


CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                    reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)")
def test_web_page_in_headless_chromium(base, predictor):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"{base}/")
        driver.find_element(By.ID, "texts").send_keys("The book was written by john.")
        driver.find_element(By.ID, "classify").click()
        result = WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result"))[0]
        expected = predictor.predict(["The book was written by john."])[0]
        assert result.get_attribute("data-label") == expected["label"]
        assert result.find_element(By.CSS_SELECTOR, ".label").text == expected["label"]
        bars = result.find_elements(By.CSS_SELECTOR, ".bar")
        assert [b.find_element(By.CSS_SELECTOR, "span").text for b in bars] == predictor.labels
        assert "classified" in driver.find_element(By.ID, "status").text
    finally:
        driver.quit()


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode))
def test_schema_fuzzing_finds_no_5xx(chunk_base, mode):
    """Requests generated from /openapi.json, fitting it (positive) or not (negative), 500 of each
    kind: never a 5xx, and every status, content type and body is one the schema documents.
    `long_text` (on /predict, and among V2's parameters) is in the schema, so it is fuzzed too. The
    server chunks by default and takes 8 windows per request, so both ways of reading and the window
    limit are all reached; and its texts' maxLength stays at max_chars (under the default 64 windows it
    is 40,960 characters, and generating texts past that doubles the fuzzer's time)."""
    base = chunk_base
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    sent, long_texts, paths = [], [], set()

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        # Schema-valid token ids may still lie outside the vocabulary: a 400 there is right.
        sent.append(case.call_and_validate(excluded_checks=[positive_data_acceptance], timeout=30).status_code)
        assert sent[-1] < 500
        paths.add(case.path)
        body = case.body if isinstance(case.body, dict) else {}
        parameters = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
        long_texts.extend(x["long_text"] for x in (body, parameters) if "long_text" in x)

    check()
    assert len(sent) >= 500 and metric(base, "onnxpack_requests_in_progress") == 0
    assert long_texts  # the new field was among what was sent
    assert {"/predict", "/explain"} <= paths


def test_loadtest_script_runs(package_dir, small_cola, tmp_path):
    """scripts/loadtest.py end to end, briefly: a real server, HTTP and gRPC, batching on and off
    (`both`), every answer checked against `onnxpack predict`, and the ratio to offline printed."""
    out = tmp_path / "load.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "loadtest.py"), str(package_dir), "--data",
                             str(small_cola), "--concurrency", "4", "--batching", "both", "--duration", "0.5",
                             "--warmup", "0.2", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    rows = report["results"]
    assert {(r["protocol"], r["batching"]) for r in rows} == {(p, b) for p in ("http", "grpc") for b in ("on", "off")}
    assert all(r["concurrency"] == 4 and r["requests"] > 0 and r["errors"] == r["mismatches"] == 0 for r in rows)
    assert len(report["offline_texts_per_s"]) == 2 and min(report["offline_texts_per_s"]) > 0
    assert report["offline_cpu_ms_per_text"] > 0 and all(r["server_cpu_ms_per_req"] > 0 for r in rows)
    assert set(report["efficiency"]) == set(report["ratios"]) == {f"{p} batching {b}" for p in ("http", "grpc")
                                                                   for b in ("on", "off")}
    assert all(0 < e < 10 for e in report["efficiency"].values())
    assert "http batching on, c=4: server CPU" in result.stdout and "efficiency; wall" in result.stdout


def test_loadtest_measures_what_monitoring_costs(package_dir, small_cola, tmp_path):
    """scripts/loadtest.py --monitoring, briefly: three servers (metrics off, on, on with the log), each
    loaded in turn, and the log holding every answer its server gave."""
    out = tmp_path / "monitoring.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "loadtest.py"), str(package_dir), "--data",
                             str(small_cola), "--monitoring", "--rounds", "1", "--concurrency", "4", "--duration",
                             "0.5", "--warmup", "0.2", "--protocols", "http", "--json", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    cost = json.loads(out.read_text())["monitoring"]
    assert [r["monitoring"] for r in cost["runs"]] == ["off", "metrics", "metrics+log"]
    assert all(r["requests"] > 0 and r["errors"] == r["mismatches"] == 0 for r in cost["runs"])
    assert cost["logged"] == cost["answered_with_log"] > 0
    assert set(cost["summary"]) == {"off", "metrics", "metrics+log"} and "(all there)" in result.stdout


# ---- hostile clients and stuck models ----

@pytest.fixture()
def quick_deadlines(monkeypatch):

    monkeypatch.setattr(serve_runner, "HEADER_TIMEOUT_S", 1.0)
    monkeypatch.setattr(serve_runner, "BODY_TIMEOUT_S", 1.0)


def _raw(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection; what came back before the server closed it (or `wait` passed)."""
    with socket.create_connection((HOST, port), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def _status(response: bytes) -> int | None:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None


def test_slow_clients_are_cut_off_and_others_still_answered(package_dir, quick_deadlines):
    with running(create_app(package_dir, HTTP_ONLY)) as base:
        port = int(base.rsplit(":", 1)[1])
        slow = [socket.create_connection((HOST, port)) for _ in range(30)]  # slow-loris: headers never finish
        for s in slow:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        for _ in range(5):  # the server keeps answering meanwhile
            assert post(base, "/predict", {"texts": ["go"]}).status_code == 200
        time.sleep(1.5)
        for s in slow:
            s.settimeout(5)
            assert _status(s.recv(4096)) == 408  # cut off at the header deadline
            s.close()
        body = json.dumps({"texts": ["go"]}).encode()
        slow_body = socket.create_connection((HOST, port))
        slow_body.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:5]))
        slow_body.settimeout(5)
        assert _status(slow_body.recv(4096)) == 408  # the body never finished either
        slow_body.close()
        wait_until(lambda: metric(base, "onnxpack_requests_in_progress") == 0, what="nothing held")
        assert post(base, "/predict", {"texts": ["go"]}).status_code == 200


def test_a_kept_alive_connection_gets_the_header_deadline_of_its_next_request(package_dir, monkeypatch):
    # the body deadline of the first request was later than the next request's header deadline
    monkeypatch.setattr(serve_runner, "HEADER_TIMEOUT_S", 1.0)
    monkeypatch.setattr(serve_runner, "BODY_TIMEOUT_S", 4.0)
    with running(create_app(package_dir, HTTP_ONLY)) as base:
        body = json.dumps({"texts": ["go"]}).encode()
        with socket.create_connection((HOST, int(base.rsplit(":", 1)[1]))) as s:
            s.settimeout(8)
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body))
            time.sleep(1.3)  # past the header deadline, within the body's (4 s)
            s.sendall(body)
            assert _status(s.recv(65536)) == 200
            started = time.monotonic()
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # and its headers never finish
            assert _status(s.recv(4096)) == 408
            assert 0.8 < time.monotonic() - started < 2.5


@pytest.mark.parametrize("request_bytes", [
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\n{}",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\ngarbage\r\n0\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (10 << 20) + b"\r\n\r\n",
    b"GARBAGE / HTTP/9.9\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello on the plain port
], ids=["content-length-text", "content-length-negative", "content-length-twice", "chunked-garbage",
        "10MB-header", "bad-method-version", "tls-hello"])
def test_malformed_http_gets_4xx_or_a_closed_connection(base, request_bytes):
    port = int(base.rsplit(":", 1)[1])
    try:
        response = _raw(port, request_bytes)
    except (BrokenPipeError, ConnectionResetError):  # closed while we were still sending the 10 MB
        response = b""
    status = _status(response)
    assert status is None or 400 <= status < 500, response[:200]
    assert post(base, "/predict", {"texts": ["go"]}).status_code == 200  # and the server is fine


def test_a_body_cut_short_or_a_client_gone_frees_what_it_held(package_dir):
    with running(create_app(package_dir, ServeConfig(max_delay_ms=1500, grpc_port=0))) as base:
        port = int(base.rsplit(":", 1)[1])
        short = socket.create_connection((HOST, port))
        short.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"texts\": [")
        short.close()  # the body ends 990 bytes early
        gone = socket.create_connection((HOST, port))
        body = json.dumps({"texts": ["go"] * 20}).encode()
        gone.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until(lambda: metric(base, "onnxpack_queue_depth") == 20, what="the rows to be queued")
        gone.close()  # the client dies while its rows wait for the model
        wait_until(lambda: metric(base, "onnxpack_queue_depth") == 0, what="the queue to drain")
        wait_until(lambda: metric(base, "onnxpack_requests_in_progress") == 0, what="nothing held")
        assert post(base, "/predict", {"texts": ["go"]}).status_code == 200


def test_a_stuck_warm_up_ends_the_server_and_sigterm_always_works(package_dir, tmp_path):
    """A graph that passes its first run but loops on real text (hostile.input_dependent_loop): the
    warm-up never ends, so the server exits at the time limit with one line; SIGTERM before that
    ends it within --grace-s."""
    from conftest import hostile_package

    package = hostile_package(package_dir, tmp_path, "input_dependent_loop")
    env = {**os.environ, "ONNXPACK_PROBE_TIMEOUT": "6"}
    command = [sys.executable, "-m", "onnxpack", "serve", str(package), "--host", HOST, "--grpc-port", str(free_port())]
    started = time.monotonic()
    result = subprocess.run(command + ["--port", str(free_port())], capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 1 and "did not finish within 6 s" in result.stderr
    assert time.monotonic() - started < 30
    port = free_port()
    proc = subprocess.Popen(command + ["--port", str(port), "--grace-s", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**env, "ONNXPACK_PROBE_TIMEOUT": "60"})
    try:
        wait_until(lambda: _accepts(port), what="the server to listen")
        assert not ready(f"http://{HOST}:{port}")  # live, never ready: the warm-up is stuck
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(20) != 0 and time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# ---- Triton's own client, in its default binary form ----

def test_tritonclient_binary_and_json_text_and_tokens(base, predictor, model_name):
    """tritonclient.http unchanged: BYTES text and INT64 tokens, binary (its default) and JSON, in
    and out; answers equal predict's."""
    import tritonclient.http as httpclient

    from onnxpack.runtime.feed import encode

    want = predictor.predict(TEXTS)
    texts = np.array([t.encode() for t in TEXTS], dtype=np.object_)
    feed = encode(predictor.tokenizer, TEXTS, predictor.input_names)
    with httpclient.InferenceServerClient(url=base.removeprefix("http://")) as client:
        for binary_in in (True, False):
            for binary_out in (True, False):
                text = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
                text.set_data_from_numpy(texts, binary_data=binary_in)
                outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("label", "score")]
                result = client.infer(model_name, [text], outputs=outputs)
                labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
                assert labels == [w["label"] for w in want], (binary_in, binary_out)
                assert result.as_numpy("score").tolist() == pytest.approx([w["score"] for w in want], abs=1e-6)
        tokens = []
        for name, values in feed.items():
            tensor = httpclient.InferInput(name, list(values.shape), "INT64")
            tensor.set_data_from_numpy(values)  # binary
            tokens.append(tensor)
        result = client.infer(model_name, tokens)  # no outputs named: all of them, in binary
        np.testing.assert_allclose(result.as_numpy("logits"), predictor.predict_logits(TEXTS), atol=1e-5)


@pytest.mark.parametrize("header_length, tail, message", [
    ("9999", b"", "does not fit a body"),
    ("abc", b"", "does not fit a body"),
    (None, b"\x05\x00\x00\x00go", "runs past the body's end"),
    (None, b"\x02\x00\x00\x00go" + b"extra", "5 bytes after the last binary tensor"),
])
def test_binary_requests_that_lie_get_4xx(base, model_name, header_length, tail, message):
    """A header length that lies, a body shorter than it claims, a tensor's bytes that do not match."""
    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 6 if tail.startswith(b"\x02") else 9}}]})
    body = header.encode() + tail
    r = httpx.post(f"{base}/v2/models/{model_name}/infer", content=body, timeout=30,
                   headers={"Inference-Header-Content-Length": header_length or str(len(header))})
    assert 400 <= r.status_code < 500 and message in r.json()["error"], r.text


def test_malformed_binary_flags_are_4xx_not_5xx(base, model_name):
    """Found by the fuzzer: `parameters` that is not an object, on the request or an output."""
    for body in ({"inputs": [], "parameters": "x"}, {"inputs": [], "outputs": [{"name": "label", "parameters": ""}]},
                 {"inputs": [], "outputs": "all"}):
        assert 400 <= post(base, f"/v2/models/{model_name}/infer", body).status_code < 500


def test_binary_token_bytes_must_match_their_shape(base, model_name):
    ids = np.array([[101, 2000, 102]], dtype=np.int64).tobytes()
    header = json.dumps({"inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": [1, 4], "parameters": {"binary_data_size": len(ids)}},
        {"name": "attention_mask", "datatype": "INT64", "shape": [1, 3], "parameters": {"binary_data_size": len(ids)}}]})
    r = httpx.post(f"{base}/v2/models/{model_name}/infer", content=header.encode() + ids + ids, timeout=30,
                   headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 400 and "24 bytes for shape [1, 4] of INT64 (32 expected)" in r.json()["error"]


# ---- the fast path ahead of FastAPI ----

def test_the_fast_path_answers_well_formed_requests_and_hands_on_the_rest(package_dir, predictor):
    """Well-formed /predict and V2 JSON requests are answered ahead of FastAPI, as the route would
    answer them; every other request goes on to the route with its body intact."""
    import orjson

    from onnxpack.serve.http.fast_path import FastPath
    from onnxpack.serve.http.schema import INFER, PREDICT
    from onnxpack.serve.service import Service
    from onnxpack.serve.v2 import V2

    service = Service(package_dir)
    handed_on: list[bytes] = []

    async def route(scope, receive, send):
        handed_on.append((await receive())["body"])

    routes = {path: type("Route", (), {"path": path})() for path in (PREDICT, INFER)}
    fast = FastPath(route, service, V2(service), routes)
    infer = f"/v2/models/{package_dir.name}/infer"

    async def call(path: str, body, content_type: bytes = b"application/json"):
        body = body if isinstance(body, bytes) else orjson.dumps(body)
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent = []
        scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-type", content_type)]}

        async def receive():
            return messages.pop(0)

        async def send(message):
            sent.append(message)

        before = len(handed_on)
        await fast(scope, receive, send)
        if len(handed_on) > before:
            assert handed_on[-1] == body  # handed on with its body intact
            return None
        return sent[0]["status"], orjson.loads(sent[1]["body"]), scope["route"].path

    async def main():
        async with service.running():
            while not service.ready:
                await asyncio.sleep(0.05)
            status, answer, route_path = await call("/predict", {"texts": TEXTS})
            want = predictor.predict(TEXTS)
            assert status == 200 and route_path == PREDICT and answer["truncated"] == []
            assert [p["label"] for p in answer["predictions"]] == [w["label"] for w in want]
            assert [p["score"] for p in answer["predictions"]] == pytest.approx([w["score"] for w in want], abs=1e-6)
            status, answer, route_path = await call(infer, {"id": "7", "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}],
                "outputs": [{"name": "label"}]})
            assert status == 200 and route_path == INFER and answer["id"] == "7"
            assert answer["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [len(TEXTS)],
                                          "data": [w["label"] for w in want]}]
            for path, body in [("/predict", {"texts": [""]}), ("/predict", {"texts": [" \t"]}),
                               ("/predict", {"texts": ["ok"], "extra": 1}), ("/predict", b'{"texts": [}'),
                               ("/predict", {"texts": ["a" * 10_001]}), ("/predict", {"texts": ["ok"] * 129}),
                               ("/predict", {"pairs": [["a", "b"]]}), ("/predict", b'{"texts": ["\\ud800 a"]}'),
                               (infer, {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1], "data": ["a"]}]}),
                               (infer, {"inputs": [{"name": "text", "datatype": "INT64", "shape": [1], "data": ["a"]}]}),
                               (infer, {"inputs": [{"name": "nope", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}),
                               ("/v2/models/other/infer", {"inputs": [{"name": "text", "datatype": "BYTES",
                                                                       "shape": [1], "data": ["a"]}]})]:
                assert await call(path, body) is None, (path, body)
            assert await call("/predict", {"texts": ["ok"]}, content_type=b"text/plain") is None

    asyncio.run(main())


def test_serve_runs_the_int8_cascade_by_default_and_answers_as_predict(package_copy, small_cola):
    """On a package where int8-static is rejected (as on the default CoLA training) the cascade is
    the fastest batch-invariant variant: the server runs it, and answers as `predict --variant` does."""
    from onnxpack.core.config import OptimizeConfig
    from onnxpack.core.data import load_splits
    from onnxpack.runtime.optimize import optimize

    optimize(package_copy, OptimizeConfig(variants=("optimized", "int8-cascade"), data=str(small_cola),
                                          max_mcc_drop=1.0, min_agreement=0))
    package = Package.open(package_copy)
    # optimize stores the reference profile once, of the variant serve then runs (its gate run's logits)
    from onnxpack.runtime.predictor import serving_variant

    reference = package.manifest.reference
    assert reference["variant"] == serving_variant(package) and reference["n"] == 64
    assert sum(reference["labels"].values()) == 64
    package.update_manifest(variants={name: v | {"items_per_s": {"int8-cascade": 900}.get(name, 300)}
                                      for name, v in package.manifest.variants.items()})
    texts = load_splits(str(small_cola), need_train=False).validation.texts[:24]
    with Predictor(package_copy, variant="int8-cascade") as predictor:
        reference = predictor.predict(texts)
    app = create_app(package_copy, HTTP_ONLY)
    with running(app) as base:
        assert app.state.service.predictor.variant == "int8-cascade"
        got = post(base, "/predict", {"texts": texts}).json()["predictions"]
    assert [g["label"] for g in got] == [r["label"] for r in reference]
    assert all(abs(g["score"] - r["score"]) <= 1e-5 for g, r in zip(got, reference))


# ---- monitoring: the answers' quantities on /metrics (the log: test_prediction_log.py) ----

def test_answers_are_counted_by_label_score_and_length(chunk_base, predictor):
    """Answers under truncate and chunk alike, with runtime.monitor's quantities; explain's rows are not answers."""
    from onnxpack.runtime.monitor import length_edges

    texts = ["go", LONG]
    names = ["onnxpack_text_tokens_count", "onnxpack_text_tokens_sum", "onnxpack_truncated_texts_total",
             "onnxpack_tokens_total", "onnxpack_unknown_tokens_total"]
    before = {name: metric(chunk_base, name) for name in names}
    labels_before = {label: metric(chunk_base, "onnxpack_predictions_total", label=label) for label in predictor.labels}
    answered = [post(chunk_base, "/predict", {"texts": texts, "long_text": mode}).json()["predictions"]
                for mode in ("truncate", "chunk")]
    assert post(chunk_base, "/explain", {"texts": ["the cat sat"]}).status_code == 200
    after = {name: metric(chunk_base, name) - before[name] for name in names}
    tokens = len(predictor.tokenizer.encode("go").ids) + predictor.max_length  # LONG's first window is full
    assert after == {"onnxpack_text_tokens_count": 4, "onnxpack_text_tokens_sum": 2 * tokens,
                     "onnxpack_truncated_texts_total": 2, "onnxpack_tokens_total": 2 * tokens,
                     "onnxpack_unknown_tokens_total": 0}
    for label in predictor.labels:
        assert metric(chunk_base, "onnxpack_predictions_total", label=label) - labels_before[label] == \
            sum(a["label"] == label for answers in answered for a in answers)
    # a package without a reference profile: the default edges, from its max_length
    edge = length_edges(predictor.max_length)[-1]
    assert metric(chunk_base, "onnxpack_text_tokens_bucket", le=str(edge)) == metric(chunk_base, "onnxpack_text_tokens_count")


def test_prediction_metrics_can_be_turned_off(package_dir):
    with running(create_app(package_dir, ServeConfig(grpc_port=0, prediction_metrics=False))) as base:
        assert post(base, "/predict", {"texts": ["go"]}).status_code == 200
        text = httpx.get(f"{base}/metrics").text
    assert "onnxpack_requests_total" in text and "onnxpack_predictions" not in text and "onnxpack_text_tokens" not in text


def test_serve_cli_takes_the_monitoring_options(package_dir, monkeypatch, tmp_path):
    import onnxpack.serve

    made = {}
    monkeypatch.setattr(onnxpack.serve, "create_app", lambda package, config: made.setdefault("config", config))
    monkeypatch.setattr(onnxpack.serve, "run", lambda *args, **kwargs: None)
    result = CliRunner().invoke(cli_app, ["serve", str(package_dir), "--log-predictions", str(tmp_path), "--log-texts",
                                          "--log-max-mb", "8", "--log-max-age-s", "60", "--no-prediction-metrics"])
    assert result.exit_code == 0, result.output
    config = made["config"]
    assert (config.log_predictions, config.log_texts, config.log_max_mb, config.log_max_age_s,
            config.prediction_metrics) == (str(tmp_path), True, 8, 60, False)
