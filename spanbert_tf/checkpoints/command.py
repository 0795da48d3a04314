"""`spanbert-tf convert-checkpoint`: import a checkpoint, write spanbert-tf's native format.

Example:
    $ spanbert-tf convert-checkpoint --input spanbert-base-cased/ --output spanbert-base-tf/
"""

from __future__ import annotations

import argparse

from spanbert_tf.checkpoints.loading import FORMATS, convert_checkpoint, read_config_file

DESCRIPTION = """\
Imports a Hugging Face BERT checkpoint (config.json + model.safetensors or
pytorch_model.bin; e.g. SpanBERT/spanbert-base-cased) or the official fairseq SpanBERT
checkpoint (with MLM and SBO heads) and writes a spanbert-tf checkpoint directory:
config.json, encoder.weights.h5, the heads found in the input (mlm_head.weights.h5,
sbo_head.weights.h5), vocab.txt and checkpoint.json. Prints what was loaded, what was
skipped and why, and which heads are absent (they will be freshly initialised). Any
missing, mis-shaped or unexpected tensor is an error."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-checkpoint", help="convert a Hugging Face or fairseq checkpoint",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="checkpoint directory or weights file (.safetensors, .bin, .pt)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="directory for the spanbert-tf checkpoint")
    parser.add_argument("--format", choices=[f for f in FORMATS if f != "native"],
                        default="auto",
                        help="input format (default: auto, detected from files and content)")
    parser.add_argument("--vocab", metavar="FILE", default=None,
                        help="vocab.txt to store with the checkpoint (default: the input's "
                             "vocab.txt, if it has one)")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="architecture override: a Hugging Face config.json or a "
                             "SpanBertConfig JSON (default: the input's config.json; for "
                             "fairseq, the tensor shapes and the checkpoint's args)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a checkpoint already in --output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = read_config_file(args.config) if args.config else None
    report = convert_checkpoint(args.input, args.output, format=args.format,
                                vocab_file=args.vocab, config=config, overwrite=args.overwrite)
    print(report.summary())
    return 0
