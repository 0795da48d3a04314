"""`spanbert-tf finetune qa` / `spanbert-tf evaluate qa`: extractive question answering.

Data: SQuAD v1.1 / v2.0 JSON or MRQA JSONL (`pipelines.finetune.qa_data`); contexts are
split into windows with a document stride (`qa_features`); the model is
`SpanBertQuestionAnswering` (start/end logits) trained with BERT's loss under the
shared trainer (`pipelines.finetune.trainer`); answers are decoded n-best across
windows and mapped back to context characters (`qa_postprocess`); EM/F1 come from the
official SQuAD evaluation (`qa_metrics`).

SQuAD 2.0 (`--version-2-with-negative`, or inferred from the files): a question gets ""
when its null score minus its best span score exceeds the null threshold. `finetune`
picks the threshold that maximises F1 on --dev-file (the official best_f1_thresh; or
takes --null-score-diff-threshold) and saves it in task.json; `evaluate` uses the saved
threshold unless told otherwise.

Outputs (finetune: --output-dir, next to the model; evaluate: --output-dir):
    predictions.json        {question id: answer text} (the official evaluation's input)
    nbest_predictions.json  {question id: [n-best candidates with char offsets, scores]}
    null_odds.json          {question id: null score - best span score} (SQuAD 2.0)
    predictions.jsonl       one row per question: id, answer, start/end chars, scores
    metrics.json            EM/F1 (official), threshold search, data counts, training run

Example:
    $ spanbert-tf finetune qa --init-checkpoint minilm/ --output-dir qa/ \\
          --train-file train-v1.1.json --dev-file dev-v1.1.json --max-seq-length 384
    $ spanbert-tf evaluate qa --model-dir qa/ --eval-file dev-v1.1.json --output-dir eval/
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

from pipelines.finetune import trainer
from pipelines.finetune.qa_data import QAData, read_qa_file
from pipelines.finetune.qa_features import QAFeatureOptions, batched_dataset, build_features
from pipelines.finetune.qa_inference import answer_questions
from pipelines.finetune.qa_metrics import squad_scores, tune_null_threshold
from pipelines.finetune.qa_postprocess import (DEFAULT_MAX_ANSWER_LENGTH, DEFAULT_N_BEST,
                                               QAPredictions, apply_null_threshold)
from spanbert_tf.models.question_answering import SpanBertQuestionAnswering, span_losses
from spanbert_tf.tokenizer import SpanBertTokenizer

NAME = "qa"
HELP = "extractive question answering (SQuAD v1.1/v2.0 JSON, MRQA JSONL)"
# Official SpanBERT/BERT SQuAD settings (DESIGN.md section 3), with seq 384 (not 512).
DEFAULTS = {"max_seq_length": 384, "epochs": 4.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`finetune qa` flags: the shared training flags plus the QA ones."""
    trainer.add_training_arguments(parser, **DEFAULTS)
    group = parser.add_argument_group("question answering")
    group.add_argument("--doc-stride", type=int, default=128,
                       help="context tokens between the starts of consecutive windows of "
                            "a long context (default: %(default)s)")
    group.add_argument("--max-query-length", type=int, default=64,
                       help="questions are cut to this many tokens (default: %(default)s)")
    add_decoding_arguments(group)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """`evaluate qa` flags beyond --model-dir/--eval-file/--output-dir/--batch-size."""
    add_decoding_arguments(parser.add_argument_group("question answering"))


def add_decoding_arguments(group) -> None:
    group.add_argument("--version-2-with-negative", action="store_true", default=None,
                       help="SQuAD 2.0: questions may have no answer (default: inferred "
                            "from the files: a \"version\" 2.x or any is_impossible "
                            "question; evaluate: what the model was trained for)")
    group.add_argument("--n-best-size", type=int, default=DEFAULT_N_BEST,
                       help="candidate starts/ends per window and answers kept per "
                            "question in nbest_predictions.json (default: %(default)s)")
    group.add_argument("--max-answer-length", type=int, default=DEFAULT_MAX_ANSWER_LENGTH,
                       help="longest answer in tokens (default: %(default)s)")
    group.add_argument("--null-score-diff-threshold", type=float, default=None,
                       help="SQuAD 2.0: answer \"\" when null score - best span score "
                            "exceeds this (default: finetune tunes it on --dev-file for "
                            "the best F1, 0.0 without one; evaluate uses the saved one)")


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Trains on --train-file, evaluates on --dev-file, saves model and outputs."""
    check_decoding_arguments(args)
    settings, tokenizer = trainer.start_finetuning(args)
    options = QAFeatureOptions(settings.max_seq_length, args.doc_stride,
                               args.max_query_length)
    # Both files are read (and checked) before any training starts.
    train = read_qa_file(settings.train_file, args.version_2_with_negative)
    dev = read_qa_file(settings.dev_file, args.version_2_with_negative) \
        if settings.dev_file else None
    version_2 = args.version_2_with_negative if args.version_2_with_negative is not None \
        else train.version_2 or bool(dev and dev.version_2)
    print(f"{train.path}: {train.summary.describe()}", flush=True)
    examples = train.examples[:settings.max_train_examples]
    features, feature_summary = build_features(examples, tokenizer, options, training=True,
                                               progress=settings.progress)
    print(f"training windows: {feature_summary.describe()}", flush=True)
    if not features:
        raise ValueError(f"{train.path}: no question with a usable answer to train on")
    model, run = trainer.train_model(
        settings, build_model=lambda encoder: build_model(encoder, settings.init_checkpoint),
        loss=span_losses(), metrics=None,
        make_dataset=lambda batch_size, context: batched_dataset(
            features, batch_size, training=True, seed=settings.seed,
            max_seq_length=settings.max_seq_length, input_context=context),
        num_examples=len(features))
    metadata = {
        "task": NAME, "labels": [], "max_seq_length": options.max_seq_length,
        "doc_stride": options.doc_stride, "max_query_length": options.max_query_length,
        "lowercase": tokenizer.lowercase, "version_2": version_2,
        "max_answer_length": args.max_answer_length, "n_best_size": args.n_best_size,
        "null_score_diff_threshold": args.null_score_diff_threshold or 0.0,
        "outputs": ["start_logits", "end_logits"],
    }
    results: dict[str, Any] = {
        "task": NAME, "training": run.record(), "settings": settings.record(),
        "train_data": {**vars(train.summary), **vars(feature_summary)},
    }
    evaluate_file = FileEvaluator(args, settings.output_dir, tune=True,
                                  preloaded=[dev] if dev else [])
    return trainer.finish_finetuning(settings, model, tokenizer, metadata, results,
                                     evaluate_file)


def build_model(encoder, init_checkpoint: str) -> SpanBertQuestionAnswering:
    """The QA model on the pretrained `encoder`. When `init_checkpoint` is a fine-tuned
    QA directory (e.g. SQuAD 1.1 before 2.0), its span head is kept too."""
    model = SpanBertQuestionAnswering(encoder=encoder, name="question_answering")
    task = trainer.read_task_file(init_checkpoint) if os.path.isdir(init_checkpoint) else None
    if task is not None and task["task"] == NAME:
        previous, _, _ = trainer.load_finetuned(init_checkpoint, task=NAME)
        model.span_head.set_weights(previous.span_head.get_weights())
        print(f"{init_checkpoint}: QA span head reused", flush=True)
    return model


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Predicts --eval-file with a fine-tuned QA directory; metrics when labelled."""
    check_decoding_arguments(args)
    return trainer.run_evaluation(args, NAME, FileEvaluator(args, args.output_dir, tune=False))


class FileEvaluator:
    """The trainer's `evaluate_file` callback for QA: predicts a file, writes the QA
    prediction files to `output_dir`, returns (metrics, predictions.jsonl rows).

    With `tune` (finetune's dev file) the SQuAD 2.0 threshold is chosen on the file,
    unless --null-score-diff-threshold fixes it, and stored in the task metadata that
    is saved next. Without it (evaluate) the model's saved threshold is used.
    """

    def __init__(self, args: argparse.Namespace, output_dir: str, tune: bool,
                 preloaded: list[QAData] = ()):
        self.args = args
        self.output_dir = output_dir
        self.tune = tune
        self.preloaded = {data.path: data for data in preloaded}

    def __call__(self, model, tokenizer: SpanBertTokenizer, metadata: dict[str, Any],
                 path: str, batch_size: int, progress: bool
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        args = self.args
        data = self.preloaded.get(path) or read_qa_file(
            path, args.version_2_with_negative, require_answers=False)
        version_2 = args.version_2_with_negative if args.version_2_with_negative is not None \
            else bool(metadata["version_2"] or data.version_2)
        threshold = args.null_score_diff_threshold
        if threshold is None and not self.tune:
            threshold = float(metadata.get("null_score_diff_threshold", 0.0))
        options = QAFeatureOptions(metadata["max_seq_length"], metadata["doc_stride"],
                                   metadata["max_query_length"])
        metrics, rows, used = evaluate_data(
            model, tokenizer, data, options, self.output_dir, batch_size, args.n_best_size,
            args.max_answer_length, version_2, threshold, progress)
        if self.tune and version_2:
            metadata["null_score_diff_threshold"] = used
        return metrics, rows


def check_decoding_arguments(args: argparse.Namespace) -> None:
    for name in ("n_best_size", "max_answer_length"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got "
                             f"{getattr(args, name)}")
    threshold = args.null_score_diff_threshold
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"--null-score-diff-threshold must be finite, got {threshold}")


def evaluate_data(model, tokenizer: SpanBertTokenizer, data: QAData,
                  options: QAFeatureOptions, output_dir: str, batch_size: int,
                  n_best: int, max_answer_length: int, version_2: bool,
                  threshold: float | None, progress: bool
                  ) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Predicts `data`, writes the prediction files to `output_dir`, scores them.

    SQuAD 2.0: without a `threshold`, the one with the best F1 on `data` is used
    (0.0 when `data` has no gold answers). Returns (metrics, predictions.jsonl rows,
    threshold used)."""
    print(f"{data.path}: {data.summary.describe()}", flush=True)
    started = time.perf_counter()
    predictions, features = answer_questions(
        model, data.examples, tokenizer, options, batch_size=batch_size, n_best=n_best,
        max_answer_length=max_answer_length, version_2=version_2,
        null_threshold=threshold or 0.0, progress=progress)
    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {
        "file": data.path, "questions": len(data.examples), "windows": len(features),
        "prediction_seconds": round(seconds, 2), "data": vars(data.summary),
    }
    used = threshold if threshold is not None else 0.0
    if version_2 and data.labelled:
        metrics["at_threshold_0"] = squad_scores(
            data.gold, apply_null_threshold(predictions, 0.0), True)
        search = tune_null_threshold(data.gold, predictions.best_non_null,
                                     predictions.score_diff)
        metrics["threshold_search"] = search
        if threshold is None:
            used = search["best_f1_threshold"]
    if version_2:
        predictions.answers = apply_null_threshold(predictions, used)
        predictions.null_threshold = used
        metrics["null_score_diff_threshold"] = used
    if data.labelled:
        metrics.update(squad_scores(data.gold, predictions.answers, version_2))
    else:
        print(f"{data.path}: some questions have no gold answers: predictions only",
              flush=True)
    return metrics, write_prediction_files(output_dir, predictions), used


def write_prediction_files(directory: str, predictions: QAPredictions
                           ) -> list[dict[str, Any]]:
    """Writes predictions.json, nbest_predictions.json and null_odds.json (SQuAD 2.0)
    to `directory`; returns the predictions.jsonl rows (the trainer writes them)."""
    os.makedirs(directory, exist_ok=True)
    trainer.write_json(os.path.join(directory, "predictions.json"), predictions.answers)
    trainer.write_json(os.path.join(directory, "nbest_predictions.json"), predictions.nbest)
    if predictions.score_diff:
        trainer.write_json(os.path.join(directory, "null_odds.json"),
                           {qid: _finite(v) for qid, v in predictions.score_diff.items()})
    rows = []
    for qid, answer in predictions.answers.items():
        best = next((c for c in predictions.nbest[qid] if c["text"] == answer), None)
        rows.append({"id": qid, "answer": answer,
                     "start": best["start"] if best and answer else None,
                     "end": best["end"] if best and answer else None,
                     "score": best["score"] if best else None,
                     "probability": best.get("probability") if best else None,
                     "null_score_diff": _finite(predictions.score_diff.get(qid))})
    return rows


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: a question without any span has no score difference."""
    return value if value is not None and math.isfinite(value) else None
