"""Named entity recognition: CoNLL or JSONL BIO tags -> SpanBertTokenClassifier.

Data:
- CoNLL style: one `token<TAB>tag` per line (whitespace-separated also works; the first
  field is the token, the last the tag), a blank line between sentences, `-DOCSTART-`
  lines ignored. WNUT-17 and CoNLL-2003 files read as they are. For prediction only,
  a file may hold tokens without tags.
- JSON lines: `{"words": [...], "ner": [...]}` (also `tokens` / `tags` / `ner_tags`).
Tags are BIO (IOB2): `O`, `B-TYPE`, `I-TYPE`; anything else is an error naming the line.

Features: every word is tokenized on its own; its tag goes on its first sub-token and
the other pieces, [CLS], [SEP] and padding get -1 (ignored by the loss and the
metric). A sentence longer than the window is split between words into several rows,
so every word gets a prediction. A word that tokenizes to nothing becomes [UNK].

Metrics: entity-level precision, recall and F1 (seqeval, CoNLL evaluation rules, micro
average; per-type scores too), word-level tag accuracy, and the "O everywhere" baseline
(entity F1 0, its word accuracy). Tags seen only at evaluation are counted
(`unseen_tags`); seqeval scores them as entities the model cannot predict.

Predictions: per sentence the predicted tags and the entities, with character offsets
into the sentence written as its words joined by single spaces.

Example:
    >>> entity_spans(["Empire", "State", "Building", "=", "ESB"],
    ...              ["B-location", "I-location", "I-location", "O", "B-location"])
    [{'type': 'location', 'start': 0, 'end': 21, 'text': 'Empire State Building', \
'word_start': 0, 'word_end': 3}, {'type': 'location', 'start': 24, 'end': 27, \
'text': 'ESB', 'word_start': 4, 'word_end': 5}]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
from typing import Any, Sequence

import keras
import numpy as np

from pipelines.finetune.features import (IGNORED_LABEL, EncodedExamples,
                                         input_error, is_json_lines, read_json_lines,
                                         tokenize_texts, training_batches)
from pipelines.finetune.losses import (MaskedSparseCategoricalAccuracy,
                                       MaskedSparseCategoricalCrossentropy)
from pipelines.finetune.trainer import (add_training_arguments, finish_finetuning,
                                        predict_logits, run_evaluation, start_finetuning,
                                        train_model)
from spanbert_tf.models.token_classifier import SpanBertTokenClassifier

NAME = "ner"
HELP = ("named entity recognition (CoNLL token<TAB>tag or JSONL words/ner, BIO tags; "
        "entity-level F1)")
DEFAULTS = {"epochs": 3.0, "max_seq_length": 128}
WORD_FIELDS = ("words", "tokens")
TAG_FIELDS = ("ner", "tags", "ner_tags")
OUTSIDE = "O"


@dataclasses.dataclass
class Sentence:
    words: list[str]
    tags: list[str] | None
    line: int


# ---------------------------------------------------------------- reading

def check_tag(path: str, line: int, tag: str) -> str:
    if tag == OUTSIDE or (len(tag) > 2 and tag[:2] in ("B-", "I-")):
        return tag
    raise input_error(path, line, f"tag {tag!r} is not BIO (IOB2): expected O, B-TYPE or "
                                  f"I-TYPE")


def read_conll(path: str, require_tags: bool = True) -> list[Sentence]:
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str | None] = []
    start = 0

    def flush():
        if words:
            tagged = [tag for tag in tags if tag is not None]
            if tagged and len(tagged) != len(tags):
                raise input_error(path, start, "some tokens of this sentence have a tag and "
                                               "some do not")
            sentences.append(Sentence(list(words), list(tags) if tagged else None, start))
        words.clear()
        tags.clear()

    with open(path, encoding="utf-8-sig") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.startswith("-DOCSTART-"):
                flush()
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            fields = [field for field in fields if field != ""] or [line]
            if not words:
                start = number
            if len(fields) == 1:
                if require_tags:
                    raise input_error(path, number, "expected 'token<TAB>tag', found one "
                                                    "field")
                words.append(fields[0])
                tags.append(None)
                continue
            words.append(fields[0])
            tags.append(check_tag(path, number, fields[-1]))
    flush()
    return sentences


def read_json_sentences(path: str, require_tags: bool = True) -> list[Sentence]:
    sentences = []
    for number, record in read_json_lines(path):
        word_field = next((field for field in WORD_FIELDS if field in record), None)
        if word_field is None:
            raise input_error(path, number, f"missing field 'words' (or 'tokens'); found "
                                            f"{', '.join(sorted(record))}")
        words = record[word_field]
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise input_error(path, number, f"{word_field!r} must be a list of strings")
        tag_field = next((field for field in TAG_FIELDS if field in record), None)
        tags = None
        if tag_field is None:
            if require_tags:
                raise input_error(path, number, f"missing field 'ner' (or 'tags', "
                                                f"'ner_tags'); found {', '.join(sorted(record))}")
        else:
            tags = record[tag_field]
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise input_error(path, number, f"{tag_field!r} must be a list of tag "
                                                f"strings (O, B-TYPE, I-TYPE)")
            if len(tags) != len(words):
                raise input_error(path, number, f"{len(words)} words but {len(tags)} tags")
            tags = [check_tag(path, number, tag) for tag in tags]
        if words:
            sentences.append(Sentence(words, tags, number))
    return sentences


def read_sentences(path: str, require_tags: bool = True) -> list[Sentence]:
    """The sentences of a CoNLL or JSONL file (told apart by the file extension)."""
    sentences = (read_json_sentences(path, require_tags) if is_json_lines(path)
                 else read_conll(path, require_tags))
    if not sentences:
        raise input_error(path, None, "no sentences in the file")
    return sentences


def tag_vocabulary(sentences: Sequence[Sentence]) -> list[str]:
    """"O" first, then the other tags by entity type, B before I."""
    tags = {tag for sentence in sentences for tag in sentence.tags or ()}
    others = sorted(tags - {OUTSIDE}, key=lambda tag: (tag[2:], tag[:2]))
    return [OUTSIDE, *others]


# ---------------------------------------------------------------- features

@dataclasses.dataclass
class Encoding:
    """Rows of a sentence list: the model rows plus, per row, where its words are."""

    encoded: EncodedExamples
    first_word: list[int]          # index in its sentence of the row's first word
    word_positions: list[np.ndarray]  # token position of each word of the row
    split_sentences: int
    cut_words: int


def encode_sentences(sentences: Sequence[Sentence], tokenizer, max_seq_length: int,
                     tag_ids: dict[str, int] | None, progress: bool = False) -> Encoding:
    """Token rows with each word's label on its first sub-token (-1 elsewhere)."""
    budget = max_seq_length - 2
    if budget < 1:
        raise ValueError(f"max_seq_length {max_seq_length} leaves no room for words")
    pieces = tokenize_texts(tokenizer, [w for s in sentences for w in s.words], progress)
    unk = np.array([tokenizer.unk_id], np.int32)
    ids, segments, labels, source, first_word, positions = [], [], [], [], [], []
    split = cut = 0
    offset = 0
    for index, sentence in enumerate(sentences):
        word_pieces = [p if len(p) else unk for p in pieces[offset:offset + len(sentence.words)]]
        offset += len(sentence.words)
        rows = split_words(word_pieces, budget)
        split += len(rows) > 1
        for start, end in rows:
            row_ids, row_labels, row_positions = [tokenizer.cls_id], [IGNORED_LABEL], []
            for word in range(start, end):
                word_ids = word_pieces[word][:budget]
                cut += len(word_ids) < len(word_pieces[word])
                row_positions.append(len(row_ids))
                row_ids.extend(int(i) for i in word_ids)
                label = tag_ids[sentence.tags[word]] if tag_ids is not None else IGNORED_LABEL
                row_labels.extend([label] + [IGNORED_LABEL] * (len(word_ids) - 1))
            row_ids.append(tokenizer.sep_id)
            row_labels.append(IGNORED_LABEL)
            ids.append(np.array(row_ids, np.int32))
            segments.append(np.zeros(len(row_ids), np.int32))
            labels.append(np.array(row_labels, np.int32))
            source.append(index)
            first_word.append(start)
            positions.append(np.array(row_positions, np.int64))
    encoded = EncodedExamples(ids, segments, labels if tag_ids is not None else None,
                              np.array(source, np.int64))
    return Encoding(encoded, first_word, positions, split, cut)


def split_words(word_pieces: Sequence[np.ndarray], budget: int) -> list[tuple[int, int]]:
    """[start, end) word ranges whose pieces fit in `budget` tokens (a longer word is
    cut to the budget in its own row)."""
    rows, start, used = [], 0, 0
    for index, piece in enumerate(word_pieces):
        size = min(len(piece), budget)
        if used + size > budget and index > start:
            rows.append((start, index))
            start, used = index, 0
        used += size
    rows.append((start, len(word_pieces)))
    return rows


# ---------------------------------------------------------------- metrics / output

def entity_spans(words: Sequence[str], tags: Sequence[str]) -> list[dict[str, Any]]:
    """Entities of a tag sequence (seqeval's reading of BIO) with character offsets
    into `" ".join(words)`; `end` and `word_end` are exclusive."""
    from seqeval.metrics.sequence_labeling import get_entities

    starts = np.cumsum([0] + [len(word) + 1 for word in words[:-1]]).tolist()
    text = " ".join(words)
    spans = []
    for entity_type, first, last in get_entities(list(tags)):
        start, end = starts[first], starts[last] + len(words[last])
        spans.append({"type": entity_type, "start": start, "end": end,
                      "text": text[start:end], "word_start": first, "word_end": last + 1})
    return spans


def entity_metrics(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
                   ) -> dict[str, Any]:
    """seqeval entity P/R/F1 (micro), per type, and word-level tag accuracy."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    gold, predicted = [list(g) for g in gold], [list(p) for p in predicted]
    words = sum(len(g) for g in gold)
    correct = sum(g == p for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps))
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    return {
        "precision": float(precision_score(gold, predicted, zero_division=0)),
        "recall": float(recall_score(gold, predicted, zero_division=0)),
        "f1": float(f1_score(gold, predicted, zero_division=0)),
        "word_accuracy": correct / words if words else None,
        "gold_entities": int(sum(len(entity_spans(["x"] * len(g), g)) for g in gold)),
        "predicted_entities": int(sum(len(entity_spans(["x"] * len(p), p))
                                      for p in predicted)),
        "per_type": {name: {key: float(value) for key, value in scores.items()}
                     for name, scores in report.items() if "avg" not in name},
    }


def predicted_tags(encoding: Encoding, row_logits: Sequence[np.ndarray],
                   sentences: Sequence[Sentence], labels: Sequence[str]) -> list[list[str]]:
    tags = [[OUTSIDE] * len(sentence.words) for sentence in sentences]
    for row, logits in enumerate(row_logits):
        sentence = encoding.encoded.source[row]
        best = np.argmax(logits[encoding.word_positions[row]], axis=-1)
        for offset, label in enumerate(best):
            tags[sentence][encoding.first_word[row] + offset] = labels[int(label)]
    return tags


def evaluate_file(model: keras.Model, tokenizer, metadata: dict[str, Any], path: str,
                  batch_size: int, progress: bool = True
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    sentences = read_sentences(path, require_tags=False)
    labels = metadata["labels"]
    encoding = encode_sentences(sentences, tokenizer, metadata["max_seq_length"], None,
                                progress)
    row_logits = predict_logits(model, encoding.encoded, batch_size,
                                metadata["max_seq_length"], tokenizer.pad_id, progress)
    tags = predicted_tags(encoding, row_logits, sentences, labels)
    predictions = []
    for index, (sentence, sentence_tags) in enumerate(zip(sentences, tags)):
        row = {"index": index, "line": sentence.line, "text": " ".join(sentence.words),
               "tags": sentence_tags, "entities": entity_spans(sentence.words, sentence_tags)}
        if sentence.tags is not None:
            row["gold_entities"] = entity_spans(sentence.words, sentence.tags)
        predictions.append(row)
    metrics: dict[str, Any] = {"file": os.path.abspath(path), "sentences": len(sentences),
                               "words": sum(len(s.words) for s in sentences),
                               "split_sentences": encoding.split_sentences,
                               "cut_words": encoding.cut_words}
    labelled = [position for position, s in enumerate(sentences) if s.tags is not None]
    if labelled:
        gold = [sentences[position].tags for position in labelled]
        predicted = [tags[position] for position in labelled]
        metrics.update(entity_metrics(gold, predicted))
        outside = entity_metrics(gold, [[OUTSIDE] * len(g) for g in gold])
        metrics["baseline"] = {"name": "O everywhere", "f1": outside["f1"],
                               "word_accuracy": outside["word_accuracy"]}
        unseen = collections.Counter(tag for g in gold for tag in g if tag not in labels)
        if unseen:
            metrics["unseen_tags"] = dict(sorted(unseen.items()))
            metrics["note"] = ("tags never seen in training count as gold entities the "
                               "model cannot predict")
    return metrics, predictions


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, **DEFAULTS)


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    settings, tokenizer = start_finetuning(args)
    sentences = read_sentences(settings.train_file, require_tags=True)
    if settings.max_train_examples:
        sentences = sentences[:settings.max_train_examples]
    labels = tag_vocabulary(sentences)
    encoding = encode_sentences(sentences, tokenizer, settings.max_seq_length,
                                {tag: index for index, tag in enumerate(labels)},
                                settings.progress)
    encoded = encoding.encoded
    model, run = train_model(
        settings, lambda encoder: SpanBertTokenClassifier(encoder, num_labels=len(labels)),
        MaskedSparseCategoricalCrossentropy(), [MaskedSparseCategoricalAccuracy()],
        lambda batch_size, context: training_batches(
            encoded, batch_size, settings.max_seq_length, tokenizer.pad_id, settings.seed,
            context),
        num_examples=len(encoded))
    metadata = {"task": NAME, "labels": labels, "max_seq_length": settings.max_seq_length,
                "lowercase": tokenizer.lowercase, "scheme": "IOB2"}
    counts = collections.Counter(tag for s in sentences for tag in s.tags)
    results: dict[str, Any] = {
        "task": NAME,
        "train": {"file": os.path.abspath(settings.train_file), "sentences": len(sentences),
                  "rows": len(encoded), "split_sentences": encoding.split_sentences,
                  "cut_words": encoding.cut_words, "tag_counts": dict(sorted(counts.items()))},
        "training": {**run.record(), "settings": settings.record()},
    }
    return finish_finetuning(settings, model, tokenizer, metadata, results, evaluate_file)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    return run_evaluation(args, NAME, evaluate_file)
