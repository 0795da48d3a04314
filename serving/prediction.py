"""One Predict call against a loaded SavedModel signature, with TF Serving's checks.

Shared by the gRPC and REST front ends of the local endpoint: each decodes its wire
format into numpy arrays through a `decode(name, value, spec)` callback (which checks
dtypes the way its format allows), and `run_predict` does the rest: input names (the
same messages as TF Serving), shapes against the signature's TensorSpecs, the call,
`output_filter`, and the mapping of TensorFlow errors to gRPC status codes.

Example:
    >>> result = run_predict(registry, PredictSpec("encoder"), {"text": [b"hi"]},
    ...                      decode=lambda name, value, spec: np.asarray(value, object))
    ... # doctest: +SKIP
    >>> result.outputs["embedding"].shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import grpc
import numpy as np
import tensorflow as tf

from serving.model_registry import ModelRegistry, Servable, ServingError

_STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


@dataclasses.dataclass(frozen=True)
class PredictSpec:
    """The ModelSpec part of a request."""

    name: str
    version: int | None = None
    version_label: str | None = None
    signature_name: str = ""


@dataclasses.dataclass
class PredictResult:
    servable: Servable
    signature_name: str
    outputs: dict[str, np.ndarray]


def input_specs(function) -> dict[str, tf.TensorSpec]:
    """The signature's inputs by name (TF2 signatures take keyword arguments only)."""
    return dict(function.structured_input_signature[1])


def resolve(registry: ModelRegistry, spec: PredictSpec) -> tuple[Servable, str, Any]:
    """(servable, signature key, signature function) for a request's ModelSpec."""
    servable = registry.resolve(spec.name, spec.version, spec.version_label)
    signature_name, function = servable.signature(spec.signature_name)
    return servable, signature_name, function


def run_predict(registry: ModelRegistry, spec: PredictSpec, inputs: dict[str, Any],
                decode: Callable[[str, Any, tf.TensorSpec], np.ndarray],
                output_filter: Sequence[str] = (),
                resolved: tuple[Servable, str, Any] | None = None) -> PredictResult:
    """Resolves the model (unless `resolved` gives the result of `resolve`), checks and
    decodes `inputs`, calls the signature."""
    servable, signature_name, function = resolved or resolve(registry, spec)
    specs = input_specs(function)
    _check_names(spec.name, specs, inputs)
    output_names = _check_output_filter(function, output_filter)
    tensors = {}
    for name, value in inputs.items():
        array = decode(name, value, specs[name])
        if not specs[name].shape.is_compatible_with(array.shape):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{name}' has shape {list(array.shape)} but the "
                               f"signature expects {_shape_str(specs[name].shape)}")
        tensors[name] = tf.constant(array, dtype=specs[name].dtype)
    outputs = call_signature(function, tensors)
    return PredictResult(servable, signature_name,
                         {name: outputs[name].numpy() for name in output_names})


def call_signature(function, tensors: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Calls a signature, turning every failure into a ServingError."""
    try:
        return function(**tensors)
    except tf.errors.OpError as error:
        code = _STATUS_BY_VALUE.get(error.error_code, grpc.StatusCode.UNKNOWN)
        raise ServingError(code, error.message) from None
    except (TypeError, ValueError) as error:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
    except Exception as error:  # noqa: BLE001 - a request must never take the server down
        raise ServingError(grpc.StatusCode.INTERNAL,
                           f"{type(error).__name__}: {error}") from None


def _check_names(model_name: str, specs: dict[str, tf.TensorSpec], inputs: dict[str, Any]):
    """TF Serving's checks and wording (predict_util.cc): the count first, then names."""
    if len(inputs) != len(specs):
        sent, wanted = sorted(inputs), sorted(specs)
        extra = [name for name in sent if name not in specs]
        missing = [name for name in wanted if name not in inputs]
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(wanted)} "
            f"len({{{','.join(sent)}}}) != len({{{','.join(wanted)}}}). Sent extra: "
            f"{{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")
    for name in inputs:
        if name not in specs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input tensor alias not found in signature: {name}. Inputs expected to be "
                f"in the set {{{','.join(sorted(specs))}}}.")


def _check_output_filter(function, output_filter: Sequence[str]) -> list[str]:
    available = sorted(function.structured_outputs)
    if not output_filter:
        return available
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in available:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(available)}}}.")
        if alias in seen:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return list(output_filter)


def _shape_str(shape: tf.TensorShape) -> str:
    if shape.rank is None:
        return "any shape"
    return "[" + ",".join("?" if dim is None else str(dim) for dim in shape.as_list()) + "]"
