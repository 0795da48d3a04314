"""Synthetic pretraining examples with known spans, for model unit tests."""

from __future__ import annotations

import numpy as np

SPANS_PER_EXAMPLE = ((3, 5), (10, 11), (20, 29))  # inclusive (start, end) token positions


def pretraining_batch(batch_size: int = 4, length: int = 32, vocab_size: int = 200,
                      num_spans: int = 6, num_targets: int = 15, seed: int = 0,
                      spans=SPANS_PER_EXAMPLE) -> dict[str, np.ndarray]:
    """A batch in the DESIGN.md section 4 layout: every span fully masked, SBO on all of it."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(5, vocab_size, (batch_size, length)).astype("int32")
    input_ids[:, 0], input_ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    positions = [p for start, end in spans for p in range(start, end + 1)]
    num_predictions = len(positions) + 2  # two padding slots with weight 0
    batch = {
        "input_ids": input_ids,
        "input_mask": np.ones((batch_size, length), "int32"),
        "segment_ids": np.zeros((batch_size, length), "int32"),
        "masked_lm_positions": np.zeros((batch_size, num_predictions), "int32"),
        "masked_lm_weights": np.zeros((batch_size, num_predictions), "float32"),
        "span_boundaries": np.zeros((batch_size, num_spans, 2), "int32"),
        "span_target_positions": np.zeros((batch_size, num_spans, num_targets), "int32"),
        "span_target_weights": np.zeros((batch_size, num_spans, num_targets), "float32"),
    }
    batch["masked_lm_positions"][:, :len(positions)] = positions
    batch["masked_lm_weights"][:, :len(positions)] = 1.0
    for index, (start, end) in enumerate(spans):
        count = min(end - start + 1, num_targets)
        batch["span_boundaries"][:, index] = (start - 1, end + 1)
        batch["span_target_positions"][:, index, :count] = np.arange(start, start + count)
        batch["span_target_weights"][:, index, :count] = 1.0
    batch["masked_lm_ids"] = np.take_along_axis(input_ids, batch["masked_lm_positions"], 1)
    flat_positions = batch["span_target_positions"].reshape(batch_size, -1)
    batch["span_target_ids"] = np.take_along_axis(input_ids, flat_positions, 1).reshape(
        batch["span_target_positions"].shape)
    return batch
