"""Fine-tuning features shared by the tasks: reading files, packing, tf.data batches.

Reading: `read_table` (TSV/CSV with a header) and `read_json_lines` yield rows with
their line numbers, and `input_error` formats "FILE:LINE: message" errors, so every
bad input names its place.

Packing: `pack_sequences` builds `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]` with segment
ids 0/1, truncating the longer side first (BERT's rule) to `max_seq_length`.

Batches: `EncodedExamples` holds variable-length rows (token ids, segment ids, labels
per example or per token, and the source example of each row). `training_batches`
shuffles, repeats and batches them by length buckets (`pipelines.bucketing`), padding
ids with [PAD], masks and segments with 0 and token labels with -1 (ignored);
`prediction_batches` does the same once, in a fixed order, with each row's index.

Example:
    >>> import numpy as np
    >>> ids, segments, truncated = pack_sequences(2, 3, [10, 11, 12], [20, 21], 8)
    >>> ids, segments, truncated
    ([2, 10, 11, 12, 3, 20, 21, 3], [0, 0, 0, 0, 0, 1, 1, 1], False)
    >>> encoded = EncodedExamples([np.array(ids)], [np.array(segments)], np.array([1]))
    >>> batch = next(iter(prediction_batches(encoded, batch_size=4, max_seq_length=8)))
    >>> batch["input_ids"].shape.as_list(), batch["labels"].numpy().tolist()
    ([1, 8], [1])
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow as tf

from pipelines.bucketing import bucket_by_length, choose_boundaries

INPUT_KEYS = ("input_ids", "input_mask", "segment_ids")
# The second text of a siamese (bi-encoder) pair, packed on its own.
SECOND_INPUT_KEYS = ("input_ids_b", "input_mask_b", "segment_ids_b")
IGNORED_LABEL = -1
TOKENIZE_CHUNK = 4096


def input_error(path: str, line: int | None, message: str) -> ValueError:
    """A ValueError that names the file (and line) of a bad input."""
    where = f"{path}:{line}" if line is not None else path
    return ValueError(f"{where}: {message}")


def check_input_file(path: str | None, flag: str) -> str:
    if not path:
        raise ValueError(f"{flag} is required")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file ({flag})")
    return path


# ---------------------------------------------------------------- reading

def table_delimiter(path: str) -> str:
    """Tab for .tsv/.txt files, comma for .csv."""
    return "," if path.lower().endswith(".csv") else "\t"


def read_table(path: str, delimiter: str | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a TSV/CSV file with a header line, as (line number, {column: value}).

    TSV files are read without quote handling, as GLUE distributes them (a `"` inside
    a sentence is text); CSV files use standard quoting. A row with a different number
    of fields than the header is an error naming the line.
    """
    delimiter = delimiter or table_delimiter(path)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        try:
            header = next(reader)
        except StopIteration:
            raise input_error(path, None, "the file is empty (expected a header line)") from None
        except csv.Error as error:
            raise input_error(path, 1, f"cannot parse the header ({error})") from None
        header = [name.strip() for name in header]
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise input_error(path, reader.line_num, f"malformed row ({error})") from None
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != len(header):
                raise input_error(path, reader.line_num,
                                  f"expected {len(header)} fields ({', '.join(header)}), "
                                  f"found {len(fields)}")
            yield reader.line_num, dict(zip(header, fields))


def read_table_header(path: str, delimiter: str | None = None) -> list[str]:
    delimiter = delimiter or table_delimiter(path)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        first = handle.readline()
    if not first.strip():
        raise input_error(path, None, "the file is empty (expected a header line)")
    return [name.strip() for name in first.rstrip("\r\n").split(delimiter)]


def read_json_lines(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Objects of a JSON-lines file as (line number, object); blank lines are skipped."""
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise input_error(path, number, f"not valid JSON ({error.msg} at column "
                                                f"{error.colno})") from None
            if not isinstance(value, dict):
                raise input_error(path, number, f"expected a JSON object, found "
                                                f"{type(value).__name__}")
            yield number, value


def is_json_lines(path: str) -> bool:
    return path.lower().endswith((".jsonl", ".json", ".ndjson"))


def require_fields(path: str, line: int, record: dict[str, Any],
                   fields: Sequence[str]) -> None:
    missing = [field for field in fields if field not in record]
    if missing:
        raise input_error(path, line, f"missing field(s) {', '.join(map(repr, missing))} "
                                      f"(found: {', '.join(sorted(map(str, record)))})")


# ---------------------------------------------------------------- packing

def tokenize_texts(tokenizer, texts: Sequence[str], progress: bool = False,
                   description: str = "tokenizing") -> list[np.ndarray]:
    """Token ids of each text (no [CLS]/[SEP]), in chunks so that memory stays flat."""
    results: list[np.ndarray] = []
    bar = progress_bar(len(texts), description, unit="text") if progress else None
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = list(texts[start:start + TOKENIZE_CHUNK])
        if not chunk:
            continue
        ragged = tokenizer.tokenize(chunk)
        values = ragged.flat_values.numpy().astype(np.int32)
        splits = ragged.row_splits.numpy()
        results.extend(values[splits[i]:splits[i + 1]] for i in range(len(chunk)))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return results


def truncate_pair(first: Sequence[int], second: Sequence[int] | None,
                  budget: int) -> tuple[list[int], list[int] | None, bool]:
    """Removes tokens from the end of the longer sequence until both fit in `budget`."""
    first = list(first)
    second = None if second is None else list(second)
    truncated = False
    while len(first) + (len(second) if second is not None else 0) > budget:
        truncated = True
        if second is not None and len(second) > len(first):
            second.pop()
        else:
            first.pop()
    return first, second, truncated


def pack_sequences(cls_id: int, sep_id: int, first: Sequence[int],
                   second: Sequence[int] | None, max_seq_length: int
                   ) -> tuple[list[int], list[int], bool]:
    """`[CLS] first [SEP] (second [SEP])` ids and segment ids; True if truncated."""
    special = 3 if second is not None else 2
    if max_seq_length <= special:
        raise ValueError(f"max_seq_length {max_seq_length} leaves no room for text")
    first, second, truncated = truncate_pair(first, second, max_seq_length - special)
    ids = [cls_id, *first, sep_id]
    segments = [0] * len(ids)
    if second is not None:
        ids += [*second, sep_id]
        segments += [1] * (len(second) + 1)
    return ids, segments, truncated


# ---------------------------------------------------------------- tf.data

@dataclasses.dataclass
class EncodedExamples:
    """Variable-length model inputs of N rows, their labels and where they came from.

    Attributes:
        input_ids: one int array per row, [CLS] ... [SEP] included.
        segment_ids: one int array per row, same lengths.
        labels: None (prediction only), one label per row (int class or float target),
            or one int array per row with a label per token (IGNORED_LABEL = -1 where
            no label applies).
        source: index of the source example of each row (several rows per example
            when a long input is split into chunks); default 0..N-1.
        second: siamese pairs: the second text of each row, packed on its own (its
            rows become the `*_b` inputs; labels and source are this object's).
    """

    input_ids: list[np.ndarray]
    segment_ids: list[np.ndarray]
    labels: np.ndarray | list[np.ndarray] | None = None
    source: np.ndarray | None = None
    second: "EncodedExamples | None" = None

    def __post_init__(self) -> None:
        count = len(self.input_ids)
        if len(self.segment_ids) != count:
            raise ValueError(f"{count} input_ids rows but {len(self.segment_ids)} segment_ids")
        if self.second is not None and len(self.second) != count:
            raise ValueError(f"{count} rows but {len(self.second)} second-text rows")
        if self.labels is not None and len(self.labels) != count:
            raise ValueError(f"{count} rows but {len(self.labels)} labels")
        self.source = (np.arange(count, dtype=np.int64) if self.source is None
                       else np.asarray(self.source, np.int64))
        if len(self.source) != count:
            raise ValueError(f"{count} rows but {len(self.source)} source indices")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row (for pairs, the longer of the two texts: the bucketing key)."""
        lengths = np.array([len(ids) for ids in self.input_ids], np.int64)
        if self.second is not None:
            lengths = np.maximum(lengths, self.second.lengths)
        return lengths

    @property
    def token_labels(self) -> bool:
        return isinstance(self.labels, list)

    def take(self, count: int) -> "EncodedExamples":
        """The first `count` rows."""
        labels = None if self.labels is None else self.labels[:count]
        second = None if self.second is None else self.second.take(count)
        return EncodedExamples(self.input_ids[:count], self.segment_ids[:count], labels,
                               self.source[:count], second)

    def token_columns(self) -> dict[str, tuple[tf.Tensor, tf.Tensor]]:
        """input_ids and segment_ids as `ragged_column`s."""
        return {"input_ids": ragged_column(self.input_ids),
                "segment_ids": ragged_column(self.segment_ids)}

    def dataset(self) -> tf.data.Dataset:
        """One element per row: input_ids, input_mask, segment_ids, row (+ labels, + the
        `*_b` inputs of the second texts)."""
        if not len(self):
            raise ValueError("no examples to build a dataset from")
        columns = self.token_columns()
        if self.second is not None:
            columns.update({f"{name}_b": values for name, values
                            in self.second.token_columns().items()})
        labels = None
        if self.token_labels:
            columns["labels"] = ragged_column(self.labels)
        elif self.labels is not None:
            labels = tf.constant(np.asarray(self.labels))

        def element(row):
            features = {name: values[splits[row]:splits[row + 1]]
                        for name, (values, splits) in columns.items()}
            features["input_mask"] = tf.ones_like(features["input_ids"])
            if self.second is not None:
                features["input_mask_b"] = tf.ones_like(features["input_ids_b"])
            features["row"] = row
            if labels is not None:
                features["labels"] = labels[row]
            return features

        return tf.data.Dataset.range(len(self)).map(element,
                                                    num_parallel_calls=tf.data.AUTOTUNE)


def ragged_column(rows: Sequence[np.ndarray]) -> tuple[tf.Tensor, tf.Tensor]:
    """int32 rows of different lengths as (concatenated values, row splits)."""
    splits = np.concatenate([[0], np.cumsum([len(row) for row in rows])]).astype(np.int64)
    return tf.constant(np.concatenate(rows).astype(np.int32)), tf.constant(splits)


def padding_values(element_spec: dict[str, tf.TensorSpec], pad_id: int) -> dict[str, tf.Tensor]:
    values = {"input_ids": pad_id, "input_ids_b": pad_id, "labels": IGNORED_LABEL}
    return {name: tf.constant(values.get(name, 0), spec.dtype)
            for name, spec in element_spec.items()}


def bucketed(dataset: tf.data.Dataset, lengths: np.ndarray, batch_size: int,
             max_seq_length: int, pad_id: int) -> tf.data.Dataset:
    boundaries = choose_boundaries(lengths, max_length=max_seq_length)
    return bucket_by_length(dataset, batch_size, length_fn=row_length, boundaries=boundaries,
                            padding_values=padding_values(dataset.element_spec, pad_id))


def row_length(element: dict[str, tf.Tensor]) -> tf.Tensor:
    """Bucketing key: tokens of the row (of its longer text for siamese pairs)."""
    length = tf.shape(element["input_ids"])[0]
    if "input_ids_b" in element:
        length = tf.maximum(length, tf.shape(element["input_ids_b"])[0])
    return length


def model_inputs(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """The model inputs of a batch: the three BERT inputs (+ the `*_b` ones of pairs)."""
    return {name: batch[name] for name in INPUT_KEYS + SECOND_INPUT_KEYS if name in batch}


def inputs_and_labels(batch: dict[str, tf.Tensor]):
    """(x, y) for `fit`: x the model inputs, y the labels."""
    return model_inputs(batch), batch["labels"]


def training_batches(encoded: EncodedExamples, batch_size: int, max_seq_length: int,
                     pad_id: int = 0, seed: int = 0,
                     input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
    """Endless shuffled (x, y) batches, bucketed by length; one shard per input pipeline."""
    if encoded.labels is None:
        raise ValueError("training examples need labels")
    dataset = encoded.dataset()
    lengths = encoded.lengths
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
        lengths = lengths[input_context.input_pipeline_id::input_context.num_input_pipelines]
    dataset = dataset.shuffle(max(len(lengths), 1), seed=seed,
                              reshuffle_each_iteration=True).repeat()
    return bucketed(dataset, lengths, batch_size, max_seq_length, pad_id).map(
        inputs_and_labels).prefetch(tf.data.AUTOTUNE)


def prediction_batches(encoded: EncodedExamples, batch_size: int, max_seq_length: int,
                       pad_id: int = 0) -> tf.data.Dataset:
    """Every row once, bucketed by length; each batch keeps its rows' indices ("row")."""
    return bucketed(encoded.dataset(), encoded.lengths, batch_size, max_seq_length,
                    pad_id).prefetch(tf.data.AUTOTUNE)


def progress_bar(total: int, description: str, unit: str = "example"):
    """A tqdm bar on a terminal; a silent stand-in elsewhere (logs stay readable)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True,
                disable=not sys.stderr.isatty())
