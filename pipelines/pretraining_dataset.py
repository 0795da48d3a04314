"""The pretraining input pipeline: TFRecord shards -> shuffled, span-masked batches.

`make_pretraining_dataset` reads the shards written by `prepare-pretraining` (records
of `input_ids` and `word_starts`, see `pipelines.pretraining_records`), shuffles them,
batches them and masks each batch with `SpanMasker`, in graph, producing the
fixed-shape example dict that `SpanBertPretrainer` consumes (DESIGN.md section 4).

The stream is reproducible from one seed. An input pipeline's stream is a
deterministic function of (seed, data files, masking config, input pipeline id): the
record order comes from seeded tf.data shuffles, and the mask of the i-th example of
the stream depends only on (seed, pipeline id, i) and its tokens (`SpanMasker` draws
it from counter-based random streams), not on the batch size. So a resumed run that
asks for the stream from `start_example` sees exactly what an uninterrupted run saw.
Like every tf.data shuffle, the order also depends on TensorFlow's global seed
(`tf.random.set_seed` / `keras.utils.set_random_seed`), which must match too.

Masks are re-drawn every epoch: with `repeat=True` the example index keeps growing
across passes over the data; with `repeat=False` each iteration of the dataset (each
Keras epoch) draws a new epoch key from `tf.data.Dataset.random`, which is
re-randomised per iteration and reproducible from the seed.

Distribution: call it from `strategy.distribute_datasets_from_function` with the
`tf.distribute.InputContext` and the per-replica batch size; each input pipeline
reads its own share of the files (or of the records, when there are fewer files than
pipelines) and masks with its own seed.

Example:
    >>> import os, tempfile
    >>> from pipelines.pretraining_records import serialize_segment
    >>> shard = os.path.join(tempfile.mkdtemp(), "train-00000-of-00001.tfrecord")
    >>> with tf.io.TFRecordWriter(shard) as writer:
    ...     for i in range(8):
    ...         writer.write(serialize_segment([1, 5 + i, 6, 7, 8, 2], [0, 1, 0, 1, 1, 0]))
    >>> special = SpecialTokenIds(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=20)
    >>> dataset = make_pretraining_dataset(shard, SpanMaskingConfig(max_seq_length=8),
    ...                                    special, batch_size=4, seed=1)
    >>> batch = next(iter(dataset))
    >>> batch["input_ids"].shape, batch["span_target_ids"].shape
    (TensorShape([4, 8]), TensorShape([4, 2, 15]))
    >>> # model.fit(dataset, steps_per_epoch=1000, epochs=10) with a SpanBertPretrainer
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import tensorflow as tf

from pipelines.pretraining_records import FEATURES, INPUT_IDS, WORD_STARTS, VALIDATION_MODES
from pipelines.pretraining_records import shard_files, validate_shards
from pipelines.span_masking import SpanMasker, SpanMaskingConfig, SpecialTokenIds

PARALLEL_READS = 4  # files read at once, interleaved deterministically


def make_pretraining_dataset(
    file_pattern: str | os.PathLike | Sequence[str | os.PathLike],
    masking_config: SpanMaskingConfig,
    special_ids: SpecialTokenIds,
    batch_size: int,
    seed: int = 0,
    shuffle_buffer: int = 10_000,
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool = True,
    start_example: int = 0,
    validate: str = "headers",
) -> tf.data.Dataset:
    """Batches of span-masked pretraining examples with static shapes.

    Args:
        file_pattern: shard glob(s) or file(s); FileNotFoundError if nothing matches.
            Empty files are skipped with a warning (ValueError if all are empty).
        masking_config: span masking settings; its `max_seq_length` is the example length.
        special_ids: the vocabulary's special ids (`SpecialTokenIds.from_vocab`).
        batch_size: examples per batch of this input pipeline (the per-replica batch
            under `distribute_datasets_from_function`). The last partial batch of a
            pass is dropped so that every batch has the same static shape.
        seed: the run seed; shuffles and masks derive from it.
        shuffle_buffer: records in the shuffle buffer (1 or less: no shuffling).
        input_context: the `tf.distribute.InputContext`, for per-pipeline sharding.
        repeat: repeat forever (pass `steps_per_epoch` to Keras) or one pass per epoch.
        start_example: skip this many examples of the stream (resuming a run); masks of
            the following examples are those an uninterrupted stream would have drawn.
        validate: shard validation before reading: "headers" (record framing of every
            file, cheap), "full" (every record) or "none"; errors name the file. A
            damaged payload behind an intact header is only found by "full": while
            reading, TensorFlow raises DataLossError without naming the file.

    Returns:
        A tf.data.Dataset of dicts (see `SpanMasker`) with batch dimension
        `batch_size`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if start_example < 0:
        raise ValueError(f"start_example must be >= 0, got {start_example}")
    if validate not in VALIDATION_MODES:
        raise ValueError(f"validate must be one of {VALIDATION_MODES}, got {validate!r}")
    files = _non_empty(shard_files(file_pattern))
    if validate != "none":
        validate_shards(files, full=validate == "full")
    pipelines, pipeline_id = ((input_context.num_input_pipelines, input_context.input_pipeline_id)
                              if input_context is not None else (1, 0))
    stream = _MaskedStream(files, SpanMasker(masking_config, special_ids), batch_size,
                           seed, shuffle_buffer, pipelines, pipeline_id)
    if repeat:
        return stream.build(epoch_key=tf.constant(0, tf.int64), repeat=True,
                            start_example=start_example)
    # One epoch key sequence for all pipelines: record sharding needs one record order.
    epoch_keys = tf.data.Dataset.random(seed=_mix(seed, 0, 3),
                                        rerandomize_each_iteration=True).take(1)
    return epoch_keys.flat_map(
        lambda key: stream.build(epoch_key=key, repeat=False, start_example=start_example))


class _MaskedStream:
    """Builds the record -> masked batch pipeline of one input pipeline."""

    def __init__(self, files: list[str], masker: SpanMasker, batch_size: int, seed: int,
                 shuffle_buffer: int, pipelines: int, pipeline_id: int):
        self.files, self.masker, self.batch_size = files, masker, batch_size
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.pipelines, self.pipeline_id = pipelines, pipeline_id
        self.by_file = len(files) >= pipelines

    def build(self, epoch_key: tf.Tensor, repeat: bool, start_example: int) -> tf.data.Dataset:
        records = self._records()
        if repeat:
            records = records.repeat()
        if start_example:
            records = records.skip(start_example)
        batches = tf.data.Dataset.zip((
            records.batch(self.batch_size, drop_remainder=True),
            tf.data.Dataset.counter(start=start_example, step=self.batch_size)))
        mask_seed = tf.random.experimental.stateless_fold_in(
            tf.constant([self.seed, self.pipeline_id], tf.int64), epoch_key)
        masked = batches.map(lambda serialized, first: self._mask(serialized, first, mask_seed),
                             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return masked.prefetch(tf.data.AUTOTUNE)

    def _records(self) -> tf.data.Dataset:
        files = tf.data.Dataset.from_tensor_slices(self.files)
        if self.by_file:
            files = files.shard(self.pipelines, self.pipeline_id)
        shuffle = self.shuffle_buffer > 1
        if shuffle:
            # The same file order in every pipeline, so that sharding by record (fewer
            # files than pipelines) splits one record order.
            files = files.shuffle(len(self.files), seed=self._shuffle_seed(1, 0),
                                  reshuffle_each_iteration=True)
        records = files.interleave(
            tf.data.TFRecordDataset, cycle_length=min(PARALLEL_READS, len(self.files)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if not self.by_file:
            records = records.shard(self.pipelines, self.pipeline_id)
        if shuffle:
            records = records.shuffle(self.shuffle_buffer,
                                      seed=self._shuffle_seed(2, self.pipeline_id),
                                      reshuffle_each_iteration=True)
        return records

    def _shuffle_seed(self, purpose: int, pipeline_id: int) -> int:
        # A Python int: tf.data's seed handling evaluates `seed == 0` in Python, which
        # fails for a tensor seed when the global seed is 0. Epochs still differ through
        # `reshuffle_each_iteration`, and masks through the epoch key.
        return _mix(self.seed, pipeline_id, purpose)

    def _mask(self, serialized: tf.Tensor, first_example: tf.Tensor, seed: tf.Tensor):
        features = tf.io.parse_example(serialized, FEATURES)
        return self.masker(features[INPUT_IDS], features[WORD_STARTS], seed,
                           first_example=first_example)


def _non_empty(files: list[str]) -> list[str]:
    """Drops empty shard files with a warning (a tiny corpus leaves some shards empty)."""
    empty = [path for path in files if tf.io.gfile.stat(path).length == 0]
    if len(empty) == len(files):
        raise ValueError(f"every pretraining shard is empty: {', '.join(files)}")
    if empty:
        logging.warning("skipping %d empty pretraining shard(s): %s", len(empty),
                        ", ".join(empty))
    return [path for path in files if path not in empty]


def _mix(seed: int, pipeline_id: int, purpose: int) -> int:
    """A 63-bit op seed for one purpose of one input pipeline (deterministic)."""
    value = (seed * 0x9E3779B97F4A7C15 + pipeline_id * 0xBF58476D1CE4E5B9
             + purpose * 0x94D049BB133111EB) % (1 << 64)
    value ^= value >> 31
    return value & ((1 << 63) - 1)
