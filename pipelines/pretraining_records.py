"""The pretraining record format: writing, validating and reading the TFRecord shards.

A record is a `tf.train.Example` with two int64 list features of equal length:

- `input_ids`: one segment `[CLS] ... [SEP]`, unpadded (at most max_seq_length ids);
- `word_starts`: 1 where the token begins a word, 0 for `##` continuations and for
  [CLS]/[SEP] (the flags of `SpanBertTokenizer.word_starts`).

`prepare-pretraining` writes them to `train-NNNNN-of-MMMMM.tfrecord` (and optionally
`heldout-...`) shards beside a `summary.json` that lists every shard with its record
count.

TensorFlow's reader neither names the file of a corrupt record ("corrupted record at
495") nor notices a truncated file (it stops early, silently). `read_pretraining_shards`
therefore validates the shards before building the dataset: `validate="headers"` (the
default) walks the record framing of every file (12-byte headers with their CRC,
record lengths up to the exact end of the file; cheap, it reads no payload) and checks
record counts against summary.json when one is present; `validate="full"` also reads
every record, checking payload CRCs and the two features. Errors name the file, the
record index and the byte offset.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "train-00000-of-00001.tfrecord")
    >>> with tf.io.TFRecordWriter(path) as writer:
    ...     writer.write(serialize_segment([2, 7, 8, 3], [0, 1, 0, 0]))
    >>> next(iter(read_pretraining_shards(path)))["input_ids"].numpy()
    array([2, 7, 8, 3], dtype=int32)
"""

from __future__ import annotations

import glob
import json
import os
import struct
from typing import Sequence

import numpy as np
import tensorflow as tf

INPUT_IDS = "input_ids"
WORD_STARTS = "word_starts"
SUMMARY_FILE = "summary.json"
FEATURES = {
    INPUT_IDS: tf.io.RaggedFeature(tf.int64),
    WORD_STARTS: tf.io.RaggedFeature(tf.int64),
}
VALIDATION_MODES = ("none", "headers", "full")


def serialize_segment(input_ids: Sequence[int], word_starts: Sequence[int]) -> bytes:
    """Serialises one segment as a tf.train.Example."""
    if len(input_ids) != len(word_starts):
        raise ValueError(f"input_ids ({len(input_ids)}) and word_starts "
                         f"({len(word_starts)}) differ in length")
    example = tf.train.Example(features=tf.train.Features(feature={
        INPUT_IDS: tf.train.Feature(int64_list=tf.train.Int64List(value=input_ids)),
        WORD_STARTS: tf.train.Feature(int64_list=tf.train.Int64List(value=word_starts)),
    }))
    # deterministic=True sorts the feature map: the same bytes in every process.
    return example.SerializeToString(deterministic=True)


def parse_segment(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized record into int32 `input_ids` and `word_starts` [length]."""
    features = tf.io.parse_single_example(serialized, FEATURES)
    return {name: tf.cast(value, tf.int32) for name, value in features.items()}


def shard_files(file_pattern: str | Sequence[str]) -> list[str]:
    """Sorted files matching a glob pattern (or several); FileNotFoundError if none."""
    patterns = [file_pattern] if isinstance(file_pattern, (str, os.PathLike)) else file_pattern
    files: list[str] = []
    for pattern in patterns:
        pattern = os.fspath(pattern)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else (
            [pattern] if os.path.isfile(pattern) else [])
        if not matches:
            raise FileNotFoundError(f"no pretraining shard matches {pattern}")
        files.extend(matches)
    return files


def read_pretraining_shards(
    file_pattern: str | Sequence[str],
    validate: str = "headers",
    shuffle_files: bool = False,
    seed: int | None = None,
    num_parallel_reads: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Dataset of {"input_ids", "word_starts"} (int32, [length]) from pretraining shards.

    Args:
        file_pattern: a glob such as "out/train-*.tfrecord", a file, or a list of them.
        validate: "headers" (default), "full" or "none"; see the module docstring.
        shuffle_files: shuffle the order of the files (with `seed`).
        seed: seed of the file shuffle.
        num_parallel_reads: files read at once (interleaved deterministically).
        input_context: from `strategy.distribute_datasets_from_function`; each input
            pipeline then reads its own subset of the files (or of the records, when
            there are fewer files than pipelines).
    """
    if validate not in VALIDATION_MODES:
        raise ValueError(f"validate must be one of {VALIDATION_MODES}, got {validate!r}")
    files = shard_files(file_pattern)
    if validate != "none":
        validate_shards(files, full=validate == "full")
    file_dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        file_dataset = file_dataset.shuffle(len(files), seed=seed)
    by_file = input_context is not None and len(files) >= input_context.num_input_pipelines
    if by_file:
        file_dataset = file_dataset.shard(input_context.num_input_pipelines,
                                          input_context.input_pipeline_id)
    if num_parallel_reads and num_parallel_reads > 1:
        records = file_dataset.interleave(
            tf.data.TFRecordDataset, cycle_length=num_parallel_reads,
            num_parallel_calls=num_parallel_reads, deterministic=True)
    else:
        records = file_dataset.flat_map(tf.data.TFRecordDataset)
    if input_context is not None and not by_file:
        records = records.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
    return records.map(parse_segment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def validate_shards(files: Sequence[str], full: bool = False) -> dict[str, int]:
    """Checks shard files and returns {file: record count}; ValueError naming the file,
    record and byte offset on the first problem found."""
    expected = _expected_counts(files)
    counts = {}
    for path in files:
        counts[path] = count_records(path) if not full else _read_all_records(path)
        want = expected.get(os.path.abspath(path))
        if want is not None and want != counts[path]:
            raise ValueError(f"pretraining shard {path} holds {counts[path]} records but "
                             f"{SUMMARY_FILE} lists {want}: the file is incomplete or stale")
    return counts


def count_records(path: str) -> int:
    """Walks the TFRecord framing of one file without reading payloads."""
    size = os.path.getsize(path)
    count = offset = 0
    with open(path, "rb") as file:
        while offset < size:
            header = file.read(12)
            where = f"pretraining shard {path}: record {count} at byte {offset}"
            if len(header) < 12:
                raise ValueError(f"{where}: truncated header (file cut short?)")
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                raise ValueError(f"{where}: corrupt header (bad length checksum); "
                                 "not a TFRecord file or damaged")
            offset += 12 + length + 4
            if offset > size:
                raise ValueError(f"{where}: record of {length} bytes runs past the end "
                                 f"of the file ({size} bytes): truncated")
            file.seek(offset)
            count += 1
    return count


def _read_all_records(path: str) -> int:
    count_records(path)
    count = 0
    try:
        for record in tf.data.TFRecordDataset(path):
            features = tf.io.parse_single_example(record, FEATURES)
            ids, starts = features[INPUT_IDS], features[WORD_STARTS]
            if ids.shape[0] < 2 or ids.shape[0] != starts.shape[0]:
                raise ValueError(f"pretraining shard {path}: record {count} has "
                                 f"{ids.shape[0]} input_ids and {starts.shape[0]} word_starts")
            count += 1
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        raise ValueError(f"pretraining shard {path}: record {count} is corrupt: "
                         f"{error.message.splitlines()[-1]}") from None
    return count


def _expected_counts(files: Sequence[str]) -> dict[str, int]:
    expected = {}
    for directory in sorted({os.path.dirname(os.path.abspath(f)) for f in files}):
        summary_path = os.path.join(directory, SUMMARY_FILE)
        if not os.path.isfile(summary_path):
            continue
        try:
            with open(summary_path, encoding="utf-8") as file:
                shards = json.load(file).get("shards", [])
        except (OSError, ValueError, AttributeError):
            continue
        for shard in shards:
            if isinstance(shard, dict) and "file" in shard and "segments" in shard:
                expected[os.path.join(directory, shard["file"])] = int(shard["segments"])
    return expected


class ShardWriter:
    """Writes records round-robin over `num_shards` files through a seeded shuffle buffer.

    Records leave the buffer in a random order that depends only on the seed and the
    input order, so output is deterministic; memory is bounded by `shuffle_buffer`.
    """

    def __init__(self, output_dir: str, prefix: str, num_shards: int, shuffle_buffer: int,
                 seed: int):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.files = [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
        self._writers = [tf.io.TFRecordWriter(os.path.join(output_dir, f)) for f in self.files]
        self._buffer: list[tuple[bytes, int]] = []
        self._shuffle_buffer = shuffle_buffer
        self._rng = np.random.default_rng(seed)
        self._next = 0
        self.records = [0] * num_shards
        self.tokens = [0] * num_shards

    def write(self, record: bytes, num_tokens: int) -> None:
        if self._shuffle_buffer <= 1:
            self._emit(record, num_tokens)
            return
        self._buffer.append((record, num_tokens))
        if len(self._buffer) >= self._shuffle_buffer:
            index = int(self._rng.integers(len(self._buffer)))
            self._buffer[index], self._buffer[-1] = self._buffer[-1], self._buffer[index]
            self._emit(*self._buffer.pop())

    def close(self) -> list[dict]:
        """Flushes the buffer, closes the files; returns [{file, segments, tokens}]."""
        for index in self._rng.permutation(len(self._buffer)):
            self._emit(*self._buffer[index])
        self._buffer = []
        for writer in self._writers:
            writer.close()
        return [{"file": f, "segments": n, "tokens": t}
                for f, n, t in zip(self.files, self.records, self.tokens)]

    def _emit(self, record: bytes, num_tokens: int) -> None:
        shard = self._next
        self._writers[shard].write(record)
        self.records[shard] += 1
        self.tokens[shard] += num_tokens
        self._next = (shard + 1) % len(self._writers)


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C that TFRecord stores (pure Python; used on 8-byte headers)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()
