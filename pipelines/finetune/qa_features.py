"""QA features: `[CLS] question [SEP] context-window [SEP]` with span labels.

A context longer than the window is split into overlapping windows (BERT/SpanBERT's
"document stride"): each window holds at most `max_seq_length - len(question) - 3`
context tokens and starts `doc_stride` tokens after the previous one, so every context
token is in at least one window. A token in several windows is "max-context" in the
one where it has the most context on both sides (the official
`_check_is_max_context` score: min(left, right) + 0.01 * window length); decoding
starts answers only at max-context tokens, so each span is scored where the model saw
it best.

Every position carries the character span of its token in the ORIGINAL context
(`token_starts`, `token_ends`, from `SpanBertTokenizer.tokenize_with_offsets(...,
offset_unit="char")`; -1 for the question and special tokens), so a predicted span maps
back to `context[token_starts[s]:token_ends[e]]`: original casing, accents and spacing.

Labels: the positions of the first and last token overlapping the first aligned
answer; (0, 0), i.e. [CLS], when the question has no answer (SQuAD 2.0) or the answer
is not entirely inside the window (as in the official code).

Segment ids: 0 for [CLS] question [SEP], 1 for the context and the final [SEP].

Example:
    >>> from spanbert_tf import SpanBertTokenizer
    >>> from pipelines.finetune.qa_data import Answer, QAExample
    >>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "who", "won", "?",
    ...          "the", "broncos", "beat", "panthers", "."]
    >>> tokenizer = SpanBertTokenizer(vocab, lowercase=True)
    >>> context = "The Broncos beat the Panthers."
    >>> example = QAExample("q1", "Who won?", context, 0, [Answer("Broncos", 4)])
    >>> features, _ = build_features([example], tokenizer, QAFeatureOptions(max_seq_length=12))
    >>> f = features[0]
    >>> f.input_ids.tolist(), f.start_position, f.end_position
    ([2, 5, 6, 7, 3, 8, 9, 10, 8, 11, 12, 3], 6, 6)
    >>> context[f.token_starts[6]:f.token_ends[6]]
    'Broncos'
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from pipelines.bucketing import bucket_by_length, choose_boundaries
from pipelines.finetune.qa_data import QAExample
from spanbert_tf.tokenizer import SpanBertTokenizer

LABEL_KEYS = ("start_positions", "end_positions")
MODEL_KEYS = ("input_ids", "input_mask", "segment_ids")
# Texts per tokenizer call: big enough to amortise the op overhead, small enough for RAM.
TOKENIZE_CHUNK = 512


@dataclasses.dataclass(frozen=True)
class QAFeatureOptions:
    """Window settings (defaults: BERT/SpanBERT's SQuAD settings, with seq 384).

    Attributes:
        max_seq_length: tokens per window, [CLS]/[SEP] included (official SpanBERT: 512).
        doc_stride: context tokens between the starts of consecutive windows.
        max_query_length: questions are cut to this many tokens, and always to
            `max_seq_length - 4` so that a window holds at least one context token.
    """

    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64

    def __post_init__(self) -> None:
        for name in ("max_seq_length", "doc_stride", "max_query_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_seq_length < 5:
            raise ValueError(f"max_seq_length must be at least 5 ([CLS] question [SEP] "
                             f"context [SEP]), got {self.max_seq_length}")

    @property
    def query_limit(self) -> int:
        """Tokens a question keeps: leaves room for [CLS], two [SEP] and one context token."""
        return min(self.max_query_length, self.max_seq_length - 4)


@dataclasses.dataclass
class QAFeature:
    """One window of one example (arrays are per position of `input_ids`)."""

    example_index: int
    window_index: int
    input_ids: np.ndarray  # int32
    segment_ids: np.ndarray  # int32
    token_starts: np.ndarray  # int64 char offset in the context; -1 outside the context
    token_ends: np.ndarray  # int64, exclusive
    max_context: np.ndarray  # bool: this window is the token's best (context tokens only)
    start_position: int = 0
    end_position: int = 0

    @property
    def length(self) -> int:
        return len(self.input_ids)


@dataclasses.dataclass
class FeatureSummary:
    """Counts of one `build_features` run."""

    examples: int = 0
    features: int = 0
    split_examples: int = 0  # examples whose context needed more than one window
    truncated_questions: int = 0
    answers_outside_window: int = 0  # labelled windows whose answer is elsewhere (-> CLS)
    unlabelled_examples: int = 0  # training only: no aligned answer, left out

    def describe(self) -> str:
        return (f"{self.features} windows from {self.examples} questions "
                f"({self.split_examples} questions on contexts split into several windows, "
                f"{self.truncated_questions} "
                f"questions truncated"
                + (f", {self.unlabelled_examples} without label skipped"
                   if self.unlabelled_examples else "") + ")")


@dataclasses.dataclass
class _Tokens:
    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def tokenize_texts(tokenizer: SpanBertTokenizer, texts: Sequence[str],
                   progress: bool = False, description: str = "tokenizing") -> list[_Tokens]:
    """Token ids and character offsets of each text (batched TF Text calls)."""
    result: list[_Tokens] = []
    chunks = range(0, len(texts), TOKENIZE_CHUNK)
    for begin in tqdm(chunks, desc=description, disable=not progress or len(chunks) < 2):
        ids, starts, ends = tokenizer.tokenize_with_offsets(
            list(texts[begin:begin + TOKENIZE_CHUNK]), offset_unit="char")
        splits = ids.row_splits.numpy()
        flat = (ids.flat_values.numpy(), starts.flat_values.numpy(),
                ends.flat_values.numpy())
        for row in range(len(splits) - 1):
            a, b = splits[row], splits[row + 1]
            result.append(_Tokens(flat[0][a:b].astype(np.int32), flat[1][a:b], flat[2][a:b]))
    return result


def window_starts(num_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of each context window, as the official SQuAD code splits."""
    spans, start = [], 0
    while True:
        length = min(num_tokens - start, window)
        spans.append((start, length))
        if start + length >= num_tokens:
            return spans
        start += min(length, stride)


def max_context_windows(num_tokens: int, spans: list[tuple[int, int]]) -> np.ndarray:
    """For each context token, the index of the window where it has the most context."""
    best_score = np.full(num_tokens, -np.inf)
    best = np.zeros(num_tokens, np.int64)
    for index, (start, length) in enumerate(spans):
        positions = np.arange(start, start + length)
        score = np.minimum(positions - start, start + length - 1 - positions) + 0.01 * length
        better = score > best_score[positions]  # strict: the first best window wins
        best_score[positions[better]] = score[better]
        best[positions[better]] = index
    return best


def answer_token_span(tokens: _Tokens, start: int, end: int) -> tuple[int, int] | None:
    """First and last context token overlapping the characters [start, end)."""
    overlapping = np.nonzero((tokens.ends > start) & (tokens.starts < end)
                             & (tokens.ends > tokens.starts))[0]
    if not len(overlapping):
        return None
    return int(overlapping[0]), int(overlapping[-1])


def build_features(
    examples: Sequence[QAExample],
    tokenizer: SpanBertTokenizer,
    options: QAFeatureOptions = QAFeatureOptions(),
    training: bool = False,
    progress: bool = False,
) -> tuple[list[QAFeature], FeatureSummary]:
    """Windows of every example. With `training`, examples without a label (answerable
    but no aligned answer) are left out and counted."""
    summary = FeatureSummary(examples=len(examples))
    context_texts: dict[int, str] = {}
    for example in examples:
        context_texts.setdefault(example.context_index, example.context)
    context_order = sorted(context_texts)
    context_tokens = dict(zip(context_order, tokenize_texts(
        tokenizer, [context_texts[i] for i in context_order], progress, "tokenizing contexts")))
    question_tokens = tokenize_texts(tokenizer, [e.question for e in examples], progress,
                                     "tokenizing questions")
    features: list[QAFeature] = []
    for index, example in enumerate(tqdm(examples, desc="building windows",
                                         disable=not progress)):
        if training and not example.trainable:
            summary.unlabelled_examples += 1
            continue
        query = question_tokens[index].ids
        if len(query) > options.query_limit:
            summary.truncated_questions += 1
            query = query[:options.query_limit]
        new = example_features(index, example, query, context_tokens[example.context_index],
                               tokenizer, options, summary)
        summary.split_examples += len(new) > 1
        features.extend(new)
    summary.features = len(features)
    return features, summary


def example_features(example_index: int, example: QAExample, query: np.ndarray,
                     context: _Tokens, tokenizer: SpanBertTokenizer,
                     options: QAFeatureOptions, summary: FeatureSummary) -> list[QAFeature]:
    """The windows of one example."""
    window = options.max_seq_length - len(query) - 3
    spans = window_starts(len(context.ids), window, options.doc_stride)
    best_window = max_context_windows(len(context.ids), spans)
    answer = None
    if example.answers and not example.is_impossible:
        answer = answer_token_span(context, example.answers[0].start, example.answers[0].end)
    prefix = np.concatenate([[tokenizer.cls_id], query, [tokenizer.sep_id]]).astype(np.int32)
    offset = len(prefix)  # position of the first context token
    features = []
    for window_index, (start, length) in enumerate(spans):
        stop = start + length
        input_ids = np.concatenate([prefix, context.ids[start:stop], [tokenizer.sep_id]])
        size = len(input_ids)
        segment_ids = np.zeros(size, np.int32)
        segment_ids[offset:] = 1
        token_starts = np.full(size, -1, np.int64)
        token_ends = np.full(size, -1, np.int64)
        token_starts[offset:offset + length] = context.starts[start:stop]
        token_ends[offset:offset + length] = context.ends[start:stop]
        max_context = np.zeros(size, bool)
        max_context[offset:offset + length] = best_window[start:stop] == window_index
        feature = QAFeature(example_index, window_index, input_ids.astype(np.int32),
                            segment_ids, token_starts, token_ends, max_context)
        if answer is not None:
            if start <= answer[0] and answer[1] < stop:
                feature.start_position = offset + answer[0] - start
                feature.end_position = offset + answer[1] - start
            else:
                summary.answers_outside_window += 1
        features.append(feature)
    return features


def feature_dataset(features: Sequence[QAFeature], training: bool = False,
                    indices: tf.data.Dataset | None = None) -> tf.data.Dataset:
    """One dict per feature: `input_ids`, `input_mask`, `segment_ids` [length],
    `feature_index`, and with `training` the scalar labels `start_positions`,
    `end_positions`. Unbatched; see `batched_dataset`.

    The features are stored as flat arrays with row offsets, and an element is sliced
    out of them by index, so shuffling moves indices, not arrays. `indices` (a dataset
    of int64 feature indices, e.g. shuffled or sharded) sets the order; default all.
    """
    if not features:
        raise ValueError("no QA features to make a dataset from")
    splits = tf.constant(np.concatenate([[0], np.cumsum([f.length for f in features])]),
                         tf.int64)
    ids = tf.constant(np.concatenate([f.input_ids for f in features]), tf.int32)
    segments = tf.constant(np.concatenate([f.segment_ids for f in features]), tf.int32)
    starts = tf.constant([f.start_position for f in features], tf.int32)
    ends = tf.constant([f.end_position for f in features], tf.int32)

    def element(index):
        begin, end = splits[index], splits[index + 1]
        row = {"input_ids": ids[begin:end], "input_mask": tf.ones([end - begin], tf.int32),
               "segment_ids": segments[begin:end], "feature_index": index}
        if training:
            row["start_positions"] = starts[index]
            row["end_positions"] = ends[index]
        return row

    if indices is None:
        indices = tf.data.Dataset.range(len(features))
    return indices.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def to_model_inputs(element: dict[str, tf.Tensor]):
    """Splits a batched feature dict into (x, y) for `fit`; y keys are the model outputs."""
    x = {key: element[key] for key in MODEL_KEYS}
    if "start_positions" not in element:
        return x
    return x, {"start_logits": element["start_positions"],
               "end_logits": element["end_positions"]}


def batched_dataset(
    features: Sequence[QAFeature],
    batch_size: int,
    training: bool = False,
    seed: int | None = None,
    shuffle_buffer: int = 10_000,
    num_buckets: int = 4,
    max_seq_length: int | None = None,
    drop_remainder: bool = False,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Length-bucketed batches (see `pipelines.bucketing`).

    Training batches are shuffled (with `seed`), repeat forever and come as (x, y) for
    `fit`; evaluation batches keep `feature_index` (bucketing reorders them) and run once.
    With an `input_context` of several input pipelines, each reads its own shard.
    """
    lengths = [f.length for f in features]
    indices = tf.data.Dataset.range(len(features))
    if input_context is not None and input_context.num_input_pipelines > 1:
        indices = indices.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
    if training:
        indices = indices.shuffle(min(shuffle_buffer, len(features)), seed=seed,
                                  reshuffle_each_iteration=True).repeat()
    dataset = feature_dataset(features, training=training, indices=indices)
    dataset = bucket_by_length(
        dataset, batch_size, key="input_ids",
        boundaries=_boundaries(lengths, num_buckets, max_seq_length),
        drop_remainder=drop_remainder)
    if training:
        dataset = dataset.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _boundaries(lengths: Iterable[int], num_buckets: int, max_length: int | None) -> list[int]:
    lengths = list(lengths)
    return choose_boundaries(lengths, num_buckets=num_buckets,
                             max_length=max_length or max(lengths))
