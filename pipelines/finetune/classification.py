"""Sequence classification and regression: GLUE-style TSV/CSV or JSONL -> SpanBertClassifier.

Data: a TSV (GLUE layout, read without quote handling), CSV or JSON-lines file with
one example per row. `--text-columns` names one text column (single sentences) or two
(pairs: `[CLS] A [SEP] B [SEP]`, segment ids 0 then 1); by default `sentence1,sentence2`,
`question,sentence`, `sentence` or `text`, whichever the header has. `--label-column`
(default `label`) holds the class name or, with `--regression`, a number.

Labels: the sorted set of training labels (numerically when they are all numbers).
At evaluation, examples whose gold label never occurred in training are predicted but
left out of the metrics, and counted per label in metrics.json (`unseen_labels`).
Examples with an empty text are skipped and counted (`skipped_empty_text`).

Pair encoding: `--pair-encoding cross` (default) packs a pair into one input, as above;
`--pair-encoding siamese` (Sentence-BERT) packs each text on its own as `[CLS] text [SEP]`
(each truncated to `--max-seq-length`), encodes both with the same encoder and
classifies `[u, v, |u - v|]` of the pooled vectors (`SpanBertClassifier`). `--pooling`
picks the vector: `cls` (pooler on [CLS], the default for cross) or `mean` (masked mean
of the token vectors, the default for siamese: what sentence-transformers checkpoints
were trained with). Both choices are recorded in task.json (`pair_encoding`, `pooling`).

Long documents: inputs longer than the window are truncated (longer text first) and
counted, unless `--long-document`: then the first text is split into overlapping
chunks of the window (`--chunk-overlap` tokens shared by neighbours; the second text of
a pair is kept in every chunk, at most half the window). Training uses every chunk with
the document's label; a prediction is the mean of its chunks' logits. Cross encoding
only: `--long-document` with `--pair-encoding siamese` is an error.

Metrics: accuracy, macro-F1, Matthews correlation, and F1 of the second label for two
classes (GLUE's F1 with labels 0/1); Pearson, Spearman and MSE for regression; plus the
majority-class (or mean-target) baseline on the same examples.

Example:
    >>> labels = label_vocabulary(["1", "0", "10", "1"])
    >>> labels
    ['0', '1', '10']
    >>> classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], labels[:2])["accuracy"]
    0.75
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import os
from typing import Any, Sequence

import keras
import numpy as np

from pipelines.finetune.features import (EncodedExamples, input_error,
                                         is_json_lines, pack_sequences, read_json_lines,
                                         read_table, read_table_header, tokenize_texts,
                                         training_batches)
from pipelines.finetune.trainer import (add_training_arguments, finish_finetuning,
                                        predict_logits, run_evaluation, start_finetuning,
                                        train_model)
from spanbert_tf.models.classifier import (PAIR_ENCODINGS, PAIR_FEATURES, POOLINGS,
                                           SpanBertClassifier)

NAME = "classification"
HELP = ("sequence classification or regression (GLUE-style TSV/CSV or JSONL, single "
        "texts or pairs, optional long-document chunking)")
# DESIGN.md section 3: GLUE fine-tuning uses sequence length 128 and 10 epochs.
DEFAULTS = {"epochs": 10.0, "max_seq_length": 128}
DEFAULT_TEXT_COLUMNS = (("sentence1", "sentence2"), ("question", "sentence"),
                        ("sentence",), ("text",))
MAX_LISTED_LINES = 20


@dataclasses.dataclass
class Example:
    texts: tuple[str, ...]
    label: str | None
    line: int


@dataclasses.dataclass
class ExampleFile:
    """The examples of one file and what reading it skipped."""

    path: str
    text_columns: tuple[str, ...]
    examples: list[Example]
    empty_lines: list[int]
    has_labels: bool

    def skipped(self) -> dict[str, Any]:
        return {"skipped_empty_text": len(self.empty_lines),
                "skipped_empty_text_lines": self.empty_lines[:MAX_LISTED_LINES]}


# ---------------------------------------------------------------- reading

def parse_columns(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    columns = tuple(part.strip() for part in (value.split(",") if isinstance(value, str)
                                              else value) if part.strip())
    if not 1 <= len(columns) <= 2:
        raise ValueError(f"--text-columns takes one or two column names, got {value!r}")
    return columns


def choose_text_columns(path: str, available: Sequence[str],
                        requested: tuple[str, ...] | None) -> tuple[str, ...]:
    if requested is not None:
        missing = [column for column in requested if column not in available]
        if missing:
            raise input_error(path, None, f"no column(s) {', '.join(map(repr, missing))} "
                                          f"(columns: {', '.join(available)})")
        return requested
    for candidate in DEFAULT_TEXT_COLUMNS:
        if all(column in available for column in candidate):
            return candidate
    raise input_error(path, None, f"cannot tell the text column(s) (columns: "
                                  f"{', '.join(available)}); pass --text-columns")


def text_value(path: str, line: int, value: Any, column: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise input_error(path, line, f"column {column!r} must hold text, found "
                                      f"{type(value).__name__}")
    return value


def label_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(int(value))
    return str(value).strip()


def read_examples(path: str, text_columns: tuple[str, ...] | None = None,
                  label_column: str = "label", require_labels: bool = True) -> ExampleFile:
    """Reads a TSV/CSV/JSONL classification file (see the module docstring)."""
    if is_json_lines(path):
        rows = list(read_json_lines(path))
        available = list(dict.fromkeys(key for _, row in rows for key in row))
    else:
        available = read_table_header(path)
        rows = list(read_table(path))
    if not rows:
        raise input_error(path, None, "no examples in the file")
    columns = choose_text_columns(path, available, text_columns)
    has_labels = label_column in available
    if require_labels and not has_labels:
        raise input_error(path, None, f"no label column {label_column!r} (columns: "
                                      f"{', '.join(available)}); pass --label-column")
    examples, empty = [], []
    for line, row in rows:
        missing = [column for column in columns + ((label_column,) if has_labels else ())
                   if column not in row]
        if missing:
            raise input_error(path, line, f"missing field(s) {', '.join(map(repr, missing))}")
        texts = tuple(text_value(path, line, row[column], column) for column in columns)
        if any(not text.strip() for text in texts):
            empty.append(line)
            continue
        label = label_value(row[label_column]) if has_labels else None
        if has_labels and not label and require_labels:
            raise input_error(path, line, f"empty label in column {label_column!r}")
        examples.append(Example(texts, label or None, line))
    return ExampleFile(path, columns, examples, empty, has_labels)


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def label_vocabulary(labels: Sequence[str]) -> list[str]:
    """The distinct labels, sorted numerically when all are numbers, else as text."""
    distinct = set(labels)
    if all(is_number(label) for label in distinct):
        return sorted(distinct, key=lambda label: (float(label), label))
    return sorted(distinct)


def regression_targets(data: ExampleFile) -> np.ndarray:
    targets = []
    for example in data.examples:
        try:
            targets.append(float(example.label))
        except (TypeError, ValueError):
            raise input_error(data.path, example.line, f"--regression needs a numeric label, "
                                                       f"found {example.label!r}") from None
    return np.array(targets, np.float32)


# ---------------------------------------------------------------- features

def chunk_starts(length: int, window: int, overlap: int) -> list[int]:
    """Start offsets of windows of `window` tokens, neighbours sharing `overlap`, that
    together cover `length` tokens (one window for a short or empty text)."""
    if window < 1:
        raise ValueError("the window leaves no room for the document")
    if not 0 <= overlap < window:
        raise ValueError(f"--chunk-overlap must lie in [0, {window - 1}] for this window, "
                         f"got {overlap}")
    stride = window - overlap
    extra = max(0, length - window)
    return [index * stride for index in range(1 + math.ceil(extra / stride))]


@dataclasses.dataclass
class Encoding:
    """Model rows for a list of examples, and what encoding changed."""

    encoded: EncodedExamples
    truncated: int
    chunks: np.ndarray  # rows per example


def encode_examples(examples: Sequence[Example], tokenizer, max_seq_length: int,
                    targets: np.ndarray | None, long_document: bool = False,
                    chunk_overlap: int = 64, progress: bool = False,
                    pair_encoding: str = "cross") -> Encoding:
    """Token rows of `examples`; `targets` (one per example) become the row labels.

    `pair_encoding="siamese"`: each text of a pair is packed on its own (the second
    ones into `EncodedExamples.second`); `truncated` counts truncated texts.
    """
    check_pair_encoding(pair_encoding, long_document)
    firsts = tokenize_texts(tokenizer, [e.texts[0] for e in examples], progress)
    pair = len(examples[0].texts) == 2 if examples else False
    seconds = tokenize_texts(tokenizer, [e.texts[1] for e in examples], progress) if pair \
        else [None] * len(examples)
    if pair_encoding == "siamese":
        if not pair:
            raise ValueError("--pair-encoding siamese needs sentence pairs (two text columns)")
        second, second_cut = encode_singles(seconds, tokenizer, max_seq_length)
        first, first_cut = encode_singles(firsts, tokenizer, max_seq_length, targets, second)
        return Encoding(first, first_cut + second_cut, np.ones(len(examples), np.int64))
    ids, segments, labels, source = [], [], [], []
    truncated = 0
    chunks = np.zeros(len(examples), np.int64)
    for index, (first, second) in enumerate(zip(firsts, seconds)):
        if long_document:
            if second is not None:
                second = second[:(max_seq_length - 3) // 2]
            window = max_seq_length - (3 + len(second) if second is not None else 2)
            pieces = [first[start:start + window]
                      for start in chunk_starts(len(first), window, chunk_overlap)]
        else:
            pieces = [first]
        for piece in pieces:
            row_ids, row_segments, cut = packed_row(tokenizer, piece, second, max_seq_length)
            truncated += cut
            ids.append(row_ids)
            segments.append(row_segments)
            source.append(index)
            if targets is not None:
                labels.append(targets[index])
        chunks[index] = len(pieces)
    label_array = None if targets is None else np.asarray(labels, targets.dtype)
    return Encoding(EncodedExamples(ids, segments, label_array, np.array(source, np.int64)),
                    truncated, chunks)


def packed_row(tokenizer, first, second, max_seq_length: int
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """int32 ids and segment ids of `[CLS] first [SEP] (second [SEP])`, and whether it was cut."""
    row_ids, row_segments, cut = pack_sequences(tokenizer.cls_id, tokenizer.sep_id, first,
                                                second, max_seq_length)
    return np.array(row_ids, np.int32), np.array(row_segments, np.int32), cut


def check_pair_encoding(pair_encoding: str, long_document: bool) -> None:
    if pair_encoding not in PAIR_ENCODINGS:
        raise ValueError(f"--pair-encoding must be one of {PAIR_ENCODINGS}, got {pair_encoding!r}")
    if pair_encoding == "siamese" and long_document:
        raise ValueError("--long-document chunks cross-encoded inputs; it cannot be "
                         "combined with --pair-encoding siamese")


def encode_singles(texts: Sequence[np.ndarray], tokenizer, max_seq_length: int,
                   targets: np.ndarray | None = None, second: EncodedExamples | None = None
                   ) -> tuple[EncodedExamples, int]:
    """`[CLS] text [SEP]` rows, one per text, and how many were truncated."""
    ids, segments, truncated = [], [], 0
    for tokens in texts:
        row_ids, row_segments, cut = packed_row(tokenizer, tokens, None, max_seq_length)
        truncated += cut
        ids.append(row_ids)
        segments.append(row_segments)
    return EncodedExamples(ids, segments, targets, second=second), truncated


def aggregate_chunks(row_logits: np.ndarray, source: np.ndarray, num_examples: int) -> np.ndarray:
    """Per-example mean of the logits of its rows (chunks)."""
    sums = np.zeros((num_examples, row_logits.shape[-1]), np.float64)
    np.add.at(sums, source, row_logits)
    counts = np.bincount(source, minlength=num_examples)
    if np.any(counts == 0):
        raise ValueError("an example has no rows to aggregate")
    return (sums / counts[:, None]).astype(np.float32)


# ---------------------------------------------------------------- metrics

def classification_metrics(gold: Sequence[int], predicted: Sequence[int],
                           labels: Sequence[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if not len(gold):
        return {"scored": 0}
    indices = list(range(len(labels)))
    metrics = {
        "scored": len(gold),
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, labels=indices, average="macro",
                                   zero_division=0)),
        "matthews_corr": float(matthews_corrcoef(gold, predicted)),
    }
    if len(labels) == 2:
        metrics["f1"] = float(f1_score(gold, predicted, pos_label=1, average="binary",
                                       zero_division=0))
        metrics["f1_positive_label"] = labels[1]
    return metrics


def regression_metrics(gold: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    from scipy.stats import pearsonr, spearmanr

    if not len(gold):
        return {"scored": 0}
    constant = np.ptp(gold) == 0 or np.ptp(predicted) == 0
    return {
        "scored": int(len(gold)),
        "pearson": None if constant else float(pearsonr(gold, predicted)[0]),
        "spearman": None if constant else float(spearmanr(gold, predicted)[0]),
        "mse": float(np.mean((gold - predicted) ** 2)),
    }


# ---------------------------------------------------------------- evaluation

def evaluate_file(model: keras.Model, tokenizer, metadata: dict[str, Any], path: str,
                  batch_size: int, progress: bool = True
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Predicts every example of `path`; metrics when the file has labels."""
    data = read_examples(path, tuple(metadata["text_columns"]), metadata["label_column"],
                         require_labels=False)
    if not data.examples:
        raise input_error(path, None, "every example has an empty text")
    regression = metadata["regression"]
    encoding = encode_examples(data.examples, tokenizer, metadata["max_seq_length"], None,
                               metadata.get("long_document", False),
                               metadata.get("chunk_overlap", 64), progress,
                               metadata.get("pair_encoding", "cross"))
    row_logits = predict_logits(model, encoding.encoded, batch_size,
                                metadata["max_seq_length"], tokenizer.pad_id, progress)
    logits = aggregate_chunks(row_logits, encoding.encoded.source, len(data.examples))
    labels = metadata["labels"]
    predictions = []
    for index, (example, values) in enumerate(zip(data.examples, logits)):
        row: dict[str, Any] = {"index": index, "line": example.line}
        if regression:
            row["score"] = float(values[0])
        else:
            probabilities = softmax(values)
            row["label"] = labels[int(np.argmax(values))]
            row["probabilities"] = {label: round(float(p), 6)
                                    for label, p in zip(labels, probabilities)}
        if example.label is not None:
            row["gold"] = example.label
        if encoding.chunks[index] > 1:
            row["chunks"] = int(encoding.chunks[index])
        predictions.append(row)
    metrics: dict[str, Any] = {"file": os.path.abspath(path), "examples": len(data.examples),
                               "truncated": encoding.truncated, **data.skipped()}
    if metadata.get("long_document"):
        metrics["chunks"] = int(encoding.chunks.sum())
    if data.has_labels:
        metrics.update(score(data.examples, logits, metadata))
    return metrics, predictions


def score(examples: Sequence[Example], logits: np.ndarray,
          metadata: dict[str, Any]) -> dict[str, Any]:
    """Metrics and the trivial baseline over the labelled examples."""
    unlabelled = sum(e.label is None for e in examples)
    keep = [position for position, e in enumerate(examples) if e.label is not None]
    examples, logits = [examples[position] for position in keep], logits[keep]
    extra = {"examples_without_label": unlabelled} if unlabelled else {}
    if metadata["regression"]:
        gold = np.array([float(e.label) for e in examples], np.float64)
        metrics = regression_metrics(gold, logits[:, 0].astype(np.float64))
        baseline = float(np.mean((gold - metadata["train_mean_target"]) ** 2))
        return {**metrics, **extra,
                "baseline": {"name": "mean training target", "mse": baseline}}
    labels = metadata["labels"]
    index = {label: position for position, label in enumerate(labels)}
    unseen = collections.Counter(e.label for e in examples if e.label not in index)
    known = [position for position, e in enumerate(examples) if e.label in index]
    gold = [index[examples[position].label] for position in known]
    predicted = [int(np.argmax(logits[position])) for position in known]
    metrics = {**classification_metrics(gold, predicted, labels), **extra}
    majority = index[metadata["majority_label"]]
    metrics["baseline"] = {"name": "majority class", "label": metadata["majority_label"],
                           "accuracy": (sum(g == majority for g in gold) / len(gold)
                                        if gold else None)}
    if unseen:
        metrics["unseen_labels"] = dict(sorted(unseen.items()))
        metrics["examples_with_unseen_labels"] = sum(unseen.values())
        metrics["note"] = ("examples whose gold label never occurred in training are "
                           "predicted but left out of the metrics")
    return metrics


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - np.max(values))
    return shifted / shifted.sum()


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, **DEFAULTS)
    add_task_arguments(parser)


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    task = parser.add_argument_group("classification")
    task.add_argument("--text-columns", default=None, metavar="COL[,COL]",
                      help="one text column, or two for sentence pairs (default: the first "
                           "of sentence1,sentence2 / question,sentence / sentence / text "
                           "present in the file)")
    task.add_argument("--label-column", default="label",
                      help="column (or JSON field) with the label (default: %(default)s)")
    task.add_argument("--regression", action="store_true",
                      help="numeric labels: one output trained with mean squared error; "
                           "Pearson/Spearman metrics")
    task.add_argument("--long-document", action="store_true",
                      help="split texts longer than the window into overlapping chunks; "
                           "train on every chunk, predict the mean of the chunk logits")
    task.add_argument("--chunk-overlap", type=int, default=64,
                      help="tokens shared by neighbouring chunks with --long-document "
                           "(default: %(default)s)")
    task.add_argument("--no-pooler", action="store_true",
                      help="classify [CLS] directly, without the (freshly initialised) "
                           "BERT pooler layer (mean pooling never has one)")
    task.add_argument("--pair-encoding", choices=PAIR_ENCODINGS, default="cross",
                      help="cross: one input [CLS] A [SEP] B [SEP]; siamese: each text "
                           "encoded on its own by the shared encoder, classify "
                           "[u, v, |u-v|] (Sentence-BERT; for sentence-transformers "
                           "checkpoints) (default: %(default)s)")
    task.add_argument("--pair-features", choices=PAIR_FEATURES, default="concat",
                      help="siamese head input: concat ([u, v, |u-v|]) or cosine (cos(u, v) "
                           "alone: the similarity a sentence-transformers checkpoint was "
                           "trained for; pair it with --head-learning-rate) "
                           "(default: %(default)s)")
    task.add_argument("--pooling", choices=POOLINGS, default=None,
                      help="sequence vector: cls ([CLS] + pooler) or mean (masked mean of "
                           "the token vectors) (default: cls for cross, mean for siamese)")


def choose_pooling(args: argparse.Namespace) -> str:
    if args.pooling is not None:
        return args.pooling
    return "mean" if args.pair_encoding == "siamese" else "cls"


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    pooling = choose_pooling(args)
    check_pair_encoding(args.pair_encoding, args.long_document)
    if args.pair_features != "concat" and args.pair_encoding != "siamese":
        raise ValueError(f"--pair-features {args.pair_features} needs --pair-encoding siamese")
    settings, tokenizer = start_finetuning(args)
    train = read_examples(settings.train_file, parse_columns(args.text_columns),
                          args.label_column, require_labels=True)
    if args.pair_encoding == "siamese" and len(train.text_columns) != 2:
        raise input_error(settings.train_file, None,
                          f"--pair-encoding siamese needs two text columns, found "
                          f"{', '.join(train.text_columns)}")
    if settings.max_train_examples:
        train.examples = train.examples[:settings.max_train_examples]
    if not train.examples:
        raise input_error(settings.train_file, None, "no training examples with text")
    if args.regression:
        targets = regression_targets(train)
        labels = ["score"]
    else:
        labels = label_vocabulary([e.label for e in train.examples])
        if len(labels) < 2:
            raise input_error(settings.train_file, None,
                              f"classification needs at least two labels, found {labels}")
        index = {label: position for position, label in enumerate(labels)}
        targets = np.array([index[e.label] for e in train.examples], np.int32)
    encoding = encode_examples(train.examples, tokenizer, settings.max_seq_length, targets,
                               args.long_document, args.chunk_overlap, settings.progress,
                               args.pair_encoding)
    encoded = encoding.encoded
    use_pooler = pooling == "cls" and not args.no_pooler

    def build(encoder):
        return SpanBertClassifier(encoder, num_labels=len(labels), use_pooler=use_pooler,
                                  pooling=pooling, pair_encoding=args.pair_encoding,
                                  pair_features=args.pair_features)

    if args.regression:
        loss, metrics = keras.losses.MeanSquaredError(), [keras.metrics.MeanSquaredError(
            name="mse")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model, run = train_model(
        settings, build, loss, metrics,
        lambda batch_size, context: training_batches(
            encoded, batch_size, settings.max_seq_length, tokenizer.pad_id, settings.seed,
            context),
        num_examples=len(encoded))
    counts = collections.Counter(e.label for e in train.examples)
    metadata = {
        "task": NAME, "labels": labels, "max_seq_length": settings.max_seq_length,
        "lowercase": tokenizer.lowercase, "text_columns": list(train.text_columns),
        "label_column": args.label_column, "regression": bool(args.regression),
        "long_document": bool(args.long_document), "chunk_overlap": args.chunk_overlap,
        "use_pooler": use_pooler, "pooling": pooling, "pair_encoding": args.pair_encoding,
        "pair_features": args.pair_features,
        "majority_label": None if args.regression else max(
            labels, key=lambda label: (counts[label], -labels.index(label))),
        "train_mean_target": float(np.mean(targets)) if args.regression else None,
    }
    results: dict[str, Any] = {
        "task": NAME,
        "train": {"file": os.path.abspath(settings.train_file),
                  "examples": len(train.examples), "rows": len(encoded),
                  "truncated": encoding.truncated, **train.skipped(),
                  "label_counts": None if args.regression else dict(sorted(counts.items()))},
        "training": {**run.record(), "settings": settings.record()},
    }
    return finish_finetuning(settings, model, tokenizer, metadata, results, evaluate_file)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    return run_evaluation(args, NAME, evaluate_file)
