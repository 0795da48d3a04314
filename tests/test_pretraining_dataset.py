"""The pretraining input pipeline: determinism, epochs, resume, sharding, errors, fit."""

import collections
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.pretraining_dataset import make_pretraining_dataset
from pipelines.pretraining_records import serialize_segment
from pipelines.span_masking import SpanMaskingConfig, SpecialTokenIds
from spanbert_tf import SpanBertConfig, SpanBertPretrainer
from tests.corpus_helpers import minilm_vocab
from tests.masking_data import shard_pattern
from pipelines.strategy import create_strategy

CONFIG = SpanMaskingConfig()  # length 512, the official recipe
TOY_SPECIAL = SpecialTokenIds(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=50)
TOY_CONFIG = SpanMaskingConfig(max_seq_length=16)


@pytest.fixture(scope="module")
def special():
    return SpecialTokenIds.from_vocab(minilm_vocab())


def masks(dataset, batches):
    return [batch["masked_lm_positions"].numpy() for batch in dataset.take(batches)]


def write_toy_shards(directory, counts=(10, 10), length=12):
    """Shards of numbered records: record r holds ids [1, 10 + r % 40, ..., 2]."""
    os.makedirs(directory, exist_ok=True)
    paths, record = [], 0
    for shard, count in enumerate(counts):
        path = os.path.join(directory, f"train-{shard:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(count):
                ids = [1] + [6 + (record + i) % 40 for i in range(length - 2)] + [2]
                starts = [0] + [1] * (length - 2) + [0]
                writer.write(serialize_segment(ids, starts))
                record += 1
        paths.append(path)
    return paths


def original_ids(batch):
    """The unmasked records of a batch (masked positions hold their masked_lm_ids)."""
    ids = batch["input_ids"].numpy().copy()
    weights = batch["masked_lm_weights"].numpy() > 0
    rows = np.nonzero(weights)[0]
    ids[rows, batch["masked_lm_positions"].numpy()[weights]] = (
        batch["masked_lm_ids"].numpy()[weights])
    return ids


def test_batches_have_static_shapes(special):
    dataset = make_pretraining_dataset(shard_pattern(), CONFIG, special, batch_size=4, seed=1)
    spec = dataset.element_spec
    assert spec["input_ids"].shape == (4, 512) and spec["input_ids"].dtype == tf.int32
    assert spec["masked_lm_weights"].shape == (4, 77)
    assert spec["masked_lm_weights"].dtype == tf.float32
    assert spec["span_target_ids"].shape == (4, 77, 15)
    batch = next(iter(dataset))
    assert np.all(batch["masked_lm_weights"].numpy().sum(axis=1) >= 70)


def test_one_seed_one_stream_whatever_the_batching_or_restart(special):
    """Example i of the stream is masked the same way whatever the batching or restart."""
    def stream(seed=3, batch_size=8, start_example=0, batches=6):
        dataset = make_pretraining_dataset(shard_pattern(), CONFIG, special, batch_size=batch_size,
                                           seed=seed, shuffle_buffer=64,
                                           start_example=start_example)
        return np.concatenate(masks(dataset, batches))

    first = stream()
    np.testing.assert_array_equal(first, stream())
    np.testing.assert_array_equal(first, stream(batch_size=4, batches=12))
    np.testing.assert_array_equal(first[24:], stream(start_example=24, batches=3))
    assert not np.array_equal(first, stream(seed=4))


def test_masks_are_redrawn_every_epoch(tmp_path):
    write_toy_shards(tmp_path, counts=(12, 12))
    pattern = os.path.join(tmp_path, "*.tfrecord")
    # repeat=True: unshuffled, record r comes back as example r + 24 with a new mask.
    repeated = make_pretraining_dataset(pattern, TOY_CONFIG, TOY_SPECIAL, batch_size=4,
                                        seed=1, shuffle_buffer=1)
    batches = list(repeated.take(12))
    ids = np.concatenate([original_ids(b) for b in batches])
    positions = np.concatenate([b["masked_lm_positions"].numpy() for b in batches])
    np.testing.assert_array_equal(ids[:24], ids[24:])
    assert not np.array_equal(positions[:24], positions[24:])
    # repeat=False: every iteration (Keras epoch) draws new masks, reproducibly.
    def one_pass():
        return make_pretraining_dataset(pattern, TOY_CONFIG, TOY_SPECIAL, batch_size=4, seed=1,
                                        shuffle_buffer=1, repeat=False)

    dataset = one_pass()
    epoch_1, epoch_2 = masks(dataset, 6), masks(dataset, 6)
    assert len(epoch_1) == len(epoch_2) == 6
    assert not all(np.array_equal(a, b) for a, b in zip(epoch_1, epoch_2))
    for a, b in zip(epoch_1, masks(one_pass(), 6)):
        np.testing.assert_array_equal(a, b)


def test_one_pass_reads_every_record_once(tmp_path):
    write_toy_shards(tmp_path, counts=(9, 11))
    dataset = make_pretraining_dataset(os.path.join(tmp_path, "*.tfrecord"), TOY_CONFIG,
                                       TOY_SPECIAL, batch_size=4, seed=2, shuffle_buffer=8,
                                       repeat=False)
    seen = collections.Counter(int(row[1]) - 6 for batch in dataset for row in original_ids(batch))
    assert sum(seen.values()) == 20 and set(seen) == set(range(20))  # 20 = 5 full batches


def test_input_pipelines_read_disjoint_shares(tmp_path):
    write_toy_shards(tmp_path, counts=(8, 8, 8, 8))
    pattern = os.path.join(tmp_path, "*.tfrecord")

    def records(pipeline_id, pipelines):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines,
                                             input_pipeline_id=pipeline_id)
        dataset = make_pretraining_dataset(pattern, TOY_CONFIG, TOY_SPECIAL, batch_size=2, seed=4,
                                           input_context=context, repeat=False)
        return {int(row[1]) - 6 for batch in dataset for row in original_ids(batch)}

    by_file = [records(i, 2) for i in range(2)]
    assert not by_file[0] & by_file[1] and len(by_file[0] | by_file[1]) == 32
    write_toy_shards(tmp_path / "one", counts=(16,))
    pattern = os.path.join(tmp_path, "one", "*.tfrecord")
    by_record = [records(i, 2) for i in range(2)]  # fewer files than pipelines
    assert not by_record[0] & by_record[1] and len(by_record[0] | by_record[1]) == 16


def test_shard_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        make_pretraining_dataset(os.path.join(tmp_path, "nothing-here-*.tfrecord"), TOY_CONFIG,
                                 TOY_SPECIAL, batch_size=2)
    good, spare = write_toy_shards(tmp_path, counts=(6, 6))
    empty = os.path.join(tmp_path, "train-00002.tfrecord")
    open(empty, "wb").close()
    dataset = make_pretraining_dataset(os.path.join(tmp_path, "*.tfrecord"), TOY_CONFIG,
                                       TOY_SPECIAL, batch_size=2, repeat=False)
    assert sum(1 for _ in dataset) == 6  # the empty shard is skipped
    with pytest.raises(ValueError, match="every pretraining shard is empty"):
        make_pretraining_dataset(empty, TOY_CONFIG, TOY_SPECIAL, batch_size=2)

    data = bytearray(open(good, "rb").read())
    open(good, "wb").write(data[: len(data) - 7])  # truncated file
    with pytest.raises(ValueError, match="train-00000"):
        make_pretraining_dataset(good, TOY_CONFIG, TOY_SPECIAL, batch_size=2)
    data = bytearray(open(spare, "rb").read())
    data[40] ^= 0xFF  # a payload byte: the framing is intact, the record CRC is not
    open(spare, "wb").write(data)
    with pytest.raises(ValueError, match="train-00001"):
        make_pretraining_dataset(spare, TOY_CONFIG, TOY_SPECIAL, batch_size=2, validate="full")
    with pytest.raises(ValueError, match="validate"):
        make_pretraining_dataset(spare, TOY_CONFIG, TOY_SPECIAL, batch_size=2, validate="some")


def fit_pretrainer(strategy, model_config, dataset_fn, steps=3):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = SpanBertPretrainer(model_config)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    data = strategy.distribute_datasets_from_function(dataset_fn)
    history = model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False).history
    assert np.isfinite(history["loss"][-1])
    assert history["sbo_loss"][-1] > 0 and history["mlm_loss"][-1] > 0


def test_real_batches_feed_the_pretrainer(special):
    """Length 512, P = S = 77: the layout `SpanBertPretrainer` reads (compact_span_targets)."""
    model_config = SpanBertConfig.preset("tiny", vocab_size=special.vocab_size, num_layers=1)
    fit_pretrainer(tf.distribute.get_strategy(), model_config, lambda context: (
        make_pretraining_dataset(shard_pattern(), CONFIG, special, batch_size=2, seed=9,
                                 shuffle_buffer=32, input_context=context)), steps=2)


def test_mirrored_strategy_gets_per_replica_batches(tmp_path):
    write_toy_shards(tmp_path, counts=(16, 16), length=32)
    config = SpanMaskingConfig(max_seq_length=32)
    global_batch = 8

    def dataset_fn(context):
        batch_size = context.get_per_replica_batch_size(global_batch)
        assert batch_size == 4
        return make_pretraining_dataset(os.path.join(tmp_path, "*.tfrecord"), config,
                                        TOY_SPECIAL, batch_size=batch_size, seed=9,
                                        input_context=context)

    model_config = SpanBertConfig.preset("tiny", vocab_size=TOY_SPECIAL.vocab_size,
                                         max_position_embeddings=32, num_layers=1)
    fit_pretrainer(create_strategy(cpu_replicas=2), model_config,
                   dataset_fn)
