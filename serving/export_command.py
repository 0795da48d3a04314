"""`spanbert-tf export`: a SavedModel with the tokenizer inside, in TF Serving's layout.

Example:
    $ spanbert-tf export checkpoints/minilm exports --name minilm
    $ spanbert-tf export runs/sst2 exports --name sst2 --version 3
"""

from __future__ import annotations

import argparse
import json
import os
import time


def add_preprocessing_arguments(parser: argparse.ArgumentParser) -> None:
    """--max-seq-length and --lowercase/--cased of the in-graph tokenizer (export, tflite)."""
    parser.add_argument("--max-seq-length", type=int, default=None,
                        help="longest packed input in tokens, [CLS]/[SEP] included; longer "
                        "inputs are truncated (default: task.json's max_seq_length, or the "
                        "encoder's max_position_embeddings)")
    case = parser.add_mutually_exclusive_group()
    case.add_argument("--lowercase", dest="lowercase", action="store_true", default=None,
                      help="uncased tokenizer (default: task.json, or inferred from the vocab)")
    case.add_argument("--cased", dest="lowercase", action="store_false",
                      help="cased tokenizer (default: task.json, or inferred from the vocab)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a SavedModel that takes raw text (TF Serving layout)",
        description="Export a spanbert-tf checkpoint (encoder: sentence embeddings) or a "
        "fine-tuned model directory (task.json + model.keras + vocab.txt) as a SavedModel in "
        "EXPORT_BASE/NAME/VERSION/. Tokenization runs inside the graph: every signature "
        "takes raw UTF-8 strings, except encode_ids/predict_ids, which take token ids.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="checkpoint directory (config.json + encoder.weights.h5 + "
                        "vocab.txt) or fine-tuned model directory")
    parser.add_argument("export_base", metavar="EXPORT_BASE",
                        help="TF Serving base directory; NAME/VERSION/ is written inside")
    parser.add_argument("--name", required=True, help="model name (directory and TF Serving name)")
    parser.add_argument("--version", type=int, default=None,
                        help="version number (default: one more than the highest existing)")
    parser.add_argument("--sequence-output", action="store_true",
                        help="encoder: also return sequence_output [B, L, H] and input_mask")
    add_preprocessing_arguments(parser)
    parser.add_argument("--pad-to-max-length", action="store_true",
                        help="pad every request to --max-seq-length (default: pad to the "
                        "longest input of the batch, faster for short requests)")
    parser.add_argument("--jit-compile", action="store_true",
                        help="compile the forward pass with XLA (TF Serving then needs "
                        "--xla_cpu_compilation_enabled=true)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace EXPORT_BASE/NAME/VERSION if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serving.export import METADATA_DIR, METADATA_FILE, export_model

    started = time.perf_counter()
    path = export_model(
        args.model_dir, args.export_base, name=args.name, version=args.version,
        sequence_output=args.sequence_output, max_seq_length=args.max_seq_length,
        lowercase=args.lowercase, pad_to_max_length=args.pad_to_max_length,
        jit_compile=args.jit_compile, overwrite=args.overwrite)
    with open(os.path.join(path, METADATA_DIR, METADATA_FILE), encoding="utf-8") as handle:
        metadata = json.load(handle)
    print(f"exported {metadata['task']} model to {path} in {time.perf_counter() - started:.1f} s")
    for signature, spec in sorted(metadata["signatures"].items()):
        inputs = ", ".join(f"{n}: {d}{s}" for n, (d, s) in sorted(spec["inputs"].items()))
        outputs = ", ".join(f"{n}: {d}{s}" for n, (d, s) in sorted(spec["outputs"].items()))
        print(f"  {signature}({inputs}) -> {outputs}")
    return 0
