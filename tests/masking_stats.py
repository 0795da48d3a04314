"""Statistics of span-masked examples, computed from the examples alone (numpy).

The original tokens are recovered from the example (masked positions hold their
`masked_lm_ids`), word starts from the vocabulary (`##` continuations), so the same
function measures our pipeline and the official-style reference.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class MaskingStatistics:
    segments: int = 0
    spans: int = 0
    masked_fraction_sum: float = 0.0
    span_words: list = dataclasses.field(default_factory=list)
    span_tokens: list = dataclasses.field(default_factory=list)
    spans_per_segment: list = dataclasses.field(default_factory=list)
    replaced_with_mask: int = 0
    replaced_with_random: int = 0
    kept: int = 0
    spans_with_sbo: int = 0
    starts_inside_word: int = 0
    ends_inside_word: int = 0
    segments_with_two_cuts: int = 0
    special_tokens_masked: int = 0
    sbo_violations: list = dataclasses.field(default_factory=list)

    @property
    def mean_span_words(self) -> float:
        return float(np.mean(np.concatenate(self.span_words)))

    @property
    def mean_span_tokens(self) -> float:
        return float(np.mean(np.concatenate(self.span_tokens)))

    @property
    def mean_spans_per_segment(self) -> float:
        return float(np.mean(np.concatenate(self.spans_per_segment)))

    @property
    def masked_fraction(self) -> float:
        return self.masked_fraction_sum / self.segments

    def fraction(self, count: int) -> float:
        return count / self.spans

    def standard_error(self, name: str) -> float:
        values = np.concatenate(getattr(self, name))
        return float(np.std(values) / np.sqrt(len(values)))

    def add(self, examples: dict[str, np.ndarray], continuation: np.ndarray, mask_id: int,
            special_ids) -> None:
        """Accumulates one batch of examples (numpy arrays with a batch dimension)."""
        ids = examples["input_ids"]
        count, length = ids.shape
        lengths = examples["input_mask"].sum(axis=1)
        weights = examples["masked_lm_weights"] > 0
        rows = np.nonzero(weights)[0]
        positions = examples["masked_lm_positions"][weights]
        masked = np.zeros(ids.shape, bool)
        masked[rows, positions] = True
        original = ids.copy()
        original[rows, positions] = examples["masked_lm_ids"][weights]
        column = np.arange(length)
        text = (column >= 1) & (column <= lengths[:, None] - 2)
        word_start = text & (~continuation[original] | (column == 1))

        self.segments += count
        self.masked_fraction_sum += float(np.sum(masked.sum(axis=1) / (lengths - 2)))
        self.special_tokens_masked += int(np.sum(masked & ~text)) + int(
            np.sum(np.isin(original[masked], special_ids)))

        begins = masked & ~np.pad(masked, ((0, 0), (1, 0)))[:, :-1]
        ends = masked & ~np.pad(masked, ((0, 0), (0, 1)))[:, 1:]
        span_row, span_start = np.nonzero(begins)
        _, span_end = np.nonzero(ends)
        starts_cumulative = np.cumsum(word_start, axis=1)
        words = (starts_cumulative[span_row, span_end] - starts_cumulative[span_row, span_start]
                 + 1)
        tokens = span_end - span_start + 1
        self.spans += len(span_row)
        self.span_words.append(words)
        self.span_tokens.append(tokens)
        self.spans_per_segment.append(np.bincount(span_row, minlength=count))
        self.starts_inside_word += int(np.sum(~word_start[span_row, span_start]))
        cut = text[span_row, span_end + 1] & ~word_start[span_row, span_end + 1]
        self.ends_inside_word += int(np.sum(cut))
        self.segments_with_two_cuts += int(np.sum(np.bincount(span_row[cut], minlength=count) > 1))

        is_mask = np.cumsum(ids == mask_id, axis=1)
        is_same = np.cumsum(ids == original, axis=1)

        def in_span(cumulative):
            before = np.where(span_start > 0, cumulative[span_row, span_start - 1], 0)
            return cumulative[span_row, span_end] - before

        all_mask = in_span(is_mask) == tokens
        all_same = in_span(is_same) == tokens
        self.replaced_with_mask += int(np.sum(all_mask))
        self.kept += int(np.sum(all_same & ~all_mask))
        self.replaced_with_random += int(np.sum(~all_same & ~all_mask))
        self._check_sbo(examples, original, masked, begins, ends, lengths)

    def _check_sbo(self, examples, original, masked, begins, ends, lengths) -> None:
        target_weights = examples["span_target_weights"] > 0
        target_positions = examples["span_target_positions"]
        has_targets = target_weights[..., 0]
        row, slot = np.nonzero(has_targets)
        self.spans_with_sbo += len(row)
        start = target_positions[row, slot, 0]
        left, right = examples["span_boundaries"][row, slot].T
        end = right - 1
        expected_count = np.minimum(end - start + 1, target_weights.shape[-1])
        offsets = np.arange(target_weights.shape[-1])
        positions = target_positions[row, slot]
        valid = target_weights[row, slot]
        safe_positions = np.where(valid, positions, 0)
        problems = {
            "boundary is not start - 1": left != start - 1,
            "boundary outside the text": (left < 1) | (right > lengths[row] - 2),
            "boundary is masked": masked[row, left] | masked[row, right],
            "not a merged span": ~begins[row, start] | ~ends[row, end],
            "target count": valid.sum(axis=1) != expected_count,
            "target position != start + t": np.any(
                valid & (positions != start[:, None] + offsets), axis=1),
            "target not masked": np.any(valid & ~masked[row[:, None], safe_positions], axis=1),
            "target id": np.any(
                valid & (examples["span_target_ids"][row, slot]
                         != original[row[:, None], safe_positions]), axis=1),
        }
        total_targets = target_weights.sum(axis=(1, 2))
        problems_per_example = {
            "more SBO targets than masked positions":
                total_targets > (examples["masked_lm_weights"] > 0).sum(axis=1),
        }
        for name, flags in {**problems, **problems_per_example}.items():
            if np.any(flags):
                self.sbo_violations.append((name, int(np.sum(flags))))
