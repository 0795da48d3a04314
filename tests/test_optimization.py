import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.optimization import RECIPES, AdamWGlobalClip, WarmupLinearDecay, create_optimizer
from pipelines.strategy import create_strategy, per_replica_batch_size, tf_config_workers


def test_warmup_then_linear_decay_to_zero():
    schedule = WarmupLinearDecay(peak=1e-3, warmup_steps=10, total_steps=110)
    values = {step: float(schedule(step)) for step in (0, 5, 10, 60, 110, 200)}
    assert values[0] == 0.0
    assert values[5] == pytest.approx(5e-4)
    assert values[10] == pytest.approx(1e-3)
    assert values[60] == pytest.approx(5e-4)
    assert values[110] == 0.0 and values[200] == 0.0
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupLinearDecay(1e-3, warmup_steps=20, total_steps=10)


def test_recipes_hold_the_paper_numbers():
    large = RECIPES["spanbert-large"]
    assert (large.peak_learning_rate, large.warmup_steps, large.total_steps) == (
        1e-4, 10_000, 2_400_000)
    assert (large.global_batch_size, large.max_seq_length) == (256, 512)
    assert (large.weight_decay, large.epsilon, large.clip_norm) == (0.01, 1e-8, 1.0)
    optimizer = create_optimizer(total_steps=100, **large.optimizer_args())
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.999, 1e-8)


def test_weight_decay_skips_bias_and_layer_norm():
    dense = keras.layers.Dense(4)
    norm = keras.layers.LayerNormalization()
    dense.build((None, 4))
    norm.build((None, 4))
    for variable in dense.weights + norm.weights:
        variable.assign(np.ones(variable.shape, "float32"))
    optimizer = create_optimizer(total_steps=10, peak_learning_rate=0.5, warmup_steps=0,
                                 weight_decay=0.1)
    variables = dense.weights + norm.weights
    optimizer.apply_gradients([(tf.zeros(v.shape), v) for v in variables])
    np.testing.assert_allclose(dense.kernel.numpy(), 1 - 0.5 * 0.1)  # decayed
    for variable in (dense.bias, norm.gamma, norm.beta):
        np.testing.assert_array_equal(variable.numpy(), 1.0)


def sgd_like_step(optimizer_factory, strategy):
    """One step where Adam is ~linear in the gradient (huge epsilon) and the two replicas
    send [3, 0] and [0, 4]: global-norm clipping of their sum gives [0.6, 0.8]."""
    with strategy.scope():
        variable = keras.Variable(np.zeros(2, "float32"))
        optimizer = optimizer_factory()
        optimizer.build([variable])

    @tf.function
    def step():
        def replica_fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            grad = tf.where(tf.equal(replica, 0), [3.0, 0.0], [0.0, 4.0])
            optimizer.apply_gradients([(grad, variable)])
        strategy.run(replica_fn)

    step()
    return variable.numpy() / variable.numpy().sum()


def test_clipping_acts_on_the_replica_sum():
    strategy = create_strategy(cpu_replicas=2)
    ours = sgd_like_step(lambda: AdamWGlobalClip(
        learning_rate=1.0, epsilon=1e3, weight_decay=0.0, clip_norm=1.0), strategy)
    np.testing.assert_allclose(ours, [0.6 / 1.4, 0.8 / 1.4], rtol=1e-4)
    # Keras' own global_clipnorm clips each replica first: [1, 0] + [0, 1].
    keras_default = sgd_like_step(lambda: keras.optimizers.AdamW(
        learning_rate=1.0, epsilon=1e3, weight_decay=0.0, global_clipnorm=1.0), strategy)
    np.testing.assert_allclose(keras_default, [0.5, 0.5], rtol=1e-4)


def test_clipping_on_one_device():
    single = tf.distribute.get_strategy()
    with single.scope():
        variable = keras.Variable(np.zeros(2, "float32"))
    optimizer = AdamWGlobalClip(learning_rate=1.0, epsilon=1e3, weight_decay=0.0, clip_norm=1.0)
    optimizer.apply_gradients([(tf.constant([3.0, 4.0]), variable)])
    np.testing.assert_allclose(variable.numpy() / variable.numpy().sum(), [0.6 / 1.4, 0.8 / 1.4],
                               rtol=1e-4)
    with pytest.raises(ValueError, match="use clip_norm"):
        AdamWGlobalClip(global_clipnorm=1.0)


def test_optimizer_config_round_trip():
    optimizer = create_optimizer(total_steps=50, warmup_steps=5, clip_norm=0.5)
    clone = AdamWGlobalClip.from_config(optimizer.get_config())
    assert clone.clip_norm == 0.5
    assert float(clone.learning_rate) == float(optimizer.learning_rate)


def test_strategy_selection(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert create_strategy().num_replicas_in_sync == 1
    mirrored = create_strategy(cpu_replicas=2)
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 2
    assert per_replica_batch_size(8, mirrored) == 4
    with pytest.raises(ValueError, match="global batch size 7 is not divisible by the 2 replicas"):
        per_replica_batch_size(7, mirrored)
    with pytest.raises(ValueError, match="cannot create 3 CPU replicas"):
        create_strategy(cpu_replicas=3)


def test_tf_config_parsing():
    cluster = '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}'
    assert tf_config_workers({"TF_CONFIG": cluster}) == 2
    assert tf_config_workers({}) == 0
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        tf_config_workers({"TF_CONFIG": "{oops"})


def test_learning_rate_multipliers_scale_listed_variables_only():
    head = keras.Variable(np.zeros(2, "float32"), name="head")
    body = keras.Variable(np.zeros(2, "float32"), name="body")
    optimizer = AdamWGlobalClip(learning_rate=1e-3, weight_decay=0.0, clip_norm=None,
                                learning_rate_multipliers={head.path: 10.0})
    gradient = tf.constant([1.0, -2.0])
    for _ in range(3):
        optimizer.apply_gradients([(gradient, head), (gradient, body)])
    np.testing.assert_allclose(head.numpy(), 10.0 * body.numpy(), rtol=1e-5)
    assert body.numpy()[0] < 0 < body.numpy()[1]
    clone = AdamWGlobalClip.from_config(optimizer.get_config())
    assert clone.learning_rate_multipliers == {head.path: 10.0}


@pytest.mark.parametrize("replicas", [1, 2])
def test_fused_update_matches_keras_adamw(replicas):
    """Our one-kernel Adam update equals Keras' AdamW (decay skipping the bias), on one
    device and under MirroredStrategy (each replica sends half the gradient)."""
    strategy = create_strategy(cpu_replicas=replicas) if replicas > 1 else tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    init = {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)}
    grads = [{name: rng.normal(size=value.shape) for name, value in init.items()}
             for _ in range(4)]

    def train(make_optimizer, scope):
        with scope.scope():
            variables = [keras.Variable(init[name].astype("float32"), name=name)
                         for name in init]
            optimizer = make_optimizer()
            optimizer.exclude_from_weight_decay(var_names=["bias"])
            optimizer.build(variables)

        @tf.function
        def step(step_grads):
            def replica_fn():
                share = 1.0 / tf.distribute.get_replica_context().num_replicas_in_sync
                optimizer.apply_gradients(
                    [(step_grads[v.name] * share, v) for v in variables])
            scope.run(replica_fn)

        for step_grads in grads:
            step({k: tf.constant(v, tf.float32) for k, v in step_grads.items()})
        return [v.numpy() for v in variables]

    args = dict(learning_rate=0.05, weight_decay=0.1, beta_1=0.8, beta_2=0.95, epsilon=1e-3)
    ours = train(lambda: AdamWGlobalClip(clip_norm=None, **args), strategy)
    reference = train(lambda: keras.optimizers.AdamW(**args), tf.distribute.get_strategy())
    for got, want, start in zip(ours, reference, init.values()):
        assert np.abs(got - start).max() > 0.05  # the update moved the variable
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
