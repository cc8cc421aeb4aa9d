"""onnxpack.serve (gRPC): V2's GRPCInferenceService beside HTTP, spoken to with Triton's own
`tritonclient.grpc` unchanged, and with the raw stubs for requests that client would never send."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from live import HOST, TEXTS, Gate, free_port, metric, post, running, wait_until
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from onnxpack.runtime.feed import encode
from onnxpack.runtime.predictor import Predictor
from onnxpack.serve import ServeConfig, create_app
from onnxpack.serve import service as serve_service


@pytest.fixture(scope="module")
def servers(package_dir) -> Iterator[tuple[str, str]]:
    """One process serving HTTP and gRPC: (HTTP base URL, gRPC address). The batching delay is long
    enough that an HTTP and a gRPC request sent together share a model call."""
    port = free_port()
    with running(create_app(package_dir, ServeConfig(grpc_port=port, max_delay_ms=200))) as base:
        yield base, f"{HOST}:{port}"


@pytest.fixture(scope="module")
def client(servers) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(url=servers[1]) as c:
        yield c


@pytest.fixture(scope="module")
def stub(servers) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(servers[1]) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def predictor(package_dir) -> Iterator[Predictor]:
    with Predictor(package_dir) as p:
        yield p


def text_input(texts: list[str], name: str = "text") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return tensor


def status_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_health_and_metadata(client, package_dir):
    name = package_dir.name
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    metadata = client.get_model_metadata(name, as_json=True)
    assert metadata["name"] == name and metadata["platform"] == "onnxruntime_onnx"
    assert [t["name"] for t in metadata["inputs"]][:2] == ["text", "input_ids"]
    assert {t["name"]: t["datatype"] for t in metadata["outputs"]} == {"logits": "FP32", "label": "BYTES",
                                                                      "score": "FP32"}
    assert client.get_server_metadata(as_json=True)["name"] == "onnxpack"


def test_text_answers_equal_predict(client, predictor, package_dir):
    want = predictor.predict(TEXTS)
    result = client.infer(package_dir.name, [text_input(TEXTS)], request_id="r-7")
    assert [v.decode() for v in result.as_numpy("label")] == [w["label"] for w in want]
    assert result.as_numpy("score").tolist() == pytest.approx([w["score"] for w in want], abs=1e-6)
    np.testing.assert_allclose(result.as_numpy("logits"), predictor.predict_logits(TEXTS), atol=1e-5)
    response = result.get_response()
    assert response.id == "r-7" and response.parameters["truncated"].string_param == "[]"
    only = client.infer(package_dir.name, [text_input(TEXTS[:1])], outputs=[grpcclient.InferRequestedOutput("label")])
    assert only.as_numpy("score") is None and only.as_numpy("label")[0].decode() == want[0]["label"]


def test_the_long_text_parameter(client, predictor, package_dir):
    """`long_text` among the request's parameters; `windows` among the answer's, a JSON list as `truncated`."""
    long = " ".join(["the cat sat on the mat"] * 30)
    want = predictor.predict([long, "go"], long_text="chunk")
    result = client.infer(package_dir.name, [text_input([long, "go"])], parameters={"long_text": "chunk"})
    np.testing.assert_allclose(result.as_numpy("logits"), predictor.predict_logits([long, "go"], long_text="chunk"),
                               atol=1e-5)
    parameters = result.get_response().parameters
    assert json.loads(parameters["windows"].string_param) == [w["windows"] for w in want] and want[0]["windows"] > 1
    assert parameters["truncated"].string_param == "[]"
    plain = client.infer(package_dir.name, [text_input([long])]).get_response().parameters  # the default: truncate
    assert "windows" not in plain and plain["truncated"].string_param == "[0]"


def test_token_tensors_and_typed_contents(client, stub, predictor, package_dir):
    feed = encode(predictor.tokenizer, TEXTS, predictor.input_names)
    tensors = []
    for name, values in feed.items():
        tensor = grpcclient.InferInput(name, list(values.shape), "INT64")
        tensor.set_data_from_numpy(values)
        tensors.append(tensor)
    result = client.infer(package_dir.name, tensors)
    np.testing.assert_allclose(result.as_numpy("logits"), predictor.predict_logits(TEXTS), atol=1e-5)
    # The same request with typed contents instead of raw bytes (other V2 clients send that).
    request = pb.ModelInferRequest(model_name=package_dir.name)
    text = request.inputs.add(name="text", datatype="BYTES", shape=[len(TEXTS)])
    text.contents.bytes_contents.extend(t.encode() for t in TEXTS)
    response = stub.ModelInfer(request)
    logits = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(len(TEXTS), -1)
    np.testing.assert_allclose(logits, predictor.predict_logits(TEXTS), atol=1e-5)


def test_http_and_grpc_share_one_batcher_and_one_set_of_metrics(servers, client, package_dir):
    base, _ = servers
    calls, rows = metric(base, "onnxpack_batch_size_count"), metric(base, "onnxpack_batch_size_sum")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        by_http = pool.submit(post, base, "/predict", {"texts": ["go"]})
        by_grpc = pool.submit(client.infer, package_dir.name, [text_input(["go"])])
        assert by_http.result().status_code == 200 and by_grpc.result().as_numpy("label") is not None
    assert metric(base, "onnxpack_batch_size_sum") - rows == 2
    assert metric(base, "onnxpack_batch_size_count") - calls == 1  # the two rows shared a model call
    route = "/inference.GRPCInferenceService/ModelInfer"
    assert metric(base, "onnxpack_requests_total", route=route, status="OK") >= 1


def bad(name: str, datatype: str, shape: list[int], values: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(values)
    return tensor


def test_limits_get_the_matching_status(client, package_dir, servers):
    name = package_dir.name
    words = np.array([b"go"], dtype=np.object_)
    cases = {
        "unknown model": (lambda: client.infer("nope", [text_input(["go"])]), "NOT_FOUND", "unknown model 'nope'"),
        "text as INT64": (lambda: client.infer(name, [bad("text", "INT64", [1], np.array([3]))]),
                          "INVALID_ARGUMENT", "must be BYTES"),
        "2-D text": (lambda: client.infer(name, [bad("text", "BYTES", [1, 1, 1], words.reshape(1, 1, 1))]),
                     "INVALID_ARGUMENT", "expected [n] or [n, 1]"),
        "too many texts": (lambda: client.infer(name, [text_input(["go"] * 129)]), "INVALID_ARGUMENT", "at most 128"),
        "empty text": (lambda: client.infer(name, [text_input(["go", " "])]), "INVALID_ARGUMENT", "data[1]: is empty"),
        "id outside the vocabulary": (lambda: client.infer(name, [
            bad("input_ids", "INT64", [1, 2], np.array([[2, 99_999_999]])),
            bad("attention_mask", "INT64", [1, 2], np.array([[1, 1]]))]), "INVALID_ARGUMENT", "outside the vocabulary"),
        "ids as FP32": (lambda: client.infer(name, [
            bad("input_ids", "FP32", [1, 2], np.array([[2, 3]], dtype=np.float32)),
            bad("attention_mask", "INT64", [1, 2], np.array([[1, 1]]))]), "INVALID_ARGUMENT", "must be INT64"),
        "message over the limit": (lambda: client.infer(name, [text_input(["word " * 250_000])]),
                                   "RESOURCE_EXHAUSTED", ""),
        "unknown output": (lambda: client.infer(name, [text_input(["go"])],
                                                outputs=[grpcclient.InferRequestedOutput("probs")]),
                           "INVALID_ARGUMENT", "unknown output 'probs'"),
        "unknown long_text": (lambda: client.infer(name, [text_input(["go"])], parameters={"long_text": "all"}),
                              "INVALID_ARGUMENT", "parameter long_text must be truncate or chunk, got 'all'"),
        "too many windows": (lambda: client.infer(name, [text_input(["the cat sat on the mat " * 700])],
                                                  parameters={"long_text": "chunk"}),
                             "INVALID_ARGUMENT", "the server takes at most 64 per request (--max-windows)"),
    }
    for what, (call, status, message) in cases.items():
        got_status, got_message = status_of(call)
        assert got_status == f"StatusCode.{status}" and message in got_message, (what, got_status, got_message)
    assert client.is_server_live()  # and the server is still serving
    assert metric(servers[0], "onnxpack_request_errors_total", route="/inference.GRPCInferenceService/ModelInfer",
                  status="INVALID_ARGUMENT") >= 7


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.raw_input_contents.append(b"\x02\x00\x00\x00go"), "raw_input_contents holds 2 tensors for 1 inputs"),
    (lambda r: r.raw_input_contents.__setitem__(0, b"\x09\x00\x00\x00go"), "runs past its tensor's bytes"),
    (lambda r: r.raw_input_contents.__setitem__(0, b"\x02\x00\x00\x00\xff\xfe"), "not UTF-8"),
    (lambda r: r.inputs[0].shape.__setitem__(0, 3), "1 elements for shape [3]"),
    (lambda r: r.inputs[0].shape.__setitem__(0, -1), "shape must be a list of sizes"),
])
def test_raw_tensors_that_lie_get_invalid_argument(stub, package_dir, edit, message):
    request = pb.ModelInferRequest(model_name=package_dir.name)
    request.inputs.add(name="text", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(b"\x02\x00\x00\x00go")
    edit(request)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details()


def test_a_busy_port_is_one_line(package_dir, servers):
    """gRPC's port already taken: the server does not come up half-way."""
    taken = servers[1].rsplit(":", 1)[1]
    result = subprocess.run([sys.executable, "-m", "onnxpack", "serve", str(package_dir), "--port", str(free_port()),
                             "--grpc-port", taken], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert f"gRPC cannot listen on {HOST}:{taken}" in result.stderr.strip().splitlines()[-1], result.stderr


def test_classification_extension_over_grpc_and_http(client, servers, predictor, package_dir):
    """`class_count` on the logits output: each row's best classes as "value:index:label", best first."""
    import tritonclient.http as httpclient

    want = predictor.predict(TEXTS)
    logits = predictor.predict_logits(TEXTS)
    k = len(predictor.labels)
    by_grpc = client.infer(package_dir.name, [text_input(TEXTS)],
                           outputs=[grpcclient.InferRequestedOutput("logits", class_count=k)]).as_numpy("logits")
    with httpclient.InferenceServerClient(servers[0].removeprefix("http://")) as http:
        text = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_))
        by_http = http.infer(package_dir.name, [text],
                             outputs=[httpclient.InferRequestedOutput("logits", class_count=1)]).as_numpy("logits")
        assert "classification" in http.get_server_metadata()["extensions"]
    assert by_grpc.shape == (len(TEXTS), k) and by_http.shape == (len(TEXTS), 1)
    for row, top, w, row_logits in zip(by_grpc, by_http, want, logits):
        classes = [v.decode().split(":") for v in row]
        assert [c[2] for c in classes][0] == w["label"] == top[0].decode().split(":")[2]
        assert [float(c[0]) for c in classes] == pytest.approx(sorted(row_logits, reverse=True), abs=1e-4)
        assert [predictor.labels[int(c[1])] for c in classes] == [c[2] for c in classes]
    status, message = status_of(lambda: client.infer(
        package_dir.name, [text_input(["go"])], outputs=[grpcclient.InferRequestedOutput("label", class_count=2)]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "applies to 'logits' only" in message


def test_unavailable_while_loading(package_dir, monkeypatch):
    """Before the warm-up inference ends: live, not ready, and ModelInfer is UNAVAILABLE."""
    gate = Gate(open_=False)
    monkeypatch.setattr(serve_service, "Predictor", gate.predictor_class())
    port = free_port()
    with running(create_app(package_dir, ServeConfig(grpc_port=port)), wait_ready=False):
        assert gate.entered.wait(30)
        with grpcclient.InferenceServerClient(f"{HOST}:{port}") as c:
            assert c.is_server_live() and not c.is_server_ready() and not c.is_model_ready(package_dir.name)
            status, message = status_of(lambda: c.infer(package_dir.name, [text_input(["go"])]))
            assert status == "StatusCode.UNAVAILABLE" and "not ready yet" in message
            gate.opened.set()
            wait_until(c.is_server_ready, what="ready after warm-up")
            assert c.infer(package_dir.name, [text_input(["go"])]).as_numpy("label") is not None
