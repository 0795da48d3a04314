"""`spanbert-tf predict`: send texts to TF Serving (or serve-local), print JSON results.

Example:
    $ spanbert-tf predict --server localhost:8500 --model encoder "SpanBERT masks spans."
    $ spanbert-tf predict --server localhost:8501 --rest --model sst2 "A fine film."
    $ spanbert-tf predict --server localhost:8500 --model mnli \\
          --field text="A man plays." --field text_pair="Someone is playing."
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

DESCRIPTION = """\
Sends raw texts to a model served by TF Serving (or spanbert-tf serve-local) over gRPC
(default) or REST (--rest) and prints one JSON object: the model, version and signature,
and per input row its texts and every output. The signature's input names come from the
server's model metadata: positional TEXTs go to its only string input (or to
--input-name); signatures with several inputs (text pairs, question + context) take
--field NAME=TEXT, repeated once per row for every input. Exit status 1 with the
server's status code and message on failure."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="query TF Serving / serve-local with raw texts",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts, one row each")
    parser.add_argument("--server", required=True, metavar="HOST:PORT",
                        help="server address (gRPC port 8500 or, with --rest, REST port 8501)")
    parser.add_argument("--model", required=True, metavar="NAME", help="model name")
    parser.add_argument("--rest", action="store_true",
                        help="use the REST API (/v1/models/NAME:predict) instead of gRPC")
    parser.add_argument("--signature", default="serving_default",
                        help="signature name (default: serving_default)")
    version = parser.add_mutually_exclusive_group()
    version.add_argument("--version", type=int, default=None,
                         help="model version (default: the latest the server has)")
    version.add_argument("--version-label", default=None, metavar="LABEL",
                         help="version label from the server's models.config (e.g. stable)")
    parser.add_argument("--input-name", default=None, metavar="NAME",
                        help="input that receives the positional TEXTs (default: the "
                             "signature's only input)")
    parser.add_argument("--field", action="append", default=[], metavar="NAME=TEXT",
                        help="a value for a named input; repeat per row and input")
    parser.add_argument("--output-filter", action="append", default=[], metavar="OUTPUT",
                        help="return only this output (repeatable; gRPC only)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="deadline in seconds for the whole call, retries included "
                             "(default: 30)")
    parser.add_argument("--retries", type=int, default=5,
                        help="retries while the server is UNAVAILABLE (default: 5)")
    parser.add_argument("--indent", type=int, default=2,
                        help="JSON indentation (default: 2; 0 prints one line)")
    parser.set_defaults(func=run)


def build_inputs(texts: list[str], fields: list[str], input_names: list[str],
                 input_name: str | None) -> dict[str, list[str]]:
    """Maps positional texts and NAME=TEXT fields to the signature's inputs."""
    columns: dict[str, list[str]] = {}
    for field in fields:
        name, sep, value = field.partition("=")
        if not sep:
            raise ValueError(f"--field {field!r} must look like NAME=TEXT")
        columns.setdefault(name, []).append(value)
    if texts:
        if input_name is None:
            if len(input_names) != 1:
                raise ValueError(f"the signature has inputs {', '.join(input_names)}: pass "
                                 "them as --field NAME=TEXT (or name one with --input-name)")
            input_name = input_names[0]
        columns.setdefault(input_name, []).extend(texts)
    if not columns:
        raise ValueError("no input: give TEXT arguments or --field NAME=TEXT")
    unknown = sorted(set(columns) - set(input_names))
    if unknown:
        raise ValueError(f"unknown input(s) {', '.join(unknown)}; the signature has "
                         f"{', '.join(input_names)}")
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"every input needs the same number of rows, got {lengths}")
    return columns


def to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, list):
        return [to_json(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def format_results(inputs: dict[str, list[str]], outputs: dict[str, np.ndarray]) -> Any:
    """Rows {inputs, outputs} when every output has the batch dimension, else columns."""
    rows = len(next(iter(inputs.values())))
    if all(array.ndim and array.shape[0] == rows for array in outputs.values()):
        return [{"inputs": {name: values[row] for name, values in inputs.items()},
                 "outputs": {name: to_json(array[row]) for name, array in outputs.items()}}
                for row in range(rows)]
    return {"inputs": inputs, "outputs": {name: to_json(a) for name, a in outputs.items()}}


def run(args: argparse.Namespace) -> int:
    from serving.client import GrpcClient, RestClient, ServerError

    try:
        if args.rest:
            if args.output_filter:
                raise ValueError("--output-filter is a gRPC option (TF Serving's REST API "
                                 "has no output filter)")
            client = RestClient(args.server, timeout=args.timeout, retries=args.retries)
            metadata = client.metadata(args.model, args.version, args.version_label)
            signatures = metadata["metadata"]["signature_def"]["signature_def"]
            version = int(metadata["model_spec"]["version"])
            input_names = sorted(_signature(signatures, args.signature).get("inputs", {}))
            inputs = build_inputs(args.texts, args.field, input_names, args.input_name)
            outputs = client.predict(args.model, inputs, args.signature, args.version,
                                     args.version_label)
        else:
            with GrpcClient(args.server, timeout=args.timeout, retries=args.retries) as client:
                from tensorflow_serving.apis import get_model_metadata_pb2

                metadata = client.metadata(args.model, args.version, args.version_label)
                signature_map = get_model_metadata_pb2.SignatureDefMap()
                metadata.metadata["signature_def"].Unpack(signature_map)
                input_names = sorted(_signature(signature_map.signature_def,
                                                args.signature).inputs)
                inputs = build_inputs(args.texts, args.field, input_names, args.input_name)
                response = client.predict_response(
                    args.model, inputs, args.signature, args.version, args.version_label,
                    args.output_filter)
                version = response.model_spec.version.value
                import tensorflow as tf

                outputs = {name: tf.make_ndarray(proto)
                           for name, proto in sorted(response.outputs.items())}
    except ServerError as error:
        print(f"spanbert-tf predict: {error.code.name}: {error.message}", file=sys.stderr)
        return 1
    result = {"model": args.model, "version": version, "signature": args.signature,
              "results": format_results(inputs, outputs)}
    print(json.dumps(result, indent=args.indent or None, ensure_ascii=False))
    return 0


def _signature(signatures, name: str):
    if name not in signatures:
        raise ValueError(f"the model has no signature {name!r}; it has "
                         f"{', '.join(sorted(signatures))}")
    return signatures[name]
