"""Clients for TF Serving (and `serve-local`): gRPC on `tensorflow-serving-api`, and REST.

Both take and return numpy-friendly values: inputs are a dict of arrays or lists (Python
`str` becomes a UTF-8 string tensor), outputs a dict of numpy arrays. Both retry with
exponential backoff (and jitter) only when the server is UNAVAILABLE (not started yet,
restarting, overloaded); every other status is raised at once as `ServerError`, whose
`code` is the gRPC status code. `timeout` is the deadline for the whole call, retries
included.

Example:
    >>> with GrpcClient("localhost:8500") as client:  # doctest: +SKIP
    ...     outputs = client.predict("encoder", {"text": ["SpanBERT masks spans."]})
    >>> outputs["embedding"].shape  # doctest: +SKIP
    (1, 384)
    >>> RestClient("localhost:8501").predict("encoder", {"text": ["Hi"]})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Mapping, Sequence

import grpc
import numpy as np

GRPC_OPTIONS = [("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1)]
HTTP_TO_CODE = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
                409: grpc.StatusCode.ABORTED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
                499: grpc.StatusCode.CANCELLED, 500: grpc.StatusCode.INTERNAL,
                501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE,
                504: grpc.StatusCode.DEADLINE_EXCEEDED}


class ServerError(Exception):
    """A failed call: `code` (grpc.StatusCode), the server's `message`, and for REST the
    HTTP status."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status


class _Retrying:
    """Deadline + retry-on-UNAVAILABLE loop shared by both clients."""

    def __init__(self, timeout: float, retries: int, backoff: float, max_backoff: float):
        if timeout <= 0 or retries < 0 or backoff <= 0:
            raise ValueError("timeout and backoff must be > 0 and retries >= 0")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff

    def run(self, attempt: Callable[[float], Any], timeout: float | None) -> Any:
        deadline = time.monotonic() + (timeout or self.timeout)
        delay = self.backoff
        for attempt_index in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            try:
                return attempt(max(remaining, 1e-3))
            except ServerError as error:
                if error.code != grpc.StatusCode.UNAVAILABLE or attempt_index == self.retries:
                    raise
                pause = delay * random.uniform(0.5, 1.0)
                if deadline - time.monotonic() <= pause:
                    raise
                time.sleep(pause)
                delay = min(delay * 2, self.max_backoff)
        raise AssertionError("unreachable")


class GrpcClient:
    """TF Serving `PredictionService` client (`Predict`, `GetModelMetadata`) plus
    `ModelService.GetModelStatus`.

    Args:
        target: "host:port" of the gRPC endpoint (TF Serving's default port is 8500).
        timeout: default deadline in seconds for a call, retries included.
        retries: retries after an UNAVAILABLE answer (0 = none).
        backoff: first pause between retries in seconds; doubles up to `max_backoff`.
    """

    def __init__(self, target: str, timeout: float = 10.0, retries: int = 5,
                 backoff: float = 0.1, max_backoff: float = 2.0):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.target = target
        self._retrying = _Retrying(timeout, retries, backoff, max_backoff)
        # Reconnect quickly: with grpc's default (1 s, growing 1.6x) a retry after a
        # refused connection would fail fast until the channel's own timer fires.
        backoff_ms = int(backoff * 1000)
        self._channel = grpc.insecure_channel(target, options=GRPC_OPTIONS + [
            ("grpc.initial_reconnect_backoff_ms", backoff_ms),
            ("grpc.min_reconnect_backoff_ms", backoff_ms),
            ("grpc.max_reconnect_backoff_ms", int(max_backoff * 1000))])
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def predict(self, model: str, inputs: Mapping[str, Any], signature_name: str = "",
                version: int | None = None, version_label: str | None = None,
                output_filter: Sequence[str] = (),
                timeout: float | None = None) -> dict[str, np.ndarray]:
        """Runs a signature; returns {output name: numpy array} (strings as bytes)."""
        response = self.predict_response(model, inputs, signature_name, version,
                                         version_label, output_filter, timeout)
        import tensorflow as tf

        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def predict_response(self, model: str, inputs: Mapping[str, Any], signature_name: str = "",
                         version: int | None = None, version_label: str | None = None,
                         output_filter: Sequence[str] = (), timeout: float | None = None):
        """Like `predict`, but returns the PredictResponse proto (with its model_spec)."""
        import tensorflow as tf
        from tensorflow.core.framework import tensor_pb2
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        _fill_spec(request.model_spec, model, version, version_label, signature_name)
        for name, value in inputs.items():
            if isinstance(value, tensor_pb2.TensorProto):
                request.inputs[name].CopyFrom(value)
            else:
                request.inputs[name].CopyFrom(tf.make_tensor_proto(_as_array(value)))
        request.output_filter.extend(output_filter)
        return self._call(self._prediction.Predict, request, timeout)

    def metadata(self, model: str, version: int | None = None,
                 version_label: str | None = None, timeout: float | None = None):
        """The GetModelMetadataResponse (signature_def); see `signatures`."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        _fill_spec(request.model_spec, model, version, version_label, "")
        request.metadata_field.append("signature_def")
        return self._call(self._prediction.GetModelMetadata, request, timeout)

    def signatures(self, model: str, version: int | None = None,
                   timeout: float | None = None) -> dict[str, Any]:
        """{signature name: SignatureDef} of the model (latest version by default)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        response = self.metadata(model, version, timeout=timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return dict(signature_map.signature_def)

    def status(self, model: str, version: int | None = None,
               timeout: float | None = None) -> list[dict[str, Any]]:
        """GetModelStatus as [{version, state, error_code, error_message}]."""
        from tensorflow_serving.apis import get_model_status_pb2

        from serving.signature_metadata import error_codes

        request = get_model_status_pb2.GetModelStatusRequest()
        _fill_spec(request.model_spec, model, version, None, "")
        response = self._call(self._models.GetModelStatus, request, timeout)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [{"version": row.version, "state": state_name(row.state),
                 "error_code": error_codes().values_by_number[row.status.error_code].name,
                 "error_message": row.status.error_message}
                for row in response.model_version_status]

    def _call(self, method, request, timeout: float | None):
        def attempt(remaining: float):
            try:
                return method(request, timeout=remaining)
            except grpc.RpcError as error:
                raise ServerError(error.code(), error.details() or "") from error

        return self._retrying.run(attempt, timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class RestClient:
    """TF Serving REST API client (`:predict`, `/metadata`, status) on urllib.

    Args:
        server: "host:port" or a base URL ("http://host:8501").
        timeout, retries, backoff, max_backoff: as for `GrpcClient`; connection refused
            and HTTP 503 count as UNAVAILABLE.
    """

    def __init__(self, server: str, timeout: float = 10.0, retries: int = 5,
                 backoff: float = 0.1, max_backoff: float = 2.0):
        self.base_url = (server if "://" in server else f"http://{server}").rstrip("/")
        self._retrying = _Retrying(timeout, retries, backoff, max_backoff)
        self._output_names: dict[tuple, list[str]] = {}

    def predict(self, model: str, inputs: Mapping[str, Any], signature_name: str = "",
                version: int | None = None, version_label: str | None = None,
                row_format: bool = False, timeout: float | None = None
                ) -> dict[str, np.ndarray]:
        """Runs a signature through `:predict` (columnar "inputs" by default, row
        "instances" with `row_format`); returns {output name: numpy array}."""
        from serving import rest_json

        columns = {name: rest_json.encode_input(_as_list(value))
                   for name, value in inputs.items()}
        if row_format:
            sizes = {len(value) for value in columns.values()}
            if len(sizes) != 1:
                raise ValueError("row format needs every input to have the same batch size")
            body: dict[str, Any] = {"instances": [
                {name: value[row] for name, value in columns.items()}
                for row in range(sizes.pop())]}
        else:
            body = {"inputs": columns}
        if signature_name:
            body["signature_name"] = signature_name
        path = _model_path(model, version, version_label) + ":predict"
        answer = self._request("POST", path, body, timeout)
        names = self.output_names(model, signature_name, version, version_label, timeout)
        if row_format:
            predictions = answer["predictions"]
            if len(names) == 1:
                return {names[0]: rest_json.decode_output(predictions)}
            return {name: rest_json.decode_output([row[name] for row in predictions])
                    for name in names}
        outputs = answer["outputs"]
        if len(names) == 1 and not (isinstance(outputs, dict) and set(outputs) == set(names)):
            return {names[0]: rest_json.decode_output(outputs)}
        return {name: rest_json.decode_output(value) for name, value in outputs.items()}

    def metadata(self, model: str, version: int | None = None,
                 version_label: str | None = None, timeout: float | None = None) -> dict:
        """The `GET /v1/models/NAME/metadata` body."""
        return self._request("GET", _model_path(model, version, version_label) + "/metadata",
                             None, timeout)

    def status(self, model: str, version: int | None = None,
               timeout: float | None = None) -> dict:
        """The `GET /v1/models/NAME` body ({"model_version_status": [...]})."""
        return self._request("GET", _model_path(model, version, None), None, timeout)

    def output_names(self, model: str, signature_name: str = "", version: int | None = None,
                     version_label: str | None = None, timeout: float | None = None
                     ) -> list[str]:
        """Output names of a signature (from /metadata, cached): a single-output answer
        carries no name."""
        key = (model, signature_name or "serving_default", version, version_label)
        if key not in self._output_names:
            signatures = self.metadata(model, version, version_label,
                                       timeout)["metadata"]["signature_def"]["signature_def"]
            if key[1] not in signatures:
                raise ServerError(grpc.StatusCode.FAILED_PRECONDITION,
                                  f'Serving signature key "{key[1]}" not found.')
            self._output_names[key] = sorted(signatures[key[1]].get("outputs", {}))
        return self._output_names[key]

    def _request(self, method: str, path: str, body: Any, timeout: float | None) -> Any:
        data = json.dumps(body).encode("utf-8") if body is not None else None

        def attempt(remaining: float):
            request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=remaining) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as error:
                payload = error.read().decode("utf-8", errors="replace")
                try:
                    message = json.loads(payload).get("error", payload)
                except (json.JSONDecodeError, AttributeError):
                    message = payload
                code = HTTP_TO_CODE.get(error.code, grpc.StatusCode.UNKNOWN)
                raise ServerError(code, message, http_status=error.code) from error
            except urllib.error.URLError as error:
                if isinstance(error.reason, TimeoutError):
                    raise ServerError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                      "Deadline Exceeded") from error
                raise ServerError(grpc.StatusCode.UNAVAILABLE, str(error.reason)) from error
            except (ConnectionError, TimeoutError) as error:
                code = (grpc.StatusCode.DEADLINE_EXCEEDED if isinstance(error, TimeoutError)
                        else grpc.StatusCode.UNAVAILABLE)
                raise ServerError(code, str(error)) from error

        return self._retrying.run(attempt, timeout)


def _fill_spec(spec, model: str, version: int | None, version_label: str | None,
               signature_name: str) -> None:
    if version is not None and version_label:
        raise ValueError("give a version or a version label, not both")
    spec.name = model
    if version is not None:
        spec.version.value = int(version)
    elif version_label:
        spec.version_label = version_label
    if signature_name:
        spec.signature_name = signature_name


def _model_path(model: str, version: int | None, version_label: str | None) -> str:
    if version is not None and version_label:
        raise ValueError("give a version or a version label, not both")
    path = "/v1/models/" + urllib.parse.quote(model, safe="")
    if version is not None:
        path += f"/versions/{int(version)}"
    elif version_label:
        path += "/labels/" + urllib.parse.quote(version_label, safe="")
    return path


def _as_array(value: Any) -> np.ndarray:
    """str -> UTF-8 bytes in an object array (numpy's fixed-width 'S'/'U' arrays would
    drop trailing NUL bytes); numbers through numpy. An empty list has no dtype: send
    `np.array([], object)` for an empty batch of strings."""
    from serving.rest_json import contains_strings, object_array

    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "US" and value.dtype != object:
            return value
        result = np.empty(value.shape, dtype=object)
        result.reshape(-1)[:] = [_map_strings(item) for item in value.reshape(-1).tolist()]
        return result
    if contains_strings(value):
        return object_array(_map_strings(value))
    return np.asarray(value)


def _map_strings(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_map_strings(item) for item in value]
    return value.encode("utf-8") if isinstance(value, str) else value


def _as_list(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
