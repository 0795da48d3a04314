"""JSON <-> numpy for TF Serving's REST predict API (server and client side).

The format (https://www.tensorflow.org/tfx/serving/api_rest): a request carries either
`instances` (row format: a list with one entry per example; an entry is a dict of named
inputs, or a bare value when the signature has one input) or `inputs` (columnar format:
a dict of named batched values, or one bare value). Strings are JSON strings; binary
strings are `{"b64": "..."}`. The response has `predictions` (row format: a list of
dicts, or of bare values when there is one output) or `outputs` (columnar). String
outputs whose name ends in `_bytes` are sent as `{"b64": ...}`, other strings as JSON
strings (invalid UTF-8 is replaced with U+FFFD).

Example:
    >>> import tensorflow as tf
    >>> decode_input("text", ["héllo", {"b64": "aGk="}], tf.TensorSpec([None], tf.string))
    array([b'h\\xc3\\xa9llo', b'hi'], dtype=object)
    >>> encode_output("scores", np.array([[0.5, 1.0]], np.float32))
    [[0.5, 1.0]]
"""

from __future__ import annotations

import base64
from typing import Any, Sequence

import grpc
import numpy as np
import tensorflow as tf

from serving.model_registry import ServingError

BYTES_SUFFIX = "_bytes"


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


# ---------------------------------------------------------------- server side

def decode_input(name: str, value: Any, spec: tf.TensorSpec) -> np.ndarray:
    """A JSON value -> numpy array of the signature's dtype; INVALID_ARGUMENT naming the
    input when the value does not fit the dtype or is not rectangular."""
    if spec.dtype == tf.string:
        return _rectangular(name, _json_strings(name, value), dtype=object)
    if contains_strings(value):
        raise _invalid(f"input '{name}' expects {spec.dtype.name} values but got strings")
    array = _rectangular(name, value)
    if array.size and array.dtype.kind not in "biuf":
        raise _invalid(f"input '{name}' expects {spec.dtype.name} values")
    if array.size and (spec.dtype.is_integer or spec.dtype.is_bool) and array.dtype.kind == "f":
        raise _invalid(f"input '{name}' expects {spec.dtype.name} values but got "
                       "floating-point numbers")
    return array.astype(spec.dtype.as_numpy_dtype)


def rows_to_columns(instances: Sequence[Any], input_names: Sequence[str]) -> dict[str, Any]:
    """Row format -> {input name: list over the batch}."""
    if not isinstance(instances, list):
        raise _invalid("'instances' must be a list")
    named = [isinstance(row, dict) and "b64" not in row for row in instances]
    if any(named) and not all(named):
        raise _invalid("'instances' mixes named (object) and bare values")
    if not all(named) or not instances:
        if len(input_names) != 1:
            if not instances:
                raise _invalid("'instances' is empty: the signature has several inputs "
                               f"({', '.join(input_names)}); use the columnar 'inputs' format")
            raise _invalid(f"the signature has inputs {', '.join(input_names)}: each instance "
                           "must be an object naming them")
        return {input_names[0]: list(instances)}
    keys = set(instances[0])
    for index, row in enumerate(instances):
        if set(row) != keys:
            raise _invalid(f"instance {index} has inputs {sorted(row)} but instance 0 has "
                           f"{sorted(keys)}: every instance must name the same inputs")
    return {key: [row[key] for row in instances] for key in instances[0]}


def columns_input(inputs: Any, input_names: Sequence[str]) -> dict[str, Any]:
    """Columnar format -> {input name: batched value}."""
    if isinstance(inputs, dict) and "b64" not in inputs:
        return dict(inputs)
    if len(input_names) != 1:
        raise _invalid(f"the signature has inputs {', '.join(input_names)}: 'inputs' must be "
                       "an object naming them")
    return {input_names[0]: inputs}


def encode_output(name: str, array: np.ndarray) -> Any:
    """A numpy output -> JSON-ready nested lists."""
    if array.dtype == object or array.dtype.kind in "SU":
        as_b64 = name.endswith(BYTES_SUFFIX)
        return _map_nested(array.tolist(), lambda item: _string_to_json(item, as_b64))
    return array.tolist()


def outputs_to_rows(outputs: dict[str, np.ndarray]) -> list[Any]:
    """Columnar outputs -> row-format `predictions` (every output needs the batch dim)."""
    sizes = {name: (array.shape[0] if array.ndim else None) for name, array in outputs.items()}
    batch = next(iter(sizes.values()), 0)
    for name, size in sizes.items():
        if size is None or size != batch:
            raise _invalid(f"Tensor name: {name} has inconsistent batch size: {size} "
                           f"expecting: {batch}; use the columnar 'inputs' format")
    encoded = {name: encode_output(name, array) for name, array in outputs.items()}
    if len(encoded) == 1:
        return next(iter(encoded.values()))
    return [{name: values[row] for name, values in encoded.items()} for row in range(batch)]


def outputs_to_columns(outputs: dict[str, np.ndarray]) -> Any:
    encoded = {name: encode_output(name, array) for name, array in outputs.items()}
    if len(encoded) == 1:
        return next(iter(encoded.values()))
    return encoded


# ---------------------------------------------------------------- client side

def encode_input(value: Any) -> Any:
    """A numpy array / list of str, bytes or numbers -> JSON-ready value (bytes that are
    not valid UTF-8 go as {"b64": ...})."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return _map_nested(value, _client_string)


def decode_output(value: Any) -> np.ndarray:
    """A JSON output value -> numpy (strings as an object array of str)."""
    value = _map_nested(value, lambda item: base64.b64decode(item["b64"])
                        if isinstance(item, dict) and "b64" in item else item)
    if contains_strings(value):
        return np.array(value, dtype=object)
    return np.asarray(value)


# ---------------------------------------------------------------- helpers

def _json_strings(name: str, value: Any) -> Any:
    def convert(item):
        if isinstance(item, str):
            return item.encode("utf-8")
        if isinstance(item, dict):
            if set(item) != {"b64"} or not isinstance(item["b64"], str):
                raise _invalid(f"input '{name}': an object value must be {{\"b64\": \"...\"}}")
            try:
                return base64.b64decode(item["b64"], validate=True)
            except ValueError:
                raise _invalid(f"input '{name}': invalid base64 in {{\"b64\": ...}}") from None
        raise _invalid(f"input '{name}' expects strings but got {type(item).__name__} {item!r}")

    return _map_nested(value, convert)


def _rectangular(name: str, value: Any, dtype=None) -> np.ndarray:
    try:
        if dtype is object:
            return object_array(value)
        return np.asarray(value, dtype=dtype)
    except ValueError as error:
        raise _invalid(f"input '{name}' is not a rectangular array: {error}") from None


def _nested_shape(value: Any) -> tuple[int, ...]:
    """Shape of nested lists; ValueError when rows differ in length or depth."""
    if not isinstance(value, list):
        return ()
    if not value:
        return (0,)
    shapes = {_nested_shape(item) for item in value}
    if len(shapes) != 1:
        raise ValueError("rows have different lengths")
    return (len(value), *shapes.pop())


def object_array(value: Any) -> np.ndarray:
    """Nested lists of bytes -> object array (np.asarray would make a fixed-width 'S'
    array and strip trailing NUL bytes)."""
    array = np.empty(_nested_shape(value), dtype=object)
    for index in np.ndindex(array.shape):
        item = value
        for axis in index:
            item = item[axis]
        array[index] = item
    return array


def contains_strings(value: Any) -> bool:
    if isinstance(value, (str, bytes, dict)):
        return True
    if isinstance(value, list):
        return any(contains_strings(item) for item in value)
    return False


def _map_nested(value: Any, fn) -> Any:
    if isinstance(value, list):
        return [_map_nested(item, fn) for item in value]
    return fn(value)


def _string_to_json(item: Any, as_b64: bool) -> Any:
    if isinstance(item, str):
        item = item.encode("utf-8")
    if not isinstance(item, bytes):
        return item
    if as_b64:
        return {"b64": base64.b64encode(item).decode("ascii")}
    return item.decode("utf-8", errors="replace")


def _client_string(item: Any) -> Any:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(item).decode("ascii")}
    if isinstance(item, np.generic):
        return item.item()
    return item
