"""tied_cross_entropy equals softmax cross-entropy on materialised logits, with gradients."""

import numpy as np
import pytest
import tensorflow as tf

from spanbert_tf import SpanBertConfig, SpanBertPretrainer
from spanbert_tf.layers.tied_cross_entropy import tied_cross_entropy, vocabulary_chunks
from tests.synthetic import pretraining_batch


def plain_loss_and_hits(hidden, embeddings, bias, labels):
    logits = tf.matmul(tf.cast(hidden, tf.float32), tf.cast(embeddings, tf.float32),
                       transpose_b=True) + bias
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
    return loss, hits


def loss_and_gradients(function, hidden, embeddings, bias, labels, upstream):
    with tf.GradientTape() as tape:
        tape.watch([hidden, embeddings, bias])
        loss, hits = function(hidden, embeddings, bias, labels)
        total = tf.reduce_sum(loss * upstream)
    return loss, hits, tape.gradient(total, [hidden, embeddings, bias])


def test_chunks_cover_the_vocabulary_once():
    assert vocabulary_chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert vocabulary_chunks(8, 8) == [(0, 8)]
    with pytest.raises(ValueError, match="chunk_size"):
        vocabulary_chunks(8, 0)


@pytest.mark.parametrize("recompute_logits", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 16, 50, 4096, None])
def test_matches_plain_cross_entropy_values_hits_and_gradients(chunk_size, recompute_logits):
    rng = np.random.default_rng(chunk_size or 0)
    vocab, width, rows = 50, 8, 12
    hidden = tf.constant(rng.normal(size=(rows, width)), tf.float32)
    embeddings = tf.constant(rng.normal(size=(vocab, width)), tf.float32)
    bias = tf.constant(rng.normal(size=vocab), tf.float32)
    # Labels in the first, a middle and the last (partial) chunk, and some argmax hits.
    labels = rng.integers(0, vocab, rows).astype("int32")
    labels[:3] = [0, vocab - 1, vocab // 2]
    logits = hidden.numpy() @ embeddings.numpy().T + bias.numpy()
    labels[3:6] = logits[3:6].argmax(-1)
    labels = tf.constant(labels)
    upstream = tf.constant(rng.uniform(0.5, 2.0, rows), tf.float32)

    def chunked(h, e, b, y):
        return tied_cross_entropy(h, e, b, y, chunk_size=chunk_size,
                                  recompute_logits=recompute_logits)

    ours = loss_and_gradients(chunked, hidden, embeddings, bias, labels, upstream)
    plain = loss_and_gradients(plain_loss_and_hits, hidden, embeddings, bias, labels, upstream)
    np.testing.assert_allclose(ours[0], plain[0], atol=2e-5)
    np.testing.assert_array_equal(ours[1], plain[1])
    assert ours[1].numpy()[3:6].tolist() == [1.0, 1.0, 1.0]
    for got, expected in zip(ours[2], plain[2]):
        np.testing.assert_allclose(got, expected, atol=2e-5)


def test_half_precision_inputs_give_float32_loss_and_half_gradients():
    rng = np.random.default_rng(0)
    hidden = tf.constant(rng.normal(size=(6, 8)), tf.float16)
    embeddings = tf.constant(rng.normal(size=(30, 8)) * 0.5, tf.float16)
    bias = tf.zeros([30])
    labels = tf.constant(rng.integers(0, 30, 6), tf.int32)
    loss, _, grads = loss_and_gradients(
        lambda h, e, b, y: tied_cross_entropy(h, e, b, y, chunk_size=8),
        hidden, embeddings, bias, labels, tf.ones([6]))
    plain, _, plain_grads = loss_and_gradients(
        plain_loss_and_hits, hidden, embeddings, bias, labels, tf.ones([6]))
    assert loss.dtype == tf.float32 and grads[0].dtype == tf.float16
    assert grads[1].dtype == tf.float16 and grads[2].dtype == tf.float32
    np.testing.assert_allclose(loss, plain, atol=1e-2)
    np.testing.assert_allclose(tf.cast(grads[0], tf.float32), tf.cast(plain_grads[0], tf.float32),
                               atol=1e-2)


def test_pretrainer_loss_and_accuracy_equal_the_logits_path():
    config = SpanBertConfig.preset("tiny", vocab_size=300)
    model = SpanBertPretrainer(config)
    model.compile(optimizer="sgd")
    batch = pretraining_batch(batch_size=3, length=32, vocab_size=config.vocab_size)
    outputs = model(batch)
    logits = model.logits(outputs)
    loss = model.compute_loss(x=batch, y_pred=outputs).numpy()

    def mean_ce(labels, logits, weights):
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits)
        return float(tf.reduce_sum(ce * weights) / tf.reduce_sum(weights))

    expected = (mean_ce(batch["masked_lm_ids"], logits["mlm_logits"], batch["masked_lm_weights"])
                + config.sbo_weight * mean_ce(outputs["sbo_ids"], logits["sbo_logits"],
                                              outputs["sbo_weights"]))
    assert loss == pytest.approx(expected, rel=1e-5)
    hits = np.argmax(logits["mlm_logits"], -1) == batch["masked_lm_ids"]
    weights = batch["masked_lm_weights"]
    metrics = {m.name: float(m.result()) for m in model.metrics}
    assert metrics["mlm_accuracy"] == pytest.approx((hits * weights).sum() / weights.sum())
