"""Raw text -> model features, in-graph: the preprocessing every export shares.

`TextPreprocessor` tokenizes with `SpanBertTokenizer` (TF Text FastBertNormalizer +
FastWordpieceTokenizer), truncates, adds [CLS]/[SEP] and packs one text or a text pair
into dense `input_ids`, `input_mask`, `segment_ids` [batch, length] plus each token's
character offsets. The same code runs in the SavedModel exports and inside the TFLite
models, so it is written with dense tensors only (DESIGN.md section 2):

* ragged tokens become dense with `RaggedTensor.to_tensor(shape=...)`, which crops:
  truncation is free, and TFLite runs it with TF Text's `RaggedTensorToTensor` kernel;
* [CLS]/[SEP] placement, masks and segment ids are arithmetic on positions and lengths
  (no ragged concat/slicing, which lowers to RaggedRange/RaggedGather: no TFLite kernel);
* text pairs are trimmed with closed-form "longest first" arithmetic (the fine-tuning
  features' rule, so a served model sees what it was trained on), not
  `RoundRobinTrimmer`, whose `TFText>RoundRobinTrim` op TF Serving 2.13-2.19 lack.

Lengths: the batch is padded to its longest packed sequence (not to `max_seq_length`:
a 24-token request costs 24 positions), or to `max_seq_length` with
`pad_to_max_length=True`. Inputs longer than `max_seq_length` are truncated, never
rejected; `windows` splits a long context into overlapping windows for QA instead.

Invalid UTF-8: with `replace_invalid_utf8=True` (the SavedModel default) each invalid
byte sequence is replaced by U+FFFD before tokenization (`tf.strings.unicode_transcode`,
errors="replace"); BERT normalisation then drops U+FFFD, like Hugging Face's
`BertNormalizer` on text decoded with `errors="replace"`. Character offsets index that
repaired text. TFLite has no kernel for the transcode op, so the TFLite models pass
bytes to the normaliser unchanged (see serving/tflite.py).

Offsets: `token_starts`/`token_ends` are character (code point) offsets into the text
each token came from (for the second segment of a pair, into the second text), so
`text[start:end]` is the token's original text. [CLS], [SEP] and padding get (0, 0),
as in Hugging Face's `offset_mapping`.

Example:
    >>> from spanbert_tf import SpanBertTokenizer
    >>> tokenizer = SpanBertTokenizer(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "span", "##bert", "is", "fun"],
    ...     lowercase=True)
    >>> features = TextPreprocessor(tokenizer, max_seq_length=8)(["SpanBERT is fun", ""])
    >>> features["input_ids"].numpy().tolist()
    [[2, 5, 6, 7, 8, 3], [2, 3, 0, 0, 0, 0]]
    >>> features["token_starts"].numpy()[0].tolist(), features["token_ends"].numpy()[0].tolist()
    ([0, 0, 4, 9, 12, 0], [0, 4, 8, 11, 15, 0])
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from spanbert_tf.tokenizer import SpanBertTokenizer

REPLACEMENT_CHARACTER = 0xFFFD
FEATURE_NAMES = ("input_ids", "input_mask", "segment_ids")
OFFSET_NAMES = ("token_starts", "token_ends")


class Segment(NamedTuple):
    """One text's tokens, dense [batch, width], and how many of them are kept [batch]."""

    ids: tf.Tensor
    starts: tf.Tensor | None
    ends: tf.Tensor | None
    lengths: tf.Tensor


def longest_first_lengths(length_a, length_b, budget):
    """Kept token counts of a pair under "longest first" truncation, as the fine-tuning
    features make them (`pipelines.finetune.features.truncate_pair`).

    That rule removes one token at a time from the end of the longer sequence (the first
    one on a tie) until `length_a + length_b <= budget`. In closed form the first keeps
    `min(length_a, max(budget - length_b, budget // 2))` and the second the rest.
    (Original BERT and Hugging Face's slow tokenizers break ties towards the second
    sequence, its fast tokenizers differently again; counts differ only when both
    sequences are longer than half the budget.)
    """
    length_a = tf.convert_to_tensor(length_a)
    length_b = tf.convert_to_tensor(length_b)
    budget = tf.cast(budget, length_a.dtype)
    kept_a = tf.minimum(length_a, tf.maximum(budget - length_b, budget // 2))
    fits = length_a + length_b <= budget
    return tf.where(fits, length_a, kept_a), tf.where(fits, length_b, budget - kept_a)


def _take(values, current, inside, positions):
    """`values` gathered at `positions` (per row) where `inside`, else `current`."""
    return tf.where(inside, tf.gather(values, positions, batch_dims=1), current)


class TextPreprocessor(tf.Module):
    """Tokenizes and packs texts or text pairs into BERT inputs, inside the graph.

    Args:
        tokenizer: the model's `SpanBertTokenizer` (its vocab file becomes an asset of
            any SavedModel that tracks this module).
        max_seq_length: longest packed sequence, [CLS] and [SEP]s included (>= 3).
        pad_to_max_length: pad every batch to `max_seq_length` instead of to its
            longest sequence (fixed shapes, e.g. for XLA).
        replace_invalid_utf8: replace invalid UTF-8 with U+FFFD first (see module doc).
        name: module name.

    Calling the module with a 1-D string tensor (and optionally a second one for
    pairs) returns a dict of int32 [batch, length] tensors: `input_ids`,
    `input_mask`, `segment_ids`, and, with `with_offsets=True`, int32 `token_starts`,
    `token_ends`.
    """

    def __init__(
        self,
        tokenizer: SpanBertTokenizer,
        max_seq_length: int,
        pad_to_max_length: bool = False,
        replace_invalid_utf8: bool = True,
        name: str | None = None,
    ):
        super().__init__(name=name)
        if int(max_seq_length) < 3:
            raise ValueError(f"max_seq_length must be at least 3 ([CLS] x [SEP] y [SEP]), "
                             f"got {max_seq_length}")
        self.tokenizer = tokenizer
        self.max_seq_length = int(max_seq_length)
        self.pad_to_max_length = bool(pad_to_max_length)
        self.replace_invalid_utf8 = bool(replace_invalid_utf8)
        self.cls_id = tokenizer.cls_id
        self.sep_id = tokenizer.sep_id
        self.pad_id = tokenizer.pad_id

    def clean(self, texts) -> tf.Tensor:
        """The texts as a 1-D string tensor, invalid UTF-8 replaced (if configured)."""
        texts = tf.convert_to_tensor(texts, tf.string)
        if texts.shape.rank == 0:
            texts = texts[tf.newaxis]
        if texts.shape.rank != 1:
            raise ValueError(f"texts must be a 1-D batch of strings, got shape {texts.shape}")
        if self.replace_invalid_utf8:
            texts = tf.strings.unicode_transcode(
                texts, input_encoding="UTF-8", output_encoding="UTF-8", errors="replace",
                replacement_char=REPLACEMENT_CHARACTER)
        return texts

    def tokenize(self, texts, with_offsets: bool = False):
        """Ragged token ids (and char offsets) of `texts`, without special tokens.

        Returns (ids, starts, ends); starts/ends are None without `with_offsets`.
        """
        texts = self.clean(texts)
        if not with_offsets:
            return self.tokenizer.tokenize(texts), None, None
        ids, starts, ends = self.tokenizer.tokenize_with_offsets(texts, offset_unit="char")
        return ids, starts, ends

    def __call__(self, texts, texts_pair=None, with_offsets: bool = False) -> dict:
        segments = [self.tokenize(texts, with_offsets)]
        if texts_pair is not None:
            segments.append(self.tokenize(texts_pair, with_offsets))
        return self.pack(segments)

    def pack(self, segments) -> dict:
        """Packs one or two tokenized segments (ragged ids, starts, ends) into features."""
        lengths = [tf.cast(ids.row_lengths(), tf.int32) for ids, _, _ in segments]
        budget = self.max_seq_length - 1 - len(segments)
        if len(segments) == 1:
            kept = [tf.minimum(lengths[0], budget)]
        elif len(segments) == 2:
            kept = list(longest_first_lengths(lengths[0], lengths[1], budget))
        else:
            raise ValueError(f"pack takes one or two segments, got {len(segments)}")
        dense = [self.densify(segment, count) for segment, count in zip(segments, kept)]
        return self.assemble(dense)

    def densify(self, segment, kept) -> Segment:
        """Crops ragged tokens to the batch's longest kept row (at least 1 column, so
        that gathers from an all-empty batch stay in range)."""
        ids, starts, ends = segment
        width = tf.maximum(tf.reduce_max(tf.concat([kept, [1]], 0)), 1)
        shape = tf.stack([tf.shape(kept)[0], width])

        def crop(values, default):
            if values is None:
                return None
            return tf.cast(values, tf.int32).to_tensor(default_value=default, shape=shape)

        return Segment(crop(ids, self.pad_id), crop(starts, 0), crop(ends, 0), kept)

    def assemble(self, segments: list[Segment]) -> dict:
        """[CLS] a [SEP] (b [SEP]) laid out by position arithmetic, padded densely."""
        total = 1 + sum(segment.lengths + 1 for segment in segments)
        if self.pad_to_max_length:
            width = tf.constant(self.max_seq_length, tf.int32)
        else:
            width = tf.reduce_max(tf.concat([total, [1 + len(segments)]], 0))
        positions = tf.range(width)[tf.newaxis, :]
        batch = tf.shape(total)[0]
        zeros = tf.zeros(tf.stack([batch, width]), tf.int32)
        input_ids = tf.where(positions == 0, self.cls_id, zeros + self.pad_id)
        segment_ids = zeros
        with_offsets = segments[0].starts is not None
        starts, ends = zeros, zeros
        offset = tf.ones_like(total)[:, tf.newaxis]
        for index, segment in enumerate(segments):
            local = positions - offset
            count = segment.lengths[:, tf.newaxis]
            inside = (local >= 0) & (local < count)
            gather_at = tf.clip_by_value(local, 0, tf.shape(segment.ids)[1] - 1)
            input_ids = _take(segment.ids, input_ids, inside, gather_at)
            input_ids = tf.where(local == count, self.sep_id, input_ids)
            if index:
                segment_ids = tf.where((local >= 0) & (local <= count), index, segment_ids)
            if with_offsets:
                starts = _take(segment.starts, starts, inside, gather_at)
                ends = _take(segment.ends, ends, inside, gather_at)
            offset = offset + count + 1
        input_mask = tf.cast(positions < offset, tf.int32)
        features = {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids}
        if with_offsets:
            features.update(token_starts=starts, token_ends=ends)
        return features

    def windows(self, questions, contexts, max_query_length: int, doc_stride: int) -> dict:
        """QA features: `[CLS] question [SEP] context-window [SEP]`, one row per window.

        The question is cut to `max_query_length` tokens; the context is split into
        windows of `max_seq_length - len(question) - 3` tokens starting every
        `min(window, doc_stride)` tokens, the official SQuAD split
        (`pipelines.finetune.qa_features.window_starts`), so every context token is in a
        window and nothing is rejected for length. Returns the packed features of all
        windows ([windows, length], offsets into the context) plus int32
        `window_example` (the example of each window), `window_start` (its first
        context token), `window_index`, `num_windows` [batch] and `context_offset`
        (position of the window's first context token, = question length + 2).
        """
        q_ids, q_starts, q_ends = self.tokenize(questions, with_offsets=True)
        c_ids, c_starts, c_ends = self.tokenize(contexts, with_offsets=True)
        q_kept = tf.minimum(tf.cast(q_ids.row_lengths(), tf.int32), max_query_length)
        question = self.densify((q_ids, q_starts, q_ends), q_kept)
        c_lengths = tf.cast(c_ids.row_lengths(), tf.int32)
        context = self.densify((c_ids, c_starts, c_ends), c_lengths)
        window = self.max_seq_length - 3 - q_kept  # [batch], > 0 by construction
        step = tf.minimum(window, doc_stride)
        extra = tf.maximum(c_lengths - window, 0)
        num_windows = 1 + (extra + step - 1) // step
        batch = tf.shape(num_windows)[0]
        window_example = tf.repeat(tf.range(batch), num_windows)
        first_window = tf.cumsum(num_windows, exclusive=True)
        window_index = tf.range(tf.shape(window_example)[0]) - tf.gather(first_window,
                                                                          window_example)
        window_start = window_index * tf.gather(step, window_example)
        window_length = tf.minimum(tf.gather(window, window_example),
                                   tf.gather(c_lengths, window_example) - window_start)
        width = tf.maximum(tf.reduce_max(tf.concat([window_length, [1]], 0)), 1)
        columns = window_start[:, tf.newaxis] + tf.range(width)[tf.newaxis, :]
        columns = tf.clip_by_value(columns, 0, tf.shape(context.ids)[1] - 1)

        def rows(values, example_values):
            return tf.gather(tf.gather(values, window_example), example_values, batch_dims=1)

        context_windows = Segment(rows(context.ids, columns), rows(context.starts, columns),
                                  rows(context.ends, columns), window_length)
        question_rows = Segment(*(tf.gather(v, window_example) for v in question[:3]),
                                tf.gather(q_kept, window_example))
        features = self.assemble([question_rows, context_windows])
        features.update(window_example=window_example, window_start=window_start,
                        window_index=window_index, num_windows=num_windows,
                        context_offset=tf.gather(q_kept, window_example) + 2)
        return features
