"""Relation extraction in the TACRED format -> SpanBertClassifier.

Data: a TACRED JSON file (a list of objects; JSON lines also work) with the fields
`token` (list of words), `subj_start`, `subj_end`, `obj_start`, `obj_end` (inclusive
word indices), `subj_type`, `obj_type` and, for training and scoring, `relation`.
`id` is copied to the predictions when present. TACRED itself (LDC2018T24) is not
openly licensed and is not included; data/tacred_format/ holds a small hand-made file
in its format.

Input, as in the official SpanBERT code: the subject span is replaced by one token
`[SUBJ-TYPE]` and the object span by `[OBJ-TYPE]` (e.g. `[SUBJ-PERSON]`, `[OBJ-CITY]`),
and the sequence is classified from [CLS]. The marker tokens are `[unusedN]` entries of
the vocabulary. The official code assigns them in the order types first appear in the
training file, so the same model means different things after a reshuffle; here the
mapping is a function of the set of types only: markers for the TACRED entity types
plus any other type in the training data, sorted, take the vocabulary's [unused]
tokens in id order. The mapping is saved in task.json (`entity_tokens`) and reused at
evaluation, where a type outside it becomes [UNK] and is counted. PTB bracket tokens
(-LRB- ...) are mapped back to brackets. A sequence longer than the window is cut to a
window that keeps both markers when they fit.

Metric: the official TACRED scorer: micro precision, recall and F1 over relations
other than `no_relation` (a prediction of no_relation is no guess; a gold no_relation
is no target).

Example:
    >>> scores = tacred_scores(["per:title", "no_relation", "org:founded_by", "no_relation"],
    ...                        ["per:title", "per:title", "no_relation", "no_relation"])
    >>> scores["precision"], scores["recall"], scores["f1"]
    (0.5, 0.5, 0.5)
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
from typing import Any, Sequence

import keras
import numpy as np

from pipelines.finetune.features import (EncodedExamples, input_error,
                                         read_json_lines, require_fields, tokenize_texts,
                                         training_batches)
from pipelines.finetune.trainer import (add_training_arguments, finish_finetuning,
                                        predict_logits, run_evaluation, start_finetuning,
                                        train_model)
from spanbert_tf.models.classifier import SpanBertClassifier

NAME = "tacred"
HELP = ("relation extraction, TACRED JSON format (subject/object replaced by entity "
        "markers on [unusedN] tokens; micro-F1 without no_relation)")
# DESIGN.md section 3: TACRED fine-tuning uses sequence length 128 and 10 epochs.
DEFAULTS = {"epochs": 10.0, "max_seq_length": 128}
NEGATIVE_LABEL = "no_relation"
REQUIRED_FIELDS = ("token", "subj_start", "subj_end", "obj_start", "obj_end",
                   "subj_type", "obj_type")
# Named-entity types of TACRED subjects (PERSON, ORGANIZATION) and objects.
TACRED_ENTITY_TYPES = (
    "CAUSE_OF_DEATH", "CITY", "COUNTRY", "CRIMINAL_CHARGE", "DATE", "DURATION", "IDEOLOGY",
    "LOCATION", "MISC", "NATIONALITY", "NUMBER", "ORGANIZATION", "PERSON", "RELIGION",
    "STATE_OR_PROVINCE", "TITLE", "URL",
)
PTB_BRACKETS = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{",
                "-RCB-": "}"}
UNUSED_TOKEN = re.compile(r"^\[unused(\d+)\]$")


@dataclasses.dataclass
class RelationExample:
    id: str | None
    tokens: list[str]
    subj: tuple[int, int]
    obj: tuple[int, int]
    subj_type: str
    obj_type: str
    relation: str | None
    where: str  # "FILE:LINE" or "FILE example N" for errors


# ---------------------------------------------------------------- reading

def read_records(path: str) -> list[tuple[str, dict[str, Any]]]:
    """(location, object) pairs of a TACRED JSON array or a JSON-lines file."""
    with open(path, encoding="utf-8-sig") as handle:
        text = handle.read()
    if not text.strip():
        raise input_error(path, None, "the file is empty")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise input_error(path, error.lineno, f"not valid JSON ({error.msg} at column "
                                                  f"{error.colno})") from None
        located = []
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise input_error(path, None, f"example {index}: expected an object, found "
                                              f"{type(record).__name__}")
            located.append((f"{path} example {index}", record))
        return located
    return [(f"{path}:{line}", record) for line, record in read_json_lines(path)]


def parse_example(where: str, record: dict[str, Any], require_relation: bool
                  ) -> RelationExample:
    missing = [field for field in REQUIRED_FIELDS if field not in record]
    if require_relation and "relation" not in record:
        missing.append("relation")
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
    tokens = record["token"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{where}: 'token' must be a non-empty list of strings")
    spans = []
    for role in ("subj", "obj"):
        start, end = record[f"{role}_start"], record[f"{role}_end"]
        if not (isinstance(start, int) and isinstance(end, int)
                and 0 <= start <= end < len(tokens)):
            raise ValueError(f"{where}: {role}_start/{role}_end ({start!r}, {end!r}) must be "
                             f"word indices with start <= end < {len(tokens)}")
        spans.append((start, end))
    (s_start, s_end), (o_start, o_end) = spans
    if s_start <= o_end and o_start <= s_end:
        raise ValueError(f"{where}: the subject ({s_start}-{s_end}) and object "
                         f"({o_start}-{o_end}) spans overlap")
    for field in ("subj_type", "obj_type"):
        if not isinstance(record[field], str) or not record[field].strip():
            raise ValueError(f"{where}: {field!r} must be a non-empty string")
    relation = record.get("relation")
    if relation is not None and not isinstance(relation, str):
        raise ValueError(f"{where}: 'relation' must be a string")
    return RelationExample(
        id=None if record.get("id") is None else str(record["id"]), tokens=tokens,
        subj=spans[0], obj=spans[1], subj_type=record["subj_type"].strip(),
        obj_type=record["obj_type"].strip(), relation=relation, where=where)


def read_examples(path: str, require_relation: bool = True) -> list[RelationExample]:
    examples = [parse_example(where, record, require_relation)
                for where, record in read_records(path)]
    if not examples:
        raise input_error(path, None, "no examples in the file")
    return examples


# ---------------------------------------------------------------- entity markers

def marker(role: str, entity_type: str) -> str:
    return f"[{role}-{entity_type}]"


def entity_marker_mapping(examples: Sequence[RelationExample],
                          vocabulary: Sequence[str]) -> dict[str, str]:
    """{"[SUBJ-PERSON]": "[unused0]", ...}: markers for the TACRED types plus every type
    in `examples`, sorted, on the vocabulary's [unusedN] tokens in id order. Depends on
    the set of types only, never on the order of the examples."""
    types = set(TACRED_ENTITY_TYPES)
    types.update(e.subj_type for e in examples)
    types.update(e.obj_type for e in examples)
    markers = sorted(marker(role, t) for role in ("SUBJ", "OBJ") for t in types)
    unused = sorted((int(match.group(1)), token) for token in vocabulary
                    if (match := UNUSED_TOKEN.match(token)))
    if len(unused) < len(markers):
        raise ValueError(f"the vocabulary has {len(unused)} [unusedN] tokens but the entity "
                         f"markers need {len(markers)} ({len(types)} entity types)")
    return {name: token for name, (_, token) in zip(markers, unused)}


def marked_words(example: RelationExample) -> tuple[list[str | None], list[str]]:
    """The words with each entity span replaced by None, and the two marker names in
    the order they occur."""
    words: list[str | None] = []
    markers = []
    index = 0
    spans = sorted([(example.subj, marker("SUBJ", example.subj_type)),
                    (example.obj, marker("OBJ", example.obj_type))])
    for (start, end), name in spans:
        words.extend(PTB_BRACKETS.get(word, word) for word in example.tokens[index:start])
        words.append(None)
        markers.append(name)
        index = end + 1
    words.extend(PTB_BRACKETS.get(word, word) for word in example.tokens[index:])
    return words, markers


def marker_window(length: int, positions: Sequence[int], budget: int) -> tuple[int, bool]:
    """Start of a `budget`-token window keeping both marker positions when they fit;
    True when a marker had to be left out."""
    if length <= budget:
        return 0, False
    first, last = min(positions), max(positions)
    if last - first >= budget:
        return first, True
    return max(0, min(first, last - budget + 1)), False


@dataclasses.dataclass
class Encoding:
    encoded: EncodedExamples
    truncated: int
    markers_lost: int
    unknown_types: collections.Counter


def encode_examples(examples: Sequence[RelationExample], tokenizer, max_seq_length: int,
                    entity_tokens: dict[str, str], relation_ids: dict[str, int] | None,
                    progress: bool = False) -> Encoding:
    """[CLS] words with entity markers [SEP] rows; labels from `relation_ids`."""
    budget = max_seq_length - 2
    marked = [marked_words(example) for example in examples]
    words = [word for word_list, _ in marked for word in word_list if word is not None]
    pieces = iter(tokenize_texts(tokenizer, words, progress))
    ids, labels = [], []
    truncated = lost = 0
    unknown = collections.Counter()
    for example, (word_list, markers) in zip(examples, marked):
        tokens, positions, names = [], [], iter(markers)
        for word in word_list:
            if word is None:
                name = next(names)
                token = entity_tokens.get(name)
                if token is None:
                    unknown[name] += 1
                positions.append(len(tokens))
                tokens.append(tokenizer.token_to_id(token) if token else tokenizer.unk_id)
            else:
                tokens.extend(int(i) for i in next(pieces))
        start, marker_lost = marker_window(len(tokens), positions, budget)
        truncated += len(tokens) > budget
        lost += marker_lost
        row = [tokenizer.cls_id, *tokens[start:start + budget], tokenizer.sep_id]
        ids.append(np.array(row, np.int32))
        if relation_ids is not None:
            labels.append(relation_ids[example.relation])
    encoded = EncodedExamples(ids, [np.zeros(len(row), np.int32) for row in ids],
                              None if relation_ids is None else np.array(labels, np.int32))
    return Encoding(encoded, truncated, lost, unknown)


# ---------------------------------------------------------------- metric

def tacred_scores(gold: Sequence[str], predicted: Sequence[str],
                  negative_label: str = NEGATIVE_LABEL) -> dict[str, Any]:
    """The official TACRED scorer: micro P/R/F1 over non-negative relations."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold relations but {len(predicted)} predictions")
    correct = guessed = targets = 0
    for gold_relation, predicted_relation in zip(gold, predicted):
        if predicted_relation != negative_label:
            guessed += 1
        if gold_relation != negative_label:
            targets += 1
            correct += gold_relation == predicted_relation
    precision = correct / guessed if guessed else 0.0
    recall = correct / targets if targets else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "correct": correct,
            "guessed": guessed, "gold": targets,
            "accuracy": (sum(g == p for g, p in zip(gold, predicted)) / len(gold)
                         if gold else None)}


# ---------------------------------------------------------------- evaluation

def evaluate_file(model: keras.Model, tokenizer, metadata: dict[str, Any], path: str,
                  batch_size: int, progress: bool = True
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    examples = read_examples(path, require_relation=False)
    labels = metadata["labels"]
    encoding = encode_examples(examples, tokenizer, metadata["max_seq_length"],
                               metadata["entity_tokens"], None, progress)
    logits = predict_logits(model, encoding.encoded, batch_size, metadata["max_seq_length"],
                            tokenizer.pad_id, progress)
    predicted = [labels[int(i)] for i in np.argmax(logits, axis=-1)]
    predictions = []
    for index, (example, relation, values) in enumerate(zip(examples, predicted, logits)):
        shifted = np.exp(values - values.max())
        row = {"index": index, "id": example.id, "relation": relation,
               "probability": round(float(shifted.max() / shifted.sum()), 6)}
        if example.relation is not None:
            row["gold"] = example.relation
        predictions.append(row)
    negative = metadata["negative_label"]
    metrics: dict[str, Any] = {"file": os.path.abspath(path), "examples": len(examples),
                               "truncated": encoding.truncated,
                               "markers_lost": encoding.markers_lost}
    if encoding.unknown_types:
        metrics["unknown_entity_markers"] = dict(sorted(encoding.unknown_types.items()))
    scored = [(e.relation, p) for e, p in zip(examples, predicted) if e.relation is not None]
    if scored:
        gold = [g for g, _ in scored]
        metrics.update(tacred_scores(gold, [p for _, p in scored], negative))
        metrics["baseline"] = {"name": f"always {negative}",
                               **{key: tacred_scores(gold, [negative] * len(gold),
                                                     negative)[key]
                                  for key in ("f1", "accuracy")}}
        unseen = collections.Counter(g for g in gold if g not in labels)
        if unseen:
            metrics["unseen_relations"] = dict(sorted(unseen.items()))
            metrics["note"] = ("relations never seen in training count as gold relations "
                               "the model cannot predict")
    return metrics, predictions


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, **DEFAULTS)
    parser.add_argument_group("relation extraction").add_argument(
        "--negative-label", default=NEGATIVE_LABEL,
        help="the relation that means 'none', left out of P/R/F1 (default: %(default)s)")


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    settings, tokenizer = start_finetuning(args)
    examples = read_examples(settings.train_file, require_relation=True)
    if settings.max_train_examples:
        examples = examples[:settings.max_train_examples]
    labels = sorted({e.relation for e in examples})
    if len(labels) < 2:
        raise input_error(settings.train_file, None,
                          f"relation extraction needs at least two relations, found {labels}")
    entity_tokens = entity_marker_mapping(examples, tokenizer.vocabulary)
    encoding = encode_examples(examples, tokenizer, settings.max_seq_length, entity_tokens,
                               {label: index for index, label in enumerate(labels)},
                               settings.progress)
    encoded = encoding.encoded
    model, run = train_model(
        settings, lambda encoder: SpanBertClassifier(encoder, num_labels=len(labels)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        lambda batch_size, context: training_batches(
            encoded, batch_size, settings.max_seq_length, tokenizer.pad_id, settings.seed,
            context),
        num_examples=len(encoded))
    metadata = {"task": NAME, "labels": labels, "max_seq_length": settings.max_seq_length,
                "lowercase": tokenizer.lowercase, "entity_tokens": entity_tokens,
                "negative_label": args.negative_label}
    counts = collections.Counter(e.relation for e in examples)
    results: dict[str, Any] = {
        "task": NAME,
        "train": {"file": os.path.abspath(settings.train_file), "examples": len(examples),
                  "truncated": encoding.truncated, "markers_lost": encoding.markers_lost,
                  "relation_counts": dict(sorted(counts.items()))},
        "training": {**run.record(), "settings": settings.record()},
    }
    return finish_finetuning(settings, model, tokenizer, metadata, results, evaluate_file)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    return run_evaluation(args, NAME, evaluate_file)
