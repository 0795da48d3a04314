import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from spanbert_tf import SpanBertConfig, SpanBertEncoder

CONFIG = SpanBertConfig.preset("tiny", vocab_size=300, max_position_embeddings=64)


@pytest.fixture(scope="module")
def encoder():
    return SpanBertEncoder(CONFIG)


def batch(length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, CONFIG.vocab_size, (3, length)).astype("int32")
    ids[1, 8:] = 0
    ids[2, 5:] = 0
    return {"input_ids": ids, "input_mask": (ids != 0).astype("int32"),
            "segment_ids": np.zeros_like(ids)}


def test_shapes_and_hidden_states(encoder):
    outputs = encoder(batch(), output_hidden_states=True)
    assert outputs["sequence_output"].shape == (3, 12, CONFIG.hidden_size)
    assert len(outputs["hidden_states"]) == CONFIG.num_layers + 1
    np.testing.assert_array_equal(outputs["hidden_states"][-1], outputs["sequence_output"])


def test_padding_does_not_change_real_tokens(encoder):
    short = batch()
    ids = short["input_ids"][2:3, :5]
    alone = encoder({"input_ids": ids, "input_mask": np.ones_like(ids)})["sequence_output"]
    padded = encoder(short)["sequence_output"][2:3, :5]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_default_mask_and_segments_match_explicit_ones(encoder):
    inputs = batch()
    explicit = encoder(inputs)["sequence_output"]
    implicit = encoder({"input_ids": inputs["input_ids"]})["sequence_output"]
    np.testing.assert_allclose(explicit, implicit, atol=1e-6)


def test_segment_ids_matter(encoder):
    inputs = batch()
    other = dict(inputs, segment_ids=np.ones_like(inputs["input_ids"]))
    assert not np.allclose(encoder(inputs)["sequence_output"], encoder(other)["sequence_output"])


def test_too_long_input_is_a_clear_error(encoder):
    ids = np.ones((1, CONFIG.max_position_embeddings + 1), "int32")
    with pytest.raises(ValueError, match="longer than max_position_embeddings=64"):
        encoder({"input_ids": ids})
    run = tf.function(lambda x: encoder({"input_ids": x})["sequence_output"],
                      input_signature=[tf.TensorSpec([None, None], tf.int32)])
    assert run(ids[:, :64]).shape == (1, 64, CONFIG.hidden_size)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_position_embeddings=64"):
        run(ids)


def test_dropout_only_in_training(encoder):
    inputs = batch()
    first = encoder(inputs, training=False)["sequence_output"]
    np.testing.assert_array_equal(first, encoder(inputs, training=False)["sequence_output"])
    assert not np.allclose(first, encoder(inputs, training=True)["sequence_output"])


def test_keras_file_round_trip(encoder, tmp_path):
    path = tmp_path / "encoder.keras"
    encoder.save(path)
    restored = keras.models.load_model(path)
    assert restored.config == CONFIG
    np.testing.assert_array_equal(encoder(batch())["sequence_output"],
                                  restored(batch())["sequence_output"])


def test_weights_only_round_trip(encoder, tmp_path):
    path = tmp_path / "encoder.weights.h5"
    encoder.save_weights(path)
    fresh = SpanBertEncoder(CONFIG)
    assert not np.allclose(fresh(batch())["sequence_output"], encoder(batch())["sequence_output"])
    fresh.load_weights(path)
    np.testing.assert_array_equal(fresh(batch())["sequence_output"],
                                  encoder(batch())["sequence_output"])


def test_get_config_is_complete(encoder):
    clone = SpanBertEncoder.from_config(encoder.get_config())
    assert clone.config == encoder.config
    assert len(clone.weights) == len(encoder.weights) == 5 + 12 * CONFIG.num_layers


def test_initialisation_follows_bert():
    config = SpanBertConfig.preset("tiny", vocab_size=5000, hidden_size=128, num_heads=2)
    model = SpanBertEncoder(config)
    words = model.token_embedding.embeddings.numpy()
    assert abs(words.std() - 0.02 * 0.88) < 0.002  # truncated normal, stddev 0.02
    assert np.abs(words).max() <= 0.04 + 1e-6
    layer_norm = model.embeddings.layer_norm
    np.testing.assert_array_equal(layer_norm.gamma.numpy(), 1.0)
    assert layer_norm.epsilon == 1e-12


@pytest.mark.parametrize("inputs, units", [(7, 3), (1024, 5), (5, 1024), (1024, 2048)],
                         ids=["plain", "aliased-rows", "aliased-upstream", "both-aliased"])
def test_dense_trains_with_the_same_gradients(monkeypatch, inputs, units):
    """In training `BiasAddDense` takes `_training_matmul`, whose kernel gradient pads
    operands with a row stride that is a multiple of 4 KiB: same values and gradients
    as the plain inference graph."""
    from spanbert_tf.layers import common

    taken = []
    original = common._training_matmul
    monkeypatch.setattr(common, "_training_matmul", lambda *a: taken.append(1) or original(*a))
    layer = common.dense(units, 0.5, "dense")
    layer.build((None, inputs))
    rows = tf.random.stateless_normal([2, 5, inputs], seed=[1, 2])
    upstream = tf.random.stateless_normal([2, 5, units], seed=[3, 4])

    def outputs_and_grads(training):
        with tf.GradientTape() as tape:
            tape.watch(rows)
            outputs = layer(rows, training=training)
            total = tf.reduce_sum(outputs * upstream)
        return [outputs] + tape.gradient(total, [rows, layer.kernel, layer.bias])

    trained, inferred = outputs_and_grads(True), outputs_and_grads(False)
    assert taken == [1]
    for got, expected in zip(trained, inferred):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    kernel_grad = np.reshape(rows, [-1, inputs]).T @ np.reshape(upstream, [-1, units])
    np.testing.assert_allclose(trained[2], kernel_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6), ("float16", 2e-3)])
def test_gelu_trains_with_the_same_values_and_gradients(dtype, tolerance):
    """In training the GeLU and its gradient are fused XLA loops: same values and
    gradients as TensorFlow's ops on the inference formula, for both signs and the tails."""
    from spanbert_tf.layers.common import gelu

    x = tf.cast(tf.concat([tf.linspace(-8.0, 8.0, 257),
                           tf.random.stateless_normal([1024], seed=[5, 6]) * 3], 0), dtype)
    upstream = tf.cast(tf.random.stateless_normal(x.shape, seed=[7, 8]), dtype)

    def value_and_grad(training):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = gelu(x, training=training)
            total = tf.reduce_sum(tf.cast(y * upstream, tf.float32))
        return y, tape.gradient(total, x)

    (trained, trained_grad), (plain, plain_grad) = value_and_grad(True), value_and_grad(False)
    assert trained.dtype == plain.dtype == trained_grad.dtype == dtype
    np.testing.assert_allclose(np.float32(trained), np.float32(plain), rtol=tolerance,
                               atol=tolerance)
    np.testing.assert_allclose(np.float32(trained_grad), np.float32(plain_grad),
                               rtol=tolerance, atol=tolerance)
    exact = np.float64(np.float32(x))
    derivative = 0.5 * (1 + np.vectorize(math.erf)(exact / np.sqrt(2))) + exact * np.exp(
        -exact ** 2 / 2) / np.sqrt(2 * np.pi)
    np.testing.assert_allclose(np.float32(trained_grad), derivative * np.float32(upstream),
                               rtol=10 * tolerance, atol=10 * tolerance)


def test_dropout_rate_and_scale_are_exact_in_expectation():
    """16-bit draws: drop probability round(rate * 65536) / 65536, kept values scaled so
    that the mean is preserved; Keras' config and seeding; identity at inference."""
    from spanbert_tf.layers.dropout import Dropout

    layer = Dropout(0.1, seed=7)
    ones = tf.ones([500, 2000])
    out = layer(ones, training=True).numpy()
    dropped = (out == 0).mean()
    # 1e6 Bernoulli(0.1) draws: standard error 3e-4.
    assert abs(dropped - 6554 / 65536) < 1.5e-3
    np.testing.assert_allclose(out[out != 0], 65536 / (65536 - 6554), rtol=1e-6)
    assert abs(out.mean() - 1.0) < 3e-3
    again = layer(ones, training=True).numpy()
    assert (again != out).any()  # a fresh mask per call
    assert np.array_equal(Dropout(0.1, seed=7)(ones, training=True).numpy(), out)  # seeded
    np.testing.assert_array_equal(layer(ones, training=False), ones)
    assert Dropout.from_config(layer.get_config()).rate == 0.1
    odd = layer(tf.ones([3, 5, 7]), training=True)  # odd element count
    assert odd.shape == (3, 5, 7)
