"""`spanbert-tf tflite`: a .tflite model with the tokenizer inside, plus a size and
latency report.

Example:
    $ spanbert-tf tflite checkpoints/minilm minilm-int8.tflite --quantize int8
"""

from __future__ import annotations

import argparse
import json
import os
import time

from serving.export_command import add_preprocessing_arguments

REPORT_TEXTS = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Paris is the capital and most populous city of France.",
    "SpanBERT masks contiguous random spans rather than individual tokens.",
    "Rain is expected tomorrow.",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tflite", help="convert a model to TFLite with the tokenizer inside",
        description="Convert a spanbert-tf checkpoint (encoder) or a fine-tuned "
        "classification directory to a .tflite file whose serving_default signature takes "
        "raw strings and returns the export's outputs plus the token features. Uses TFLite "
        "builtins plus TF Text custom ops only; run it with "
        "ai_edge_litert's InterpreterWithCustomOps and "
        "tensorflow_text.tflite_registrar.SELECT_TFTEXT_OPS (serving.tflite.TfliteRunner). "
        "Prints a size and latency report and writes it as JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="checkpoint directory or fine-tuned model directory")
    parser.add_argument("output", metavar="OUT", help=".tflite file to write")
    parser.add_argument("--quantize", choices=("float32", "float16", "int8"), default="float32",
                        help="weights: float32, float16, or int8 dynamic-range quantization")
    add_preprocessing_arguments(parser)
    parser.add_argument("--report", default=None,
                        help="JSON report path (default: OUT with .json appended)")
    parser.add_argument("--latency-runs", type=int, default=50,
                        help="timed single-request runs for the latency report (0: skip)")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="TFLite interpreter threads for the latency report")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serving.tflite import convert_to_tflite, report, write_report

    if args.latency_runs < 0:
        raise ValueError(f"--latency-runs must be >= 0, got {args.latency_runs}")
    started = time.perf_counter()
    metadata = convert_to_tflite(args.model_dir, args.output, args.quantize,
                                 max_seq_length=args.max_seq_length, lowercase=args.lowercase)
    result = {"model_dir": os.path.abspath(args.model_dir), "task": metadata["task"],
              "quantize": args.quantize, "max_seq_length": metadata["max_seq_length"],
              "conversion_seconds": round(time.perf_counter() - started, 1),
              "signatures": metadata["signatures"]}
    if args.latency_runs:
        result.update(report(args.output, REPORT_TEXTS, repeats=args.latency_runs,
                             num_threads=args.num_threads, pair=metadata["pair"]))
    else:
        result.update(path=args.output, bytes=os.path.getsize(args.output))
    report_path = args.report or args.output + ".json"
    write_report(result, report_path)
    print(f"wrote {args.output} ({result['bytes'] / 2**20:.1f} MiB, {args.quantize}, "
          f"{metadata['task']}) in {result['conversion_seconds']} s")
    if args.latency_runs:
        single = result["single_request"]
        batch_key = f"batch_{len(REPORT_TEXTS)}"
        print(f"latency: single request p50 {single['p50_ms']:.2f} ms, p95 "
              f"{single['p95_ms']:.2f} ms; batch of {len(REPORT_TEXTS)} p50 "
              f"{result[batch_key]['p50_ms']:.2f} ms")
    print(f"report: {report_path}")
    print(json.dumps({k: result[k] for k in ("bytes", "quantize", "task")}))
    return 0
