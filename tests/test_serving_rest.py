"""serve-local's REST API (TF Serving's routes and JSON formats) and the REST client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from serving.client import RestClient, ServerError
from serving_helpers import SENTENCES, direct_outputs, max_abs_diff, shared_server

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def base_url() -> str:
    return f"http://127.0.0.1:{shared_server().rest_port}"


@pytest.fixture(scope="module")
def client(base_url) -> RestClient:
    return RestClient(base_url, timeout=30, retries=0)


def http(base_url: str, method: str, path: str, body=None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    request = urllib.request.Request(base_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_columnar_and_row_formats_equal_the_saved_model(client, base_url):
    reference = direct_outputs("encoder", 2, SENTENCES)
    columnar = client.predict("encoder", {"text": SENTENCES})
    rows = client.predict("encoder", {"text": SENTENCES}, row_format=True)
    for outputs in (columnar, rows):
        assert sorted(outputs) == sorted(reference)
        for name in reference:
            assert max_abs_diff(outputs[name], reference[name]) <= TOLERANCE, name
    # Raw bodies as TF Serving documents them: bare instances for a one-input signature.
    status, body = http(base_url, "POST", "/v1/models/encoder:predict",
                        {"instances": SENTENCES[:2]})
    assert status == 200 and len(body["predictions"]) == 2
    assert sorted(body["predictions"][0]) == ["cls_embedding", "embedding", "num_tokens"]
    status, body = http(base_url, "POST", "/v1/models/encoder/versions/1:predict",
                        {"inputs": {"text": SENTENCES[:2]}})
    assert status == 200
    v1 = direct_outputs("encoder", 1, SENTENCES[:2])["embedding"]
    assert max_abs_diff(body["outputs"]["embedding"], v1) <= TOLERANCE
    status, body = http(base_url, "POST", "/v1/models/encoder/labels/stable:predict",
                        {"inputs": SENTENCES[:2]})
    assert status == 200 and max_abs_diff(body["outputs"]["embedding"], v1) <= TOLERANCE


def test_signature_name_b64_strings_and_int_inputs(base_url):
    status, body = http(base_url, "POST", "/v1/models/encoder:predict", {
        "signature_name": "tokenize",
        "instances": [{"text": {"b64": "UGFyaXMgaXMgbG92ZWx5Lg=="}}]})  # "Paris is lovely."
    assert status == 200
    ids = body["predictions"][0]["input_ids"]
    reference = direct_outputs("encoder", 2, ["Paris is lovely."], "tokenize")["input_ids"]
    assert ids == reference[0].tolist()
    status, body = http(base_url, "POST", "/v1/models/encoder:predict", {
        "signature_name": "encode_ids",
        "instances": [{"input_ids": ids, "input_mask": [1] * len(ids)}]})
    assert status == 200
    embedding = direct_outputs("encoder", 2, ["Paris is lovely."])["embedding"]
    assert max_abs_diff([body["predictions"][0]["embedding"]], embedding) <= 1e-5


def test_status_and_metadata_routes(base_url):
    status, body = http(base_url, "GET", "/v1/models/encoder")
    assert status == 200
    assert body["model_version_status"][0] == {
        "version": "2", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}
    status, body = http(base_url, "GET", "/v1/models/encoder/versions/1")
    assert status == 200 and [row["version"] for row in body["model_version_status"]] == ["1"]
    status, body = http(base_url, "GET", "/v1/models/encoder/metadata")
    assert status == 200 and body["model_spec"]["version"] == "2"
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["text"]["dtype"] == "DT_STRING"
    assert sorted(signature["outputs"]) == ["cls_embedding", "embedding", "num_tokens"]


@pytest.mark.parametrize("method,path,body,status,fragment", [
    ("POST", "/v1/models/nope:predict", {"instances": ["a"]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/encoder/versions/9:predict", {"instances": ["a"]}, 404,
     "Specific(encoder, 9)"),
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("POST", "/v1/models/encoder:predict", {"inputs": {"txt": ["a"]}}, 400,
     "input tensor alias not found in signature: txt"),
    ("POST", "/v1/models/encoder:predict", {"inputs": {"text": [1, 2]}}, 400, "'text'"),
    ("POST", "/v1/models/encoder:predict",
     {"signature_name": "encode_ids", "inputs": {"input_ids": [["a"]], "input_mask": [[1]]}},
     400, "'input_ids'"),
    ("POST", "/v1/models/encoder:predict",
     {"signature_name": "encode_ids", "inputs": {"input_ids": [[2, 3], [4]],
                                                 "input_mask": [[1, 1], [1]]}},
     400, "rectangular"),
    ("POST", "/v1/models/encoder:predict", b"{not json", 400, "JSON Parse error"),
    ("POST", "/v1/models/encoder:predict", {"text": ["a"]}, 400, "instances"),
    ("POST", "/v1/models/encoder:predict", {"signature_name": "x", "instances": ["a"]}, 400,
     'Serving signature key "x" not found.'),
    ("POST", "/v1/models/encoder:classify", {"examples": []}, 501, "Predict API only"),
    ("GET", "/v2/whatever", None, 404, "Malformed request"),
])
def test_errors_have_tf_serving_http_statuses(base_url, client, method, path, body, status,
                                              fragment):
    got_status, got = http(base_url, method, path, body)
    assert got_status == status, got
    assert fragment in got["error"], got["error"]
    outputs = client.predict("encoder", {"text": SENTENCES[:1]})  # still serving
    assert outputs["embedding"].shape == (1, 64)


def test_rest_client_raises_server_error_with_grpc_code(client):
    with pytest.raises(ServerError) as caught:
        client.predict("nope", {"text": ["a"]})
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and caught.value.http_status == 404
    unreachable = RestClient("127.0.0.1:9", timeout=0.5, retries=2, backoff=0.05)
    with pytest.raises(ServerError) as caught:
        unreachable.status("encoder")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_rest_bad_inputs(client):
    texts = ["", " \t\n ", "x" * 50_000, "Rocket \U0001F680 北京欢迎你。"]
    outputs = client.predict("encoder", {"text": texts})
    assert outputs["embedding"].shape == (4, 64)
    assert np.all(np.isfinite(outputs["embedding"]))
    empty = client.predict("encoder", {"text": []})
    assert np.asarray(empty["embedding"]).size == 0
