"""Length bucketing for variable-length inputs (fine-tuning and inference).

Padding every example to 512 wastes most of the compute on short inputs: on the
bundled corpus, paragraphs average well under 100 word pieces. `bucket_by_length`
groups examples of similar length with `tf.data.Dataset.bucket_by_sequence_length`
and pads each batch only to its bucket (or to its longest member). The bucket
boundaries come from the data: the split of a sample's length histogram into buckets
with the least padding, at multiples of 8 (few distinct shapes, friendly to XLA and
tensor cores).

Example:
    >>> import tensorflow as tf
    >>> ds = tf.data.Dataset.from_generator(
    ...     lambda: ([1] * n for n in (3, 5, 30, 31, 4, 29)),
    ...     output_signature=tf.TensorSpec([None], tf.int32))
    >>> batches = bucket_by_length(ds, batch_size=3, num_buckets=2)
    >>> sorted(b.shape[1] for b in batches)
    [5, 31]
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

MAX_DISTINCT_TOPS = 1024


def choose_boundaries(lengths: Sequence[int], num_buckets: int = 8,
                      multiple_of: int = 8, max_length: int | None = None) -> list[int]:
    """Bucket boundaries that minimise the padding of `lengths`, for
    `bucket_by_sequence_length`.

    Bucket i holds lengths in [boundaries[i-1], boundaries[i]) and is padded to at most
    boundaries[i] - 1, a multiple of `multiple_of`. The boundaries are the split of the
    length histogram into at most `num_buckets` buckets with the least total padding
    (exact, by dynamic programming); quantile splits waste far more on the long tail
    of real text. With `max_length`, lengths are capped there and the last boundary is
    max_length + 1, so every length up to it has a bucket.
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.size == 0:
        raise ValueError("choose_boundaries needs at least one length")
    if num_buckets < 1 or multiple_of < 1:
        raise ValueError("num_buckets and multiple_of must be >= 1")
    if max_length is not None:
        lengths = np.minimum(lengths, max_length)
    while True:  # Coarser steps for very long inputs keep the [n, n] table small.
        rounded = np.maximum(-(-lengths // multiple_of), 1) * multiple_of
        if max_length is not None:
            rounded = np.minimum(rounded, max_length)
        tops, inverse = np.unique(rounded, return_inverse=True)
        if len(tops) <= MAX_DISTINCT_TOPS:
            break
        multiple_of *= 2
    counts = np.bincount(inverse, minlength=len(tops)).astype(np.float64)
    sums = np.bincount(inverse, weights=lengths, minlength=len(tops))
    chosen = _least_padding_split(tops.astype(np.float64), counts, sums, num_buckets)
    boundaries = [int(tops[i]) + 1 for i in chosen]
    if max_length is not None and boundaries[-1] != max_length + 1:
        boundaries.append(max_length + 1)
    return boundaries


def _least_padding_split(tops, counts, sums, num_buckets: int) -> list[int]:
    """Indices of the last top of each bucket in the split of sorted `tops` into at most
    `num_buckets` runs that minimises sum(top_of_run * count - sum of lengths)."""
    n = len(tops)
    count_prefix = np.concatenate([[0.0], np.cumsum(counts)])
    sum_prefix = np.concatenate([[0.0], np.cumsum(sums)])
    # cost[a, b]: padding of one bucket holding tops a..b (inclusive), a <= b.
    a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    cost = tops[b] * (count_prefix[b + 1] - count_prefix[a]) - (sum_prefix[b + 1] - sum_prefix[a])
    cost = np.where(a <= b, cost, np.inf)
    best = cost[0].copy()  # best[b]: least padding of tops 0..b in k buckets
    parents = []
    for _ in range(1, min(num_buckets, n)):
        # Last bucket starts at a + 1 after an optimal split of tops 0..a.
        candidates = best[:-1, None] + cost[1:, :]
        parent = np.argmin(candidates, axis=0)
        improved = candidates[parent, np.arange(n)]
        take = improved < best
        parents.append(np.where(take, parent, -1))
        best = np.where(take, improved, best)
    ends, end = [], n - 1
    for parent in reversed(parents):
        ends.append(end)
        if parent[end] >= 0:
            end = parent[end]
    ends.append(end)
    return sorted(set(ends))


def bucket_by_length(
    dataset: tf.data.Dataset,
    batch_size: int,
    key: str | None = None,
    length_fn: Callable[[Any], tf.Tensor] | None = None,
    boundaries: Sequence[int] | None = None,
    num_buckets: int = 8,
    sample_size: int = 4096,
    max_length: int | None = None,
    pad_to_bucket_boundary: bool = False,
    multiple_of: int = 8,
    padding_values: Any = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches `dataset` by length buckets, padding each batch as little as possible.

    Args:
        dataset: elements are 1-D dense tensors or dicts/tuples of them (as
            `SpanBertTokenizer.tokenize` makes from one string in `Dataset.map`).
        batch_size: examples per batch (the same in every bucket).
        key: for dict elements, the feature whose length counts (e.g. "input_ids").
        length_fn: element -> scalar length; overrides `key`.
        boundaries: explicit boundaries; else chosen by `choose_boundaries` from the
            lengths of the first `sample_size` elements.
        num_buckets: buckets to aim for when choosing boundaries.
        max_length: longest expected length; required with `pad_to_bucket_boundary`.
        pad_to_bucket_boundary: pad to the bucket's maximum (a fixed set of shapes,
            for XLA/TPU) instead of the longest example in each batch.
        multiple_of: boundaries are multiples of this (plus one).
        padding_values: as in `tf.data.Dataset.padded_batch` (default zeros).
        drop_remainder: drop partial batches (static batch dimension).
    """
    if pad_to_bucket_boundary and max_length is None and boundaries is None:
        raise ValueError("pad_to_bucket_boundary needs max_length (the last bucket must "
                         "cover the longest example)")
    length_of = length_fn or _length_function(dataset.element_spec, key)
    if boundaries is None:
        sample = [int(n) for n in dataset.take(sample_size).map(length_of).as_numpy_iterator()]
        if not sample:
            raise ValueError("cannot choose bucket boundaries from an empty dataset")
        boundaries = choose_boundaries(sample, num_buckets, multiple_of, max_length)
    boundaries = [int(b) for b in boundaries]
    if any(b <= a for a, b in zip(boundaries, boundaries[1:])) or boundaries[0] < 1:
        raise ValueError(f"boundaries must be positive and strictly increasing: {boundaries}")
    return dataset.bucket_by_sequence_length(
        element_length_func=lambda *element: tf.cast(
            length_of(*element), tf.int32),
        bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        padding_values=padding_values,
        pad_to_bucket_boundary=pad_to_bucket_boundary,
        drop_remainder=drop_remainder,
    )


def padding_fraction(batches: tf.data.Dataset, key: str | None = None,
                     pad_value: int = 0) -> float:
    """Fraction of positions in padded batches that hold `pad_value` (padding waste)."""
    padded = total = 0
    for batch in batches.as_numpy_iterator():
        values = batch[key] if key is not None else batch
        padded += int(np.sum(values == pad_value))
        total += values.size
    if not total:
        raise ValueError("no batches to measure")
    return padded / total


def _length_function(element_spec, key: str | None) -> Callable[[Any], tf.Tensor]:
    if isinstance(element_spec, dict):
        if key is None or key not in element_spec:
            raise ValueError(f"dict elements need key= one of {sorted(element_spec)}")
        return lambda element: tf.shape(element[key])[0]
    if isinstance(element_spec, tuple):
        index = 0 if key is None else int(key)
        return lambda *element: tf.shape(element[index])[0]
    return lambda element: tf.shape(element)[0]
