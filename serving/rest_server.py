"""TF Serving's REST API over a `ModelRegistry` (the local endpoint's HTTP side).

Routes, as TF Serving's REST API documents them (NAME may be followed by
`/versions/N` or `/labels/LABEL`):

    GET  /v1/models/NAME             model status ({"model_version_status": [...]})
    GET  /v1/models/NAME/metadata    signature definitions
    POST /v1/models/NAME:predict     {"signature_name"?, "instances" | "inputs"}

Errors come back as {"error": message} with the HTTP status TF Serving maps the gRPC
code to (NOT_FOUND 404, INVALID_ARGUMENT and FAILED_PRECONDITION 400, ...). `:classify`
and `:regress` answer 501: TF2 SavedModels expose the Predict API only.

Example:
    >>> server = make_rest_server(registry, "127.0.0.1", 0)  # doctest: +SKIP
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from serving import rest_json
from serving.model_registry import ModelRegistry, ServingError
from serving.prediction import PredictSpec, input_specs, resolve, run_predict
from serving.signature_metadata import metadata_dict, status_dict

logger = logging.getLogger(__name__)

ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict|:classify|:regress)?/?$")

HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}


def make_rest_server(registry: ModelRegistry, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server (one thread per connection) answering the routes above; call
    `serve_forever()` on it, `shutdown()` to stop. Port 0 picks a free port
    (`server.server_address[1]`)."""

    class Handler(_RestHandler):
        pass

    Handler.registry = registry
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


class _RestHandler(BaseHTTPRequestHandler):
    registry: ModelRegistry
    protocol_version = "HTTP/1.1"
    server_version = "spanbert-tf-serve-local"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("%s - %s", self.address_string(), format % args)

    def _dispatch(self, method: str) -> None:
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send(200, self._route(method, body))
        except ServingError as error:
            self._send(HTTP_STATUS.get(error.code, 500), {"error": error.message})
        except Exception as error:  # noqa: BLE001 - keep serving whatever a request does
            logger.exception("REST request failed")
            self._send(500, {"error": f"{type(error).__name__}: {error}"})

    def _route(self, method: str, body: bytes) -> Any:
        path = urllib.parse.urlsplit(self.path).path
        match = ROUTE.match(path)
        if not match:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {path}")
        name = urllib.parse.unquote(match["name"])
        version = int(match["version"]) if match["version"] else None
        label = urllib.parse.unquote(match["label"]) if match["label"] else None
        suffix = match["suffix"] or ""
        if method == "GET" and suffix in ("", "/metadata"):
            if suffix == "/metadata":
                return metadata_dict(self.registry.resolve(name, version, label))
            if label:
                version = self.registry.resolve(name, None, label).version
            return status_dict(self.registry.status(name, version))
        if method == "POST" and suffix == ":predict":
            return self._predict(PredictSpec(name, version, label), body)
        if method == "POST" and suffix in (":classify", ":regress"):
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"{suffix[1:]} is not supported: TF2 SavedModels expose the "
                               "Predict API only")
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {path}")

    def _predict(self, spec: PredictSpec, body: bytes) -> dict[str, Any]:
        try:
            request = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"JSON Parse error: {error}") from None
        if not isinstance(request, dict):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "the request body must be a JSON object")
        if ("instances" in request) == ("inputs" in request):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "the request needs exactly one of 'instances' (row format) "
                               "or 'inputs' (columnar format)")
        signature_name = request.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "'signature_name' must be a string")
        spec = PredictSpec(spec.name, spec.version, spec.version_label, signature_name)
        resolved = resolve(self.registry, spec)
        names = sorted(input_specs(resolved[2]))
        row_format = "instances" in request
        inputs = (rest_json.rows_to_columns(request["instances"], names) if row_format
                  else rest_json.columns_input(request["inputs"], names))
        result = run_predict(self.registry, spec, inputs, rest_json.decode_input,
                             resolved=resolved)
        if row_format:
            return {"predictions": rest_json.outputs_to_rows(result.outputs)}
        return {"outputs": rest_json.outputs_to_columns(result.outputs)}

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
