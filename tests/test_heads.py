"""MLM and SBO heads against independent numpy implementations of their equations."""

import math

import keras
import numpy as np
import pytest

from spanbert_tf.layers import MaskedLMHead, SpanBoundaryHead
from spanbert_tf.models.pretrainer import compact_span_targets
from tests.synthetic import pretraining_batch

HIDDEN, VOCAB, POSITION_SIZE, MAX_TARGETS = 16, 40, 6, 15


def np_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def np_layer_norm(x, gamma, beta, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def randomise(layer, seed):
    """Non-trivial values for every weight, so LayerNorm scales and biases are exercised."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        weight.assign(rng.normal(0, 0.5, weight.shape).astype("float32"))


@pytest.fixture()
def embedding():
    layer = keras.layers.Embedding(VOCAB, HIDDEN)
    layer.build((None,))
    randomise(layer, 1)
    return layer


def test_sbo_head_matches_the_equations(embedding):
    head = SpanBoundaryHead(embedding, hidden_size=HIDDEN, position_size=POSITION_SIZE,
                            max_targets=MAX_TARGETS)
    head.build()
    randomise(head, 2)
    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(1, 20, HIDDEN)).astype("float32")
    start, end = 4, 13  # a 10-token span: boundaries are 3 and 14
    offsets = np.arange(end - start + 1)[None]
    boundaries = np.tile([[start - 1, end + 1]], (1, offsets.shape[1], 1))
    logits = head(hidden, boundaries, offsets).numpy()[0]

    w = {v.path.split("/", 1)[1]: v.numpy() for v in head.weights}
    expected = []
    for i in range(start, end + 1):
        z = np.concatenate([hidden[0, start - 1], hidden[0, end + 1],
                            w["position_embeddings"][i - start]])
        y = np_layer_norm(np_gelu(z @ w["dense1/kernel"] + w["dense1/bias"]),
                          w["layer_norm1/gamma"], w["layer_norm1/beta"])
        y = np_layer_norm(np_gelu(y @ w["dense2/kernel"] + w["dense2/bias"]),
                          w["layer_norm2/gamma"], w["layer_norm2/beta"])
        expected.append(embedding.embeddings.numpy() @ y + w["bias"])
    np.testing.assert_allclose(logits, np.stack(expected), atol=1e-5, rtol=1e-5)


def test_relative_positions_from_the_example_layout():
    batch = pretraining_batch(batch_size=1, length=40, spans=((4, 13), (20, 20)))
    boundaries, offsets, ids, weights = compact_span_targets(batch, num_slots=11)
    offsets, weights = offsets.numpy()[0], weights.numpy()[0]
    assert offsets[0] == 0, "first token of a span uses relative position 0"
    assert offsets[9] == 9, "last token of a 10-token span uses relative position 9"
    np.testing.assert_array_equal(boundaries.numpy()[0, :10], [[3, 14]] * 10)
    np.testing.assert_array_equal(boundaries.numpy()[0, 10], [19, 21])
    assert offsets[10] == 0 and weights.sum() == 11
    np.testing.assert_array_equal(ids.numpy()[0], batch["input_ids"][0, [*range(4, 14), 20]])


def test_compaction_keeps_order_and_pads_with_zero_weight():
    batch = pretraining_batch(batch_size=2, length=40)
    boundaries, offsets, ids, weights = compact_span_targets(batch, num_slots=17)
    weights = weights.numpy()
    assert weights.shape == (2, 17) and weights[:, :15].min() == 1 and weights[:, 15:].max() == 0
    np.testing.assert_array_equal(ids.numpy()[:, :15], batch["masked_lm_ids"][:, :15])


def test_sbo_targets_beyond_masked_positions_are_rejected():
    batch = pretraining_batch(batch_size=1, length=40)
    with pytest.raises(Exception, match="more SBO targets than masked positions"):
        compact_span_targets(batch, num_slots=5)


def test_mlm_head_gathers_then_matches_the_equations(embedding):
    head = MaskedLMHead(embedding, hidden_size=HIDDEN)
    head.build()
    randomise(head, 4)
    rng = np.random.default_rng(5)
    hidden = rng.normal(size=(2, 9, HIDDEN)).astype("float32")
    positions = np.array([[1, 4, 8], [0, 0, 2]])
    logits = head(hidden, positions).numpy()
    assert logits.shape == (2, 3, VOCAB) and logits.dtype == np.float32
    w = {v.path.split("/", 1)[1]: v.numpy() for v in head.weights}
    gathered = np.take_along_axis(hidden, positions[..., None], 1)
    y = np_layer_norm(np_gelu(gathered @ w["transform/kernel"] + w["transform/bias"]),
                      w["layer_norm/gamma"], w["layer_norm/beta"])
    np.testing.assert_allclose(logits, y @ embedding.embeddings.numpy().T + w["bias"],
                               atol=1e-5, rtol=1e-5)


def test_head_configs_are_complete(embedding):
    for head in (MaskedLMHead(embedding, hidden_size=HIDDEN, layer_norm_epsilon=1e-6),
                 SpanBoundaryHead(embedding, hidden_size=HIDDEN, position_size=7, max_targets=9)):
        config = head.get_config()
        clone = type(head)(embedding, **{k: v for k, v in config.items()})
        assert clone.get_config() == config
