"""`spanbert-tf demo`: the whole pretraining path on the corpus bundled in the repo.

1. builds a cased WordPiece vocabulary from the bundled corpus (WikiText-2 articles and
   four Project Gutenberg books, data/SOURCES.md);
2. tokenizes, packs and shards it into TFRecords, holding out 5% of the documents;
3. pretrains a small SpanBERT (MLM + SBO) under MirroredStrategy with 2 CPU replicas;
4. prints the loss and accuracy curves as a table and saves them as a PNG;
5. evaluates MLM and SBO accuracy on the held-out documents beside a unigram baseline
   (always predicting the most frequent training token), which shows learning happened;
6. exports the encoder as a SavedModel with the tokenizer inside (TF Serving layout,
   raw strings in, sentence embeddings out) and calls it once on two sentences;
7. prints where everything was written.

Runs in about ten minutes on 2 CPU cores with the defaults; `--train-steps` trades time
for accuracy. Everything goes under `--output-dir` (default `runs/demo`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import warnings
from typing import Any, Callable

import numpy as np

DEMO_CONFIG = dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512,
                   max_position_embeddings=128, sbo_position_size=64)
HELDOUT_FRACTION = 0.05


def build_demo_vocab(output_dir: str, vocab_size: int, say: Callable[[str], None]) -> str:
    from pipelines.corpus import bundled_corpus_files
    from pipelines.vocab import build_vocab

    path = os.path.join(output_dir, "vocab.txt")
    if os.path.exists(path):
        say(f"[1/5] vocabulary: reusing {path}")
        return path
    start = time.perf_counter()
    tokens = build_vocab(bundled_corpus_files(), path, vocab_size=vocab_size, lowercase=False,
                         progress=False)
    say(f"[1/5] vocabulary: {len(tokens):,} cased WordPiece tokens in "
        f"{time.perf_counter() - start:.1f}s -> {path}")
    return path


def prepare_demo_data(output_dir: str, vocab: str, max_seq_length: int, seed: int,
                      say: Callable[[str], None]) -> str:
    from pipelines.corpus import bundled_corpus_files
    from pipelines.prepare_pretraining import prepare_pretraining

    data_dir = os.path.join(output_dir, "data")
    start = time.perf_counter()
    summary = prepare_pretraining(bundled_corpus_files(), data_dir, vocab,
                                  max_seq_length=max_seq_length, num_shards=4,
                                  heldout_fraction=HELDOUT_FRACTION, seed=seed,
                                  overwrite=True, progress=False)
    info = summary.to_dict()
    say(f"[2/5] data: {info.get('documents', '?')} documents, {info.get('segments', '?')} "
        f"segments of <= {max_seq_length} tokens, {info.get('tokens', 0):,} tokens in "
        f"{time.perf_counter() - start:.1f}s -> {data_dir}")
    return data_dir


def print_curves(history: list[dict[str, Any]], say: Callable[[str], None]) -> None:
    columns = ("step", "loss", "mlm_loss", "sbo_loss", "mlm_accuracy", "sbo_accuracy")
    say("  " + "  ".join(f"{name:>12s}" for name in columns))
    for row in history:
        cells = [f"{row.get(name, float('nan')):12.4f}" if name != "step"
                 else f"{int(row['step']):12d}" for name in columns]
        say("  " + "  ".join(cells))


def plot_curves(history: list[dict[str, Any]], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [row["step"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("loss", "mlm_loss", "sbo_loss"):
        loss_axis.plot(steps, [row[name] for row in history], label=name)
    for name in ("mlm_accuracy", "sbo_accuracy"):
        accuracy_axis.plot(steps, [row[name] for row in history], label=name)
    loss_axis.set(xlabel="step", ylabel="cross-entropy", title="training loss")
    accuracy_axis.set(xlabel="step", ylabel="accuracy", title="training accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def most_frequent_token(files: list[str], excluded: set[int]) -> int:
    """The most frequent token of the training shards, special tokens excluded."""
    from pipelines.pretraining_records import read_pretraining_shards

    tokens = read_pretraining_shards(files).map(lambda example: example["input_ids"])
    counts = np.zeros(0, np.int64)
    for chunk in tokens.unbatch().batch(1 << 16).as_numpy_iterator():
        chunk_counts = np.bincount(chunk)
        if len(chunk_counts) > len(counts):
            counts = np.pad(counts, (0, len(chunk_counts) - len(counts)))
        counts[:len(chunk_counts)] += chunk_counts
    counts[[token for token in excluded if token < len(counts)]] = 0
    return int(np.argmax(counts))


def evaluate_heldout(model, heldout_files: list[str], plan, train_files: list[str],
                     seed: int) -> dict[str, float]:
    """Held-out MLM/SBO accuracy beside the most-frequent-token baseline."""
    from pipelines.pretrain import special_token_ids
    from pipelines.pretraining_dataset import make_pretraining_dataset

    special = special_token_ids(plan)
    dataset = make_pretraining_dataset(heldout_files, plan.masking, special, batch_size=32,
                                       seed=seed + 1, shuffle_buffer=1, repeat=False)
    with warnings.catch_warnings():  # Keras warns when a finite dataset ends, as it should
        warnings.simplefilter("ignore", UserWarning)
        metrics = model.evaluate(dataset, verbose=0, return_dict=True)
    most_frequent = most_frequent_token(
        train_files, {special.pad_id, special.cls_id, special.sep_id, special.mask_id})
    hits = {"mlm": 0.0, "sbo": 0.0}
    totals = {"mlm": 0.0, "sbo": 0.0}
    for batch in dataset.as_numpy_iterator():
        for key, ids, weights in (("mlm", "masked_lm_ids", "masked_lm_weights"),
                                  ("sbo", "span_target_ids", "span_target_weights")):
            weight = batch[weights] > 0
            hits[key] += float(np.sum(batch[ids][weight] == most_frequent))
            totals[key] += float(np.sum(weight))
    return {"mlm_accuracy": metrics["mlm_accuracy"], "sbo_accuracy": metrics["sbo_accuracy"],
            "mlm_loss": metrics["mlm_loss"], "sbo_loss": metrics["sbo_loss"],
            "baseline_mlm_accuracy": hits["mlm"] / max(totals["mlm"], 1),
            "baseline_sbo_accuracy": hits["sbo"] / max(totals["sbo"], 1),
            "baseline_token": most_frequent, "heldout_mlm_targets": totals["mlm"],
            "heldout_sbo_targets": totals["sbo"]}


def run_demo(output_dir: str = "runs/demo", train_steps: int = 600, batch_size: int = 32,
             max_seq_length: int = 128, vocab_size: int = 8000, cpu_replicas: int = 2,
             learning_rate: float = 2e-3, seed: int = 0,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the demo; returns its report (also written to OUTPUT_DIR/demo_report.json)."""
    from pipelines.pretrain import (PretrainingOptions, directory_shards, resolve_plan,
                                   run_pretraining)
    from pipelines.pretraining_records import shard_files
    from spanbert_tf import SpanBertConfig

    from pipelines.strategy import configure_cpu_replicas

    started = time.perf_counter()
    if cpu_replicas > 1:  # before any TensorFlow op initialises the devices
        configure_cpu_replicas(cpu_replicas)
    os.makedirs(output_dir, exist_ok=True)
    vocab = build_demo_vocab(output_dir, vocab_size, say)
    data_dir = prepare_demo_data(output_dir, vocab, max_seq_length, seed, say)
    with open(vocab, encoding="utf-8") as handle:
        entries = sum(1 for _ in handle)
    config = SpanBertConfig(vocab_size=entries, **DEMO_CONFIG)
    say(f"[3/5] pretraining: {train_steps} steps, global batch {batch_size} x "
        f"{max_seq_length} tokens, MirroredStrategy over {cpu_replicas} CPU replicas")
    model_dir = os.path.join(output_dir, "model")
    if os.path.exists(model_dir):  # the demo always trains from scratch
        say(f"      removing the previous demo model in {model_dir}")
        shutil.rmtree(model_dir)
    options = PretrainingOptions(
        data=data_dir, model_dir=model_dir, config=config, vocab=vocab,
        train_steps=train_steps, global_batch_size=batch_size, max_seq_length=max_seq_length,
        learning_rate=learning_rate, warmup_steps=max(train_steps // 10, 1), seed=seed,
        save_every=max(train_steps // 4, 1), log_every=max(train_steps // 12, 1),
        cpu_replicas=cpu_replicas, progress=False, shuffle_buffer=2000)
    result = run_pretraining(options, print_fn=say)
    print_curves(result.history, say)
    plot = plot_curves(result.history, os.path.join(output_dir, "training_curves.png"))

    say("[4/5] held-out evaluation (documents never seen in training)")
    plan = resolve_plan(options)
    heldout_files = shard_files(os.path.join(data_dir, "heldout-*"))
    evaluation = evaluate_heldout(result.model, heldout_files, plan,
                                  directory_shards(data_dir), seed)
    say(f"  MLM accuracy {evaluation['mlm_accuracy']:.3f}  vs unigram baseline "
        f"{evaluation['baseline_mlm_accuracy']:.3f}  ({int(evaluation['heldout_mlm_targets'])}"
        f" masked tokens)")
    say(f"  SBO accuracy {evaluation['sbo_accuracy']:.3f}  vs unigram baseline "
        f"{evaluation['baseline_sbo_accuracy']:.3f}  ({int(evaluation['heldout_sbo_targets'])}"
        f" SBO targets)")
    export_path = export_demo_model(result.export_dir, os.path.join(output_dir, "export"), say)
    report = {"output_dir": output_dir, "vocab": vocab, "data": data_dir,
              "model_dir": model_dir, "final_model": result.export_dir, "plot": plot,
              "saved_model": export_path,
              "status": result.status, "steps": result.final_step,
              "history": result.history, "heldout": evaluation,
              "wall_seconds": time.perf_counter() - started}
    report_path = os.path.join(output_dir, "demo_report.json")
    with open(report_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, default=float)
    say(f"\nwritten: vocab {vocab}\n         shards {data_dir}\n         checkpoints and "
        f"TensorBoard logs {model_dir}\n         final model {result.export_dir}\n"
        f"         SavedModel {export_path}\n"
        f"         curves {plot}\n         report {report_path}\n"
        f"total {report['wall_seconds'] / 60:.1f} min")
    return report


def export_demo_model(model_dir: str, export_base: str, say: Callable[[str], None]) -> str:
    """Exports the pretrained encoder (tokenizer inside) and calls the export once."""
    import tensorflow as tf

    from serving.export import export_model

    say("[5/5] export: SavedModel with embedded tokenization (TF Serving layout)")
    path = export_model(model_dir, export_base, "spanbert-demo", version=1, overwrite=True)
    sentences = ["The whale swam beneath the ship.", "Mr. Darcy walked into the room."]
    outputs = tf.saved_model.load(path).signatures["serving_default"](
        text=tf.constant(sentences))
    embeddings = outputs["embedding"].numpy()
    say(f"  {path}: serving_default(text) -> embedding {list(embeddings.shape)}, "
        f"cls_embedding {list(outputs['cls_embedding'].shape)}")
    return path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="pretrain a small SpanBERT end to end on the bundled corpus",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/demo",
                        help="where everything is written (default: runs/demo)")
    parser.add_argument("--train-steps", type=int, default=600,
                        help="pretraining steps (default: 600)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="global batch size, split over the replicas (default: 32)")
    parser.add_argument("--max-seq-length", type=int, default=128,
                        help="segment length in tokens (default: 128)")
    parser.add_argument("--vocab-size", type=int, default=8000,
                        help="WordPiece vocabulary size to learn (default: 8000)")
    parser.add_argument("--cpu-replicas", type=int, default=2,
                        help="logical CPU devices for MirroredStrategy (default: 2)")
    parser.add_argument("--learning-rate", type=float, default=2e-3,
                        help="peak learning rate (default: 2e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and model")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = run_demo(output_dir=args.output_dir, train_steps=args.train_steps,
                      batch_size=args.batch_size, max_seq_length=args.max_seq_length,
                      vocab_size=args.vocab_size, cpu_replicas=args.cpu_replicas,
                      learning_rate=args.learning_rate, seed=args.seed)
    return 0 if report["status"] == "completed" else 1
