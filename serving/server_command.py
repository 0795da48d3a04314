"""`spanbert-tf serve-local`: a development endpoint with TF Serving's gRPC and REST APIs.

Example:
    $ spanbert-tf serve-local --model-base-path exports/encoder --model-name encoder
    $ spanbert-tf serve-local --model-config-file serving/deploy/models.config
"""

from __future__ import annotations

import argparse
import logging
import os
import signal

DESCRIPTION = """\
Serves SavedModels in TF Serving's layout (BASE/NAME/VERSION/saved_model.pb) through
TF Serving's gRPC PredictionService (Predict, GetModelMetadata; ModelService
GetModelStatus) and its REST API (/v1/models/NAME[/versions/N|/labels/L][:predict|
/metadata]), so that exports and clients can be developed and tested without the
TF Serving binary. Status codes follow TF Serving (NOT_FOUND for an unknown model or
version, INVALID_ARGUMENT for a wrong input name, dtype or shape).

This is a development and test endpoint, not TF Serving: it has no request batching,
monitoring or SSL. In production run the tensorflow/serving image with the assets in
serving/deploy/ (see the README)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve-local", help="development endpoint with TF Serving's gRPC and REST APIs",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--model-base-path", metavar="DIR",
                        help="the model's directory holding VERSION/ subdirectories (as TF "
                             "Serving's --model_base_path); if DIR has no version "
                             "subdirectories but DIR/NAME does, DIR/NAME is used")
    models.add_argument("--model-config-file", metavar="FILE",
                        help="TF Serving models.config (text-format ModelServerConfig with "
                             "a model_config_list) for several models, version policies "
                             "and version labels; relative base_path values are resolved "
                             "against the file's folder")
    parser.add_argument("--model-name", default="default", metavar="NAME",
                        help="model name clients request, with --model-base-path "
                             "(default: default, as TF Serving)")
    parser.add_argument("--port", type=int, default=8500,
                        help="gRPC port (default: 8500)")
    parser.add_argument("--rest-port", type=int, default=8501,
                        help="REST port (default: 8501; 0 disables REST, as TF Serving's "
                             "--rest_api_port)")
    parser.add_argument("--host", default="0.0.0.0",
                        help="interface to bind (default: 0.0.0.0, all interfaces)")
    parser.add_argument("--workers", type=int, default=8,
                        help="threads answering gRPC requests concurrently (default: 8)")
    parser.add_argument("--file-system-poll-wait-seconds", type=float, default=1.0,
                        metavar="SECONDS",
                        help="how often to look for new model versions (default: 1; 0 "
                             "loads once at start)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.set_defaults(func=run)


def model_sources(args: argparse.Namespace):
    from serving.model_registry import ModelSource, parse_model_config, versions_on_disk

    if args.model_config_file:
        return parse_model_config(args.model_config_file)
    base_path = os.path.abspath(args.model_base_path)
    if not os.path.isdir(base_path):
        raise FileNotFoundError(f"--model-base-path {args.model_base_path} is not a directory")
    nested = os.path.join(base_path, args.model_name)
    if not versions_on_disk(base_path) and versions_on_disk(nested):
        base_path = nested
    return [ModelSource(name=args.model_name, base_path=base_path)]


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from serving.model_registry import ModelRegistry
    from serving.server import LocalModelServer

    registry = ModelRegistry(model_sources(args))
    server = LocalModelServer(registry, grpc_port=args.port,
                              rest_port=args.rest_port or None, host=args.host,
                              workers=args.workers,
                              poll_seconds=args.file_system_poll_wait_seconds)
    server.start()
    for name in registry.model_names:
        try:
            versions = [row["version"] for row in registry.status(name)
                        if row["state"] == "AVAILABLE"]
        except Exception:  # noqa: BLE001 - status raises NOT_FOUND when nothing loaded
            versions = []
        if not versions:
            logging.warning("model %s has no loadable version yet; requests get NOT_FOUND "
                            "until one appears", name)
    rest = f", REST on port {server.rest_port}" if server.rest_port else ""
    print(f"serve-local (development endpoint, not TF Serving): gRPC on port "
          f"{server.grpc_port}{rest}; models: {', '.join(registry.model_names)}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
