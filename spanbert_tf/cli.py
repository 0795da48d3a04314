"""The `spanbert-tf` command line.

Every job is a subcommand. Subcommands are registered through the
`spanbert_tf.commands` entry-point group (see setup.cfg): each entry names a module
with a `register(subparsers)` function that adds its parser and sets `func`. This
keeps `spanbert_tf` free of imports from `pipelines` and `serving`, which register
their own commands the same way.

Example:
    $ spanbert-tf --help
    $ spanbert-tf convert-checkpoint --help
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Sequence

from spanbert_tf.allocator import keep_freed_memory

COMMAND_GROUP = "spanbert_tf.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spanbert-tf",
        description="SpanBERT in TensorFlow/Keras: data, pretraining, fine-tuning, export, serving.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        module = importlib.import_module(entry.value)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    keep_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"spanbert-tf {args.command}: error: {error}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
