"""Length bucketing: boundaries from data, less padding than fixed length on real text."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf

from corpus_helpers import bundled_cased_vocab, bundled_files
from pipelines import corpus
from pipelines.bucketing import bucket_by_length, choose_boundaries, padding_fraction
from spanbert_tf.tokenizer import SpanBertTokenizer

MAX_LENGTH = 512


@pytest.fixture(scope="module")
def paragraph_dataset():
    """Real inputs: bundled-corpus paragraphs tokenized in tf.data, [CLS] ... [SEP], cut at 512."""
    tokenizer = SpanBertTokenizer(bundled_cased_vocab()[0])
    paragraphs = [p for d in corpus.iter_documents(bundled_files()) for p in d.paragraphs]
    paragraphs = paragraphs[::3]  # about 4,200 inputs: quick, still every kind of text

    def encode(text):
        ids = tokenizer.tokenize(text)[:MAX_LENGTH - 2]
        return {"input_ids": tf.concat([[tokenizer.cls_id], ids, [tokenizer.sep_id]], 0)}

    dataset = tf.data.Dataset.from_tensor_slices(paragraphs).map(encode).cache()
    lengths = [len(e["input_ids"]) for e in dataset.as_numpy_iterator()]
    return dataset, np.array(lengths)


@pytest.mark.parametrize("num_buckets, most_waste", [(8, 0.20), (16, 0.12)])
def test_bucketing_cuts_padding_waste_on_real_text(paragraph_dataset, num_buckets, most_waste):
    dataset, lengths = paragraph_dataset
    fixed = dataset.padded_batch(32, padded_shapes={"input_ids": [MAX_LENGTH]})
    batch_max = dataset.padded_batch(32)
    bucketed = bucket_by_length(dataset, batch_size=32, key="input_ids",
                                num_buckets=num_buckets)
    waste = {name: padding_fraction(batches, "input_ids")
             for name, batches in [("fixed 512", fixed), ("longest in batch", batch_max),
                                   (f"{num_buckets} buckets", bucketed)]}
    print(f"\n{len(lengths)} inputs, mean length {lengths.mean():.1f}, padding waste: "
          + ", ".join(f"{name} {fraction:.1%}" for name, fraction in waste.items()))
    assert waste["fixed 512"] > 0.8
    assert waste[f"{num_buckets} buckets"] < most_waste
    assert waste[f"{num_buckets} buckets"] < waste["longest in batch"] / 3


def test_every_input_appears_once_in_batches_of_similar_length(paragraph_dataset):
    dataset, lengths = paragraph_dataset
    boundaries = choose_boundaries(lengths, num_buckets=8)
    bucketed = bucket_by_length(dataset, batch_size=16, key="input_ids", boundaries=boundaries)
    seen = collections.Counter()
    for batch in bucketed.as_numpy_iterator():
        ids = batch["input_ids"]
        assert ids.shape[0] <= 16
        row_lengths = (ids != 0).sum(axis=1)
        seen.update(row_lengths.tolist())
        edges = [0, *boundaries, np.inf]
        bucket = np.searchsorted(boundaries, row_lengths, side="right")
        assert len(set(bucket)) == 1  # one bucket per batch
        assert ids.shape[1] == row_lengths.max() < edges[bucket[0] + 1]
    assert seen == collections.Counter(lengths.tolist())


def test_pad_to_bucket_boundary_gives_few_static_shapes(paragraph_dataset):
    dataset, lengths = paragraph_dataset
    bucketed = bucket_by_length(dataset, batch_size=32, key="input_ids", num_buckets=6,
                                max_length=MAX_LENGTH, pad_to_bucket_boundary=True,
                                drop_remainder=True)
    widths = {batch["input_ids"].shape for batch in bucketed.as_numpy_iterator()}
    assert len(widths) <= 7
    assert all(shape[0] == 32 and shape[1] % 8 == 0 and shape[1] <= MAX_LENGTH
               for shape in widths)


def test_choose_boundaries_minimises_padding():
    lengths = [5] * 50 + [40] * 30 + [200] * 20
    assert choose_boundaries(lengths, num_buckets=4) == [9, 41, 201]
    assert choose_boundaries(lengths, num_buckets=2) == [41, 201]  # 50 x 3 + 30 x 0 padded
    assert choose_boundaries(lengths, num_buckets=4, max_length=512) == [9, 41, 201, 513]
    assert choose_boundaries(lengths, num_buckets=1, max_length=100) == [101]
    assert choose_boundaries([3, 3, 3], num_buckets=8, multiple_of=1) == [4]
    assert choose_boundaries([600], max_length=512) == [513]
    assert len(choose_boundaries(np.arange(1, 100000), num_buckets=4)) == 4
    with pytest.raises(ValueError, match="at least one length"):
        choose_boundaries([])


def test_plain_tensor_elements_and_errors():
    dataset = tf.data.Dataset.from_generator(
        lambda: ([7] * n for n in [1, 2, 3, 50, 51, 52, 2]),
        output_signature=tf.TensorSpec([None], tf.int32))
    shapes = sorted(b.shape[1] for b in bucket_by_length(dataset, batch_size=3, num_buckets=2))
    assert shapes == [2, 3, 52]
    with pytest.raises(ValueError, match="needs max_length"):
        bucket_by_length(dataset, batch_size=3, pad_to_bucket_boundary=True)
    with pytest.raises(ValueError, match="strictly increasing"):
        bucket_by_length(dataset, batch_size=3, boundaries=[10, 5])
    with pytest.raises(ValueError, match="dict elements need key="):
        bucket_by_length(dataset.map(lambda x: {"ids": x}), batch_size=3)
