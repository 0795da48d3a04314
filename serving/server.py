"""`serve-local`: TF Serving's gRPC and REST APIs over our exports, for development and tests.

This is NOT TF Serving and not meant for production: production runs the
`tensorflow/serving` image with the assets in `serving/deploy/`. This endpoint exists so
that exports and clients can be tested over a real gRPC connection on a machine without
the TF Serving binary. It implements, over SavedModels in TF Serving's layout
`BASE/NAME/VERSION/`:

- gRPC `tensorflow.serving.PredictionService`: `Predict` (model name, version or version
  label, signature name, output_filter) and `GetModelMetadata` (signature_def);
  `tensorflow.serving.ModelService.GetModelStatus`. Classify, Regress and
  MultiInference answer UNIMPLEMENTED (TF2 SavedModels expose Predict only).
- REST on a second port: `/v1/models/NAME[/versions/N|/labels/L]` status, `/metadata`
  and `:predict` (see `serving.rest_server`).
- Status codes and messages as TF Serving returns them: NOT_FOUND for an unknown model
  or version, INVALID_ARGUMENT for a wrong input name, dtype or shape (the message names
  the input), FAILED_PRECONDITION for an unknown signature.
- A thread pool for concurrent requests (loaded signatures are thread-safe) and a
  file-system poll that loads new versions and unloads old ones per version policy.

It has no request batching, no model warm-up files, no monitoring endpoint, no SSL.

Example:
    >>> from serving.model_registry import ModelRegistry, ModelSource
    >>> registry = ModelRegistry([ModelSource("encoder", "exports/encoder")])  # doctest: +SKIP
    >>> with LocalModelServer(registry, grpc_port=0, rest_port=0) as server:  # doctest: +SKIP
    ...     print(server.grpc_port, server.rest_port)
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.model_registry import ModelRegistry, ServingError
from serving.prediction import PredictSpec, run_predict
from serving.rest_server import make_rest_server
from serving.signature_metadata import SIGNATURE_DEF_FIELD, metadata_response, status_response

logger = logging.getLogger(__name__)

# TF Serving sets no practical limit on message sizes (INT_MAX); grpc's default is 4 MB.
GRPC_OPTIONS = [("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1)]


def spec_from_proto(model_spec) -> PredictSpec:
    choice = model_spec.WhichOneof("version_choice")
    return PredictSpec(
        name=model_spec.name,
        version=model_spec.version.value if choice == "version" else None,
        version_label=model_spec.version_label if choice == "version_label" else None,
        signature_name=model_spec.signature_name)


def decode_tensor_proto(name: str, proto, spec: tf.TensorSpec) -> np.ndarray:
    """TensorProto -> numpy; INVALID_ARGUMENT naming the input on a dtype mismatch."""
    if proto.dtype != spec.dtype.as_datatype_enum:
        try:
            sent = tf.dtypes.as_dtype(proto.dtype).name
        except TypeError:
            sent = f"enum {proto.dtype}"
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input '{name}' has dtype {sent} but the signature expects "
                           f"{spec.dtype.name}")
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # noqa: BLE001 - malformed protos raise various errors
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"tensor parsing error: {name}: {error}") from None


def _abort(context, error: ServingError):
    context.abort(error.code, error.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata over a ModelRegistry."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def Predict(self, request, context):  # noqa: N802 - gRPC method names
        spec = spec_from_proto(request.model_spec)
        try:
            result = run_predict(self.registry, spec, dict(request.inputs),
                                 decode_tensor_proto, list(request.output_filter))
            response = predict_pb2.PredictResponse()
            for name, array in result.outputs.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(array))
        except ServingError as error:
            _abort(context, error)
        response.model_spec.name = result.servable.name
        response.model_spec.version.value = result.servable.version
        response.model_spec.signature_name = result.signature_name
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        fields = list(request.metadata_field)
        try:
            if not fields:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "GetModelMetadataRequest must specify at least one "
                                   "metadata_field")
            for field in fields:
                if field != SIGNATURE_DEF_FIELD:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"Metadata field {field} is not supported")
            spec = spec_from_proto(request.model_spec)
            servable = self.registry.resolve(spec.name, spec.version, spec.version_label)
        except ServingError as error:
            _abort(context, error)
        return metadata_response(servable)


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus (HandleReloadConfigRequest stays UNIMPLEMENTED)."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def GetModelStatus(self, request, context):  # noqa: N802
        spec = spec_from_proto(request.model_spec)
        try:
            version = spec.version
            if spec.version_label:
                version = self.registry.resolve(spec.name, None, spec.version_label).version
            rows = self.registry.status(spec.name, version)
        except ServingError as error:
            _abort(context, error)
        return status_response(rows)


class LocalModelServer:
    """gRPC (+ optional REST) endpoint over a ModelRegistry; a context manager.

    Args:
        registry: the models to serve; loaded by `start()`.
        grpc_port: gRPC port (0 picks a free one; see `grpc_port` after start).
        rest_port: REST port (0 picks a free one, None disables REST).
        host: interface to bind ("0.0.0.0" for all, "127.0.0.1" for local only).
        workers: threads answering gRPC requests concurrently.
        poll_seconds: re-scan the model directories this often for new versions
            (0 disables).
    """

    def __init__(self, registry: ModelRegistry, grpc_port: int = 8500,
                 rest_port: int | None = 8501, host: str = "0.0.0.0", workers: int = 8,
                 poll_seconds: float = 1.0):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.registry = registry
        self.host = host
        self.workers = workers
        self.poll_seconds = poll_seconds
        self._requested_ports = (grpc_port, rest_port)
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._grpc_server: Any = None
        self._rest_server: Any = None
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()

    def start(self) -> "LocalModelServer":
        self.registry.refresh()
        grpc_port, rest_port = self._requested_ports
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers,
                                                        thread_name_prefix="predict"),
                             options=GRPC_OPTIONS)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.registry), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelStatusServicer(self.registry), server)
        try:
            bound = server.add_insecure_port(f"{self.host}:{grpc_port}")
        except RuntimeError as error:
            raise OSError(f"cannot bind the gRPC port {self.host}:{grpc_port}: {error}") from None
        if not bound:
            raise OSError(f"cannot bind the gRPC port {self.host}:{grpc_port}")
        self.grpc_port = bound
        if rest_port is not None:
            self._rest_server = make_rest_server(self.registry, self.host, rest_port)
            self.rest_port = self._rest_server.server_address[1]
            self._spawn(self._rest_server.serve_forever, "rest")
        server.start()
        self._grpc_server = server
        if self.poll_seconds > 0:
            self._spawn(self._poll, "model-poll")
        logger.info("serve-local: gRPC on %s:%d, REST on %s", self.host, self.grpc_port,
                    f"{self.host}:{self.rest_port}" if self.rest_port else "(off)")
        return self

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll(self) -> None:
        while not self._stopped.wait(self.poll_seconds):
            try:
                self.registry.refresh()
            except Exception:  # noqa: BLE001 - a failed scan must not stop the poll
                logger.exception("model directory scan failed")

    def wait(self) -> None:
        """Blocks until `stop()` (or Ctrl-C in the caller)."""
        self._stopped.wait()

    def stop(self, grace: float | None = 1.0) -> None:
        self._stopped.set()
        if self._grpc_server is not None:
            self._grpc_server.stop(grace).wait()
            self._grpc_server = None
        if self._rest_server is not None:
            self._rest_server.shutdown()
            self._rest_server.server_close()
            self._rest_server = None
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> "LocalModelServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
