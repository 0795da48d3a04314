"""Per-example Python/numpy span masking, the way the official SpanBERT code does it.

This is the peer (b) of `bench_masking.py` and the distributional reference of
`tests/test_span_masking.py`. It follows `PairWithSpanMaskingScheme.mask` and
`span_masking` of facebookresearch/SpanBERT (pretraining/fairseq/data/masking.py),
rewritten here (not copied): per segment, a Python loop draws (span length, anchor)
pairs with `numpy.random`, grows spans word by word over a `set` of masked positions
until ceil(mask_rate * n) tokens are masked, merges touching spans, replaces each merged
span 80/10/10 and collects SBO pairs for spans that do not touch the ends of the text.
It then lays the result out like `pipelines.span_masking.SpanMasker` (fixed shapes),
so that both sides of the benchmark produce the same example.

Differences from the fairseq code, none of which changes the distribution: the text
is the segment between [CLS] and [SEP] of a record (fairseq masks the block before
adding them), and random replacements are drawn uniformly from `random_ids` (fairseq
draws from the corpus token stream).
"""

from __future__ import annotations

import math

import numpy as np


def official_style_mask(input_ids: np.ndarray, word_starts: np.ndarray, rng: np.random.RandomState,
                        mask_id: int, random_ids: np.ndarray, mask_rate: float = 0.15,
                        geometric_p: float = 0.2, min_span: int = 1, max_span: int = 10,
                        max_targets: int = 15) -> dict:
    """Masks one `[CLS] text [SEP]` segment; returns positions, spans and new ids.

    Returns a dict with `input_ids` (masked copy), `positions` (sorted masked positions
    in the segment), `spans` (merged [start, end] in the segment, inclusive) and
    `pairs` (the spans with SBO targets: [start - 1, end + 1, target ids...]).
    """
    text = [int(token) for token in input_ids[1:-1]]
    n = len(text)
    # Python lists, as the official code's word-piece map: numpy scalars are slow in loops.
    is_start = [bool(flag) for flag in word_starts[1:-1]]
    lengths = list(range(min_span, max_span + 1))
    weights = [geometric_p * (1 - geometric_p) ** (i - min_span) for i in lengths]
    distribution = [w / sum(weights) for w in weights]
    budget = math.ceil(n * mask_rate)
    masked: set[int] = set()
    spans: list[list[int]] = []

    def word_end(position: int) -> int:
        position += 1
        while position < n and not is_start[position]:
            position += 1
        return position

    while len(masked) < budget:
        span_words = rng.choice(lengths, p=distribution)
        anchor = rng.choice(n)
        if anchor in masked:
            continue
        left = anchor
        while left > 0 and not is_start[left]:
            left -= 1
        spans.append([left, left])
        right, words = left, 0
        while words < span_words and right < n and len(masked) < budget:
            left_of_word, right = right, word_end(right)
            words += 1
            for i in range(left_of_word, right):
                if len(masked) >= budget:
                    break
                masked.add(i)
                spans[-1][1] = i

    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and merged[-1][1] + 1 >= start:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])

    output = np.array(text, copy=True)
    pairs = []
    for start, end in merged:
        if start > 0 and end < n - 1:
            pairs.append([start - 1, end + 1] + text[start:end + 1])
        draw = rng.random_sample()
        for i in range(start, end + 1):
            if draw < 0.8:
                output[i] = mask_id
            elif draw < 0.9:
                output[i] = random_ids[rng.randint(len(random_ids))]
    pairs = [pair[:max_targets + 2] for pair in pairs]
    # Back to segment coordinates ([CLS] is position 0).
    return {
        "input_ids": np.concatenate([[input_ids[0]], output, [input_ids[-1]]]),
        "positions": np.array(sorted(masked), dtype=np.int64) + 1,
        "spans": [[start + 1, end + 1] for start, end in merged],
        "pairs": [[pair[0] + 1, pair[1] + 1] + pair[2:] for pair in pairs],
    }


def fixed_shape_example(masked: dict, original_ids: np.ndarray, max_seq_length: int,
                        num_predictions: int, num_spans: int, max_targets: int) -> dict:
    """Lays one `official_style_mask` result out as the DESIGN.md section 4 example."""
    length = len(original_ids)
    example = {
        "input_ids": np.zeros(max_seq_length, np.int32),
        "input_mask": np.zeros(max_seq_length, np.int32),
        "segment_ids": np.zeros(max_seq_length, np.int32),
        "masked_lm_positions": np.zeros(num_predictions, np.int32),
        "masked_lm_ids": np.zeros(num_predictions, np.int32),
        "masked_lm_weights": np.zeros(num_predictions, np.float32),
        "span_boundaries": np.zeros((num_spans, 2), np.int32),
        "span_target_positions": np.zeros((num_spans, max_targets), np.int32),
        "span_target_ids": np.zeros((num_spans, max_targets), np.int32),
        "span_target_weights": np.zeros((num_spans, max_targets), np.float32),
    }
    example["input_ids"][:length] = masked["input_ids"]
    example["input_mask"][:length] = 1
    positions = masked["positions"][:num_predictions]
    example["masked_lm_positions"][:len(positions)] = positions
    example["masked_lm_ids"][:len(positions)] = original_ids[positions]
    example["masked_lm_weights"][:len(positions)] = 1.0
    for slot, pair in enumerate(masked["pairs"][:num_spans]):
        targets = pair[2:]
        example["span_boundaries"][slot] = pair[:2]
        first = pair[0] + 1
        example["span_target_positions"][slot, :len(targets)] = first + np.arange(len(targets))
        example["span_target_ids"][slot, :len(targets)] = targets
        example["span_target_weights"][slot, :len(targets)] = 1.0
    return example
