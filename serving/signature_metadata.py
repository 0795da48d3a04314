"""GetModelMetadata and GetModelStatus answers, as protos (gRPC) and dicts (REST).

The JSON forms are what TF Serving's REST API returns: field names as in the protos,
int64 versions as strings, enum names ("AVAILABLE", "OK").

Example:
    >>> status = status_dict([{"version": 1, "state": "AVAILABLE", "error_code": "OK",
    ...                        "error_message": ""}])
    >>> status["model_version_status"][0]
    {'version': '1', 'state': 'AVAILABLE', 'status': {'error_code': 'OK', 'error_message': ''}}
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, status_pb2

from serving.model_registry import Servable

SIGNATURE_DEF_FIELD = "signature_def"


def signature_def_map(servable: Servable) -> get_model_metadata_pb2.SignatureDefMap:
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signatures.signature_def[key].CopyFrom(signature)
    return signatures


def metadata_response(servable: Servable) -> get_model_metadata_pb2.GetModelMetadataResponse:
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map(servable))
    return response


def metadata_dict(servable: Servable) -> dict[str, Any]:
    """The REST `GET /v1/models/NAME/metadata` body."""
    return {
        "model_spec": {"name": servable.name, "signature_name": "",
                       "version": str(servable.version)},
        "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(
            signature_def_map(servable), preserving_proto_field_name=True)},
    }


def error_codes():
    """The tensorflow.error.Code enum of StatusProto.error_code (name <-> number)."""
    return status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type


def status_response(rows: list[dict[str, Any]]) -> get_model_status_pb2.GetModelStatusResponse:
    """`rows` as returned by `ModelRegistry.status`."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for row in rows:
        status = response.model_version_status.add()
        status.version = row["version"]
        status.state = get_model_status_pb2.ModelVersionStatus.State.Value(row["state"])
        status.status.error_code = error_codes().values_by_name[row["error_code"]].number
        status.status.error_message = row["error_message"]
    return response


def status_dict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The REST `GET /v1/models/NAME` body."""
    return {"model_version_status": [
        {"version": str(row["version"]), "state": row["state"],
         "status": {"error_code": row["error_code"], "error_message": row["error_message"]}}
        for row in rows]}


def signature_inputs(metadata: get_model_metadata_pb2.GetModelMetadataResponse,
                     signature_name: str = "serving_default") -> dict[str, Any]:
    """{input name: TensorInfo} of one signature in a GetModelMetadata response."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata[SIGNATURE_DEF_FIELD].Unpack(signatures)
    if signature_name not in signatures.signature_def:
        raise KeyError(f"signature {signature_name!r} not found; the model has "
                       f"{sorted(signatures.signature_def)}")
    return dict(signatures.signature_def[signature_name].inputs)
