import keras
import numpy as np
import pytest
import tensorflow as tf

from spanbert_tf import SpanBertConfig, SpanBertPretrainer
from spanbert_tf.models.pretrainer import MLM_FEATURES
from tests.synthetic import pretraining_batch
from pipelines.strategy import create_strategy

CONFIG = SpanBertConfig.preset("tiny", vocab_size=256, max_position_embeddings=64,
                               hidden_dropout=0.0, attention_dropout=0.0)
STEPS = 80


def memorise(model: SpanBertPretrainer, batch: dict) -> tuple[float, dict]:
    """Fits one fixed batch repeatedly; returns the initial loss and the final metrics."""
    dataset = tf.data.Dataset.from_tensors(batch)
    initial = model.evaluate(dataset, verbose=0, return_dict=True)["loss"]
    model.fit(dataset.repeat(STEPS), epochs=1, verbose=0)
    return initial, model.evaluate(dataset, verbose=0, return_dict=True)


def compile_for_memorisation(model):
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=0.01))


def test_memorises_a_fixed_batch_single_device():
    keras.utils.set_random_seed(0)
    model = SpanBertPretrainer(CONFIG)
    compile_for_memorisation(model)
    initial, final = memorise(model, pretraining_batch(batch_size=8, length=32,
                                                       vocab_size=CONFIG.vocab_size))
    assert final["loss"] < 0.1 * initial
    assert final["mlm_accuracy"] > 0.95 and final["sbo_accuracy"] > 0.95
    assert final["loss"] == pytest.approx(final["mlm_loss"] + final["sbo_loss"], rel=1e-4)


def test_memorises_under_mirrored_strategy_with_two_cpu_replicas():
    keras.utils.set_random_seed(0)
    strategy = create_strategy(cpu_replicas=2)
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = SpanBertPretrainer(CONFIG)
        compile_for_memorisation(model)
    initial, final = memorise(model, pretraining_batch(batch_size=8, length=32,
                                                       vocab_size=CONFIG.vocab_size))
    assert final["loss"] < 0.1 * initial


def test_mirrored_loss_equals_single_device_loss():
    """Each replica's loss is its share of the global mean, so 2 replicas report and
    optimise exactly what one device does, even when the replicas hold different
    numbers of targets (a mean of replica means would differ)."""
    batch = pretraining_batch(batch_size=8, length=32, vocab_size=CONFIG.vocab_size)
    batch["masked_lm_weights"][4:, 3:] = 0.0  # the second replica has fewer MLM targets
    batch["span_target_weights"][4:, 2] = 0.0  # ... and fewer SBO targets
    keras.utils.set_random_seed(0)
    single = SpanBertPretrainer(CONFIG)
    weights = single.get_weights()
    single.compile(optimizer="sgd")
    strategy = create_strategy(cpu_replicas=2)
    with strategy.scope():
        mirrored = SpanBertPretrainer(CONFIG)
        mirrored.set_weights(weights)
        mirrored.compile(optimizer="sgd")
    dataset = tf.data.Dataset.from_tensors(batch)
    expected = single.evaluate(dataset, verbose=0, return_dict=True)
    got = mirrored.evaluate(dataset, verbose=0, return_dict=True)
    for name in ("loss", "mlm_loss", "sbo_loss", "mlm_accuracy", "sbo_accuracy"):
        assert got[name] == pytest.approx(expected[name], rel=1e-5), name
    single.fit(dataset, verbose=0)
    mirrored.fit(dataset, verbose=0)
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_memorises_with_mixed_float16():
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = SpanBertPretrainer(CONFIG)
        compile_for_memorisation(model)
        batch = pretraining_batch(batch_size=8, length=32, vocab_size=CONFIG.vocab_size)
        logits = model.logits(model(batch))
        assert model.encoder(batch)["sequence_output"].dtype == tf.float16
        assert logits["mlm_logits"].dtype == tf.float32
        assert logits["sbo_logits"].dtype == tf.float32
        assert model.encoder.token_embedding.embeddings.dtype == tf.float32
        initial, final = memorise(model, batch)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert final["loss"] < 0.1 * initial


def test_zero_weight_slots_do_not_contribute():
    model = SpanBertPretrainer(CONFIG)
    model.compile(optimizer="sgd")
    batch = pretraining_batch(batch_size=2, length=32, vocab_size=CONFIG.vocab_size)
    changed = dict(batch)
    changed["masked_lm_ids"] = batch["masked_lm_ids"].copy()
    changed["masked_lm_ids"][batch["masked_lm_weights"] == 0] = 7
    changed["span_target_ids"] = batch["span_target_ids"].copy()
    changed["span_target_ids"][batch["span_target_weights"] == 0] = 9
    loss = [model.compute_loss(x=b, y_pred=model(b)).numpy() for b in (batch, changed)]
    assert loss[0] == pytest.approx(loss[1], rel=1e-6)


def test_word_embeddings_are_tied_and_counted_once():
    model = SpanBertPretrainer(CONFIG)
    paths = [w.path for w in model.weights]
    assert len(paths) == len(set(paths))
    embedding_matrices = [w for w in model.weights if w.shape == (CONFIG.vocab_size,
                                                                    CONFIG.hidden_size)]
    assert len(embedding_matrices) == 1


def test_missing_feature_is_named():
    model = SpanBertPretrainer(CONFIG)
    batch = pretraining_batch(batch_size=1, length=32, vocab_size=CONFIG.vocab_size)
    del batch["span_boundaries"]
    with pytest.raises(ValueError, match=r"missing \['span_boundaries'\]"):
        model(batch)


def test_sbo_weight_zero_trains_mlm_only_and_skips_the_sbo_head():
    """sbo_weight 0: loss = the full model's MLM loss, only MLM fields are read, the SBO
    head's own weights are neither computed nor updated (the word embeddings it shares
    with the encoder and the MLM decoder still train), and no SBO metric is reported."""
    keras.utils.set_random_seed(0)
    full = SpanBertPretrainer(CONFIG)
    mlm_only = SpanBertPretrainer(CONFIG.replace(sbo_weight=0.0))
    mlm_only.set_weights(full.get_weights())
    batch = pretraining_batch(batch_size=4, length=32, vocab_size=CONFIG.vocab_size)
    mlm_batch = {name: batch[name] for name in MLM_FEATURES}
    full.compile(optimizer="sgd")
    mlm_only.compile(optimizer=keras.optimizers.SGD(0.5))
    outputs = mlm_only(mlm_batch)
    assert sorted(outputs) == ["mlm_hidden"]
    assert sorted(mlm_only.logits(outputs)) == ["mlm_logits"]
    expected = full.evaluate(tf.data.Dataset.from_tensors(batch), verbose=0, return_dict=True)
    got = mlm_only.evaluate(tf.data.Dataset.from_tensors(mlm_batch), verbose=0,
                            return_dict=True)
    assert sorted(got) == ["loss", "mlm_accuracy", "mlm_loss"]
    assert got["loss"] == pytest.approx(expected["mlm_loss"], rel=1e-6)
    assert got["mlm_accuracy"] == pytest.approx(expected["mlm_accuracy"])
    word_embeddings = mlm_only.encoder.token_embedding.embeddings
    sbo_own = [w for w in mlm_only.sbo_head.weights if w is not word_embeddings]
    assert len(sbo_own) == len(mlm_only.sbo_head.weights) - 1
    sbo_before = [w.numpy() for w in sbo_own]
    mlm_before = [w.numpy() for w in mlm_only.mlm_head.weights]
    words_before = word_embeddings.numpy()
    mlm_only.fit(tf.data.Dataset.from_tensors(mlm_batch).repeat(2), verbose=0)
    for before, weight in zip(sbo_before, sbo_own):
        np.testing.assert_array_equal(before, weight.numpy())
    # The word embeddings (input and tied MLM decoder) train: the SBO head shares them.
    trained = {v.path for v in mlm_only.trainable_variables}
    assert word_embeddings.path in trained
    assert not trained & {w.path for w in sbo_own}
    assert not np.array_equal(words_before, word_embeddings.numpy())
    assert any(not np.array_equal(before, weight.numpy())
               for before, weight in zip(mlm_before, mlm_only.mlm_head.weights)
               if weight is not word_embeddings)


def test_keras_file_and_weights_round_trip(tmp_path):
    model = SpanBertPretrainer(CONFIG)
    batch = pretraining_batch(batch_size=2, length=32, vocab_size=CONFIG.vocab_size)
    model.save(tmp_path / "pretrainer.keras")
    restored = keras.models.load_model(tmp_path / "pretrainer.keras")
    expected = model.logits(model(batch))
    for key, value in restored.logits(restored(batch)).items():
        np.testing.assert_array_equal(expected[key], value)
    model.save_weights(tmp_path / "pretrainer.weights.h5")
    fresh = SpanBertPretrainer(CONFIG)
    fresh.load_weights(tmp_path / "pretrainer.weights.h5")
    np.testing.assert_array_equal(expected["sbo_logits"], fresh.logits(fresh(batch))["sbo_logits"])


def test_config_and_encoder_must_agree():
    model = SpanBertPretrainer(CONFIG)
    with pytest.raises(ValueError, match="disagree"):
        SpanBertPretrainer(config=CONFIG.replace(num_layers=3), encoder=model.encoder)
    assert SpanBertPretrainer(encoder=model.encoder).encoder is model.encoder
