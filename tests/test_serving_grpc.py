"""serve-local over a real gRPC connection: outputs, versions, metadata, TF Serving's
status codes, bad inputs, concurrency; the gRPC client's retries and deadlines.

The server runs in this process (tests/serving_helpers.py: `LocalModelServer` on free
ports) and every call goes through a grpc channel to 127.0.0.1, so requests and answers
are serialised exactly as with TF Serving.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.client import GrpcClient, ServerError
from serving_helpers import (
    SENTENCES,
    direct_outputs,
    free_port,
    max_abs_diff,
    shared_registry,
    shared_server,
)

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def client():
    server = shared_server()
    with GrpcClient(f"127.0.0.1:{server.grpc_port}", timeout=30, retries=0) as grpc_client:
        yield grpc_client


def expect_error(code: grpc.StatusCode, call, *fragments: str) -> ServerError:
    with pytest.raises(ServerError) as caught:
        call()
    assert caught.value.code == code, caught.value
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    return caught.value


def assert_serves(client, version: int = 2):
    outputs = client.predict("encoder", {"text": SENTENCES[:1]})
    reference = direct_outputs("encoder", version, SENTENCES[:1])
    assert max_abs_diff(outputs["embedding"], reference["embedding"]) <= TOLERANCE


def test_outputs_equal_the_saved_model_loaded_directly(client):
    outputs = client.predict("encoder", {"text": SENTENCES})
    reference = direct_outputs("encoder", 2, SENTENCES)
    assert sorted(outputs) == sorted(reference) == ["cls_embedding", "embedding", "num_tokens"]
    for name in reference:
        assert outputs[name].dtype == reference[name].dtype
        assert max_abs_diff(outputs[name], reference[name]) <= TOLERANCE, name


def test_version_number_label_and_latest_default(client):
    v1 = direct_outputs("encoder", 1, SENTENCES)["embedding"]
    v2 = direct_outputs("encoder", 2, SENTENCES)["embedding"]
    assert max_abs_diff(v1, v2) > 1e-3  # different weights, so the check below means something
    response = client.predict_response("encoder", {"text": SENTENCES})
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    one = client.predict("encoder", {"text": SENTENCES}, version=1)["embedding"]
    assert max_abs_diff(one, v1) <= TOLERANCE
    stable = client.predict("encoder", {"text": SENTENCES}, version_label="stable")["embedding"]
    assert max_abs_diff(stable, v1) <= TOLERANCE
    canary = client.predict_response("encoder", {"text": SENTENCES}, version_label="canary")
    assert canary.model_spec.version.value == 2
    other = client.predict_response("other", {"text": SENTENCES})
    assert other.model_spec.version.value == 7


def test_signature_selection_and_output_filter(client):
    tokens = client.predict("encoder", {"text": SENTENCES}, signature_name="tokenize")
    reference = direct_outputs("encoder", 2, SENTENCES, signature="tokenize")
    assert np.array_equal(tokens["input_ids"], reference["input_ids"])
    by_ids = client.predict("encoder", {"input_ids": tokens["input_ids"],
                                        "input_mask": tokens["input_mask"]},
                            signature_name="encode_ids", output_filter=["embedding"])
    assert list(by_ids) == ["embedding"]
    assert max_abs_diff(by_ids["embedding"],
                        direct_outputs("encoder", 2, SENTENCES)["embedding"]) <= 1e-5


def test_metadata_and_status(client):
    signatures = client.signatures("encoder")
    assert sorted(signatures) == ["encode_ids", "serving_default", "tokenize"]
    text_input = signatures["serving_default"].inputs["text"]
    assert text_input.dtype == tf.string.as_datatype_enum
    assert sorted(signatures["serving_default"].outputs) == [
        "cls_embedding", "embedding", "num_tokens"]
    assert client.metadata("encoder", version=1).model_spec.version.value == 1
    status = client.status("encoder")
    assert [(row["version"], row["state"], row["error_code"]) for row in status] == [
        (2, "AVAILABLE", "OK"), (1, "AVAILABLE", "OK")]


def test_error_statuses_match_tf_serving_and_the_server_keeps_serving(client):
    texts = {"text": SENTENCES[:1]}
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: client.predict("nope", texts),
                 "Servable not found for request: Latest(nope)")
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: client.predict("encoder", texts, version=9),
                 "Specific(encoder, 9)")
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: client.metadata("nope"))
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: client.status("encoder", version=9))
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 lambda: client.predict("encoder", {"txt": SENTENCES[:1]}),
                 "input tensor alias not found in signature: txt", "{text}")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 lambda: client.predict("encoder", {"text": np.array([1, 2], np.int64)}),
                 "'text'", "int64", "string")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 lambda: client.predict("encoder", {"text": [["a", "b"]]}),
                 "'text'", "shape")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 lambda: client.predict("encoder", {}, signature_name="encode_ids"),
                 "Missing but required: {input_ids,input_mask}")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 lambda: client.predict("encoder", {"input_ids": np.array([[2, 3]], np.int32),
                                                    "input_mask": [[1.0, 1.0]]},
                                        signature_name="encode_ids"),
                 "'input_mask'", "float", "int32")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 lambda: client.predict("encoder", texts, output_filter=["logits"]),
                 "output tensor alias not found in signature: logits")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 lambda: client.predict("encoder", texts, version_label="beta"),
                 "Unrecognized servable version label: beta")
    expect_error(grpc.StatusCode.FAILED_PRECONDITION,
                 lambda: client.predict("encoder", texts, signature_name="classify"),
                 'Serving signature key "classify" not found.')
    # A malformed TensorProto (3 values for shape [2]) is a parse error, not a crash.
    proto = tf.make_tensor_proto(np.array([1, 2, 3], np.int32))
    proto.tensor_shape.dim[0].size = 2
    expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                 lambda: client.predict("encoder", {"input_ids": proto, "input_mask": proto},
                                        signature_name="encode_ids"))
    # Classify is not part of the TF2 SavedModel API.
    stub = prediction_service_pb2_grpc.PredictionServiceStub(client._channel)
    from tensorflow_serving.apis import classification_pb2

    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(classification_pb2.ClassificationRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert_serves(client)


BAD_INPUTS = {
    "empty": [b""],
    "whitespace_only": [b" \t\n  \r\n "],
    "long_50000_chars": [
        ("All work and no play makes Jack a dull boy. " * 1200)[:50000].encode()],
    "invalid_utf8": [b"caf\xc3 au lait \xff\xfe broken \xe2\x82 end"],
    "emoji_cjk": ["Rocket \U0001F680 launch \U0001F389! 北京欢迎你。東京タワー 서울".encode()],
    "batch_0": np.array([], dtype=object),
    "batch_256": [sentence.encode() for sentence in (SENTENCES * 64)],
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_get_sane_outputs(client, case):
    """The test export truncates and handles an empty batch, so every case must succeed
    through the server (wrong dtypes, names and shapes are covered above)."""
    texts = BAD_INPUTS[case]
    outputs = client.predict("encoder", {"text": texts})
    batch = len(texts)
    assert outputs["embedding"].shape == outputs["cls_embedding"].shape == (batch, 64)
    assert np.all(np.isfinite(outputs["embedding"]))
    assert np.all((outputs["num_tokens"] >= 2) & (outputs["num_tokens"] <= 32))
    if batch:
        reference = direct_outputs("encoder", 2, list(texts))
        assert max_abs_diff(outputs["embedding"], reference["embedding"]) <= TOLERANCE
    assert_serves(client)


def test_concurrent_clients_complete_without_errors():
    """The issue's acceptance run: 8 clients x 200 requests (about 8 s here with the
    tiny export; clients and server share this process and its 2 cores)."""
    from serving.load_test import load_test

    result = load_test(f"127.0.0.1:{shared_server().grpc_port}", "encoder",
                       {"text": SENTENCES[:1]}, clients=8, requests=200)
    assert result["errors"] == []
    assert result["completed"] == 8 * 200
    print(f"\n8 clients x 200 requests: p50 {result['p50_ms']:.2f} ms, p99 "
          f"{result['p99_ms']:.2f} ms, {result['requests_per_s']:.0f} requests/s")


class _ScriptedService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Answers Predict from a script of status codes (None = success), or sleeps."""

    def __init__(self, script=(), sleep: float = 0.0):
        self.script = list(script)
        self.sleep = sleep
        self.calls = 0

    def Predict(self, request, context):  # noqa: N802
        self.calls += 1
        time.sleep(self.sleep)
        code = self.script.pop(0) if self.script else None
        if code is not None:
            context.abort(code, f"scripted {code.name}")
        response = predict_pb2.PredictResponse()
        response.outputs["echo"].CopyFrom(request.inputs["text"])
        return response


def start_scripted(service) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_client_retries_unavailable_only():
    service = _ScriptedService([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE])
    server, port = start_scripted(service)
    try:
        with GrpcClient(f"127.0.0.1:{port}", timeout=10, retries=3, backoff=0.05) as client:
            assert client.predict("m", {"text": ["hi"]})["echo"].tolist() == [b"hi"]
            assert service.calls == 3
            service.script, service.calls = [grpc.StatusCode.INVALID_ARGUMENT], 0
            expect_error(grpc.StatusCode.INVALID_ARGUMENT,
                         lambda: client.predict("m", {"text": ["hi"]}))
            assert service.calls == 1
            service.script, service.calls = [grpc.StatusCode.UNAVAILABLE] * 5, 0
            expect_error(grpc.StatusCode.UNAVAILABLE,
                         lambda: client.predict("m", {"text": ["hi"]}))
            assert service.calls == 4  # the first try and 3 retries
    finally:
        server.stop(0)


def test_client_honours_deadlines():
    server, port = start_scripted(_ScriptedService(sleep=3.0))
    try:
        with GrpcClient(f"127.0.0.1:{port}", timeout=30, retries=3) as client:
            began = time.perf_counter()
            expect_error(grpc.StatusCode.DEADLINE_EXCEEDED,
                         lambda: client.predict("m", {"text": ["hi"]}, timeout=0.3))
            assert time.perf_counter() - began < 1.5
    finally:
        server.stop(0)
    # Nothing listening: retries stop when the deadline is spent.
    with GrpcClient(f"127.0.0.1:{free_port()}", timeout=0.8, retries=100,
                    backoff=0.05) as client:
        began = time.perf_counter()
        error = expect_error(grpc.StatusCode.UNAVAILABLE,
                             lambda: client.predict("m", {"text": ["hi"]}))
        assert error is not None and time.perf_counter() - began < 2.0


def test_client_retries_until_a_late_server_starts():
    from serving.server import LocalModelServer

    port = free_port()
    late = LocalModelServer(shared_registry(), grpc_port=port, rest_port=None,
                            host="127.0.0.1", workers=2, poll_seconds=0)
    timer = threading.Timer(1.0, late.start)
    timer.start()
    try:
        with GrpcClient(f"127.0.0.1:{port}", timeout=20, retries=30, backoff=0.05,
                        max_backoff=0.3) as client:
            began = time.perf_counter()
            outputs = client.predict("encoder", {"text": SENTENCES[:1]})
            assert time.perf_counter() - began >= 0.5
            reference = direct_outputs("encoder", 2, SENTENCES[:1])
            assert max_abs_diff(outputs["embedding"], reference["embedding"]) <= TOLERANCE
    finally:
        timer.join()
        late.stop(0)
