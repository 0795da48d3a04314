"""Optimiser and learning-rate schedule of the SpanBERT recipes (DESIGN.md section 3).

`create_optimizer` gives AdamW with decoupled weight decay that skips biases and
LayerNorm parameters, linear warm-up then linear decay to zero, and global-norm gradient
clipping. The clipping acts on the gradient summed over replicas: Keras 3 clips each
replica's partial gradient before the all-reduce, which under MirroredStrategy is not
global-norm clipping of the batch gradient (tensorflow/tensorflow#33929 discusses why
clipping must follow aggregation).

Example:
    >>> from pipelines.optimization import create_optimizer, RECIPES
    >>> optimizer = create_optimizer(total_steps=1000, **RECIPES["spanbert-base"].optimizer_args())
    >>> float(optimizer.learning_rate)  # step 0 of the warm-up
    0.0
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

# Variable names that weight decay skips (BERT / SpanBERT): biases and LayerNorm.
NO_DECAY_NAMES = ("bias", "gamma", "beta")


@keras.saving.register_keras_serializable(package="spanbert_tf")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then linear decay to 0 at
    `total_steps` (and 0 after it)."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must lie in [0, total_steps={total_steps}], "
                             f"got {warmup_steps}")
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay_span = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        rising = step / warmup
        falling = (tf.cast(self.total_steps, tf.float32) - step) / decay_span
        fraction = tf.where(step < self.warmup_steps, rising, falling)
        return self.peak * tf.clip_by_value(fraction, 0.0, 1.0)

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package="spanbert_tf")
class AdamWGlobalClip(keras.optimizers.AdamW):
    """AdamW that clips the replica-summed gradient to `clip_norm` (global norm).

    Single-device training clips exactly like `global_clipnorm`. Under a distribution
    strategy the gradient is all-reduced first, clipped, and then applied without a
    second reduction, so every replica applies the same clipped batch gradient.

    `learning_rate_multipliers` maps variable paths to a factor on the learning rate
    (e.g. a freshly initialised task head trained faster than the pretrained encoder);
    unlisted variables use the schedule as it is.
    """

    def __init__(self, clip_norm: float | None = 1.0,
                 learning_rate_multipliers: dict[str, float] | None = None, **kwargs):
        if kwargs.get("global_clipnorm") or kwargs.get("clipnorm") or kwargs.get("clipvalue"):
            raise ValueError("use clip_norm; Keras' clipping options act per replica")
        super().__init__(**kwargs)
        self.clip_norm = clip_norm
        self.learning_rate_multipliers = dict(learning_rate_multipliers or {})
        self._multiplier_by_index: list[float] = []

    def build(self, var_list) -> None:
        super().build(var_list)
        self._multiplier_by_index = [float(self.learning_rate_multipliers.get(v.path, 1.0))
                                     for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        if self.learning_rate_multipliers:
            factor = self._multiplier_by_index[index]
            if factor != 1.0:
                learning_rate = learning_rate * tf.cast(factor, learning_rate.dtype)
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        return self._fused_adam_update(gradient, variable, index, learning_rate)

    def _fused_adam_update(self, gradient, variable, index, learning_rate):
        """Keras' Adam update (same formulas: bias-corrected step size, epsilon outside
        the square root) in TensorFlow's one-pass ResourceApplyAdam kernel. Keras
        composes it from ~12 elementwise ops, each a pass over the variable
        (profiled: ~7% of a pretraining step, most of it on the embedding matrix)."""
        dtype = variable.dtype
        if isinstance(gradient, tf.IndexedSlices):  # Keras' Adam updates densely too
            gradient = tf.convert_to_tensor(gradient)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))

    def _clip(self, grads):
        if not self.clip_norm:
            return grads
        clipped, _ = tf.clip_by_global_norm(grads, self.clip_norm)
        return clipped

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        context = tf.distribute.get_replica_context()
        if context is None or tf.distribute.get_strategy().num_replicas_in_sync == 1:
            return super()._backend_update_step(self._clip(grads), trainable_variables,
                                                learning_rate)
        variables = [v.value if isinstance(v, keras.Variable) else v
                     for v in trainable_variables]
        # Embedding gradients arrive as IndexedSlices with one row per input token. The
        # collective all-reduce needs the same shape on every replica, which inputs
        # padded to different lengths (length-bucketed fine-tuning batches) break
        # ("Shape mismatch in the collective instance"); dense gradients always match.
        dense = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                 for g in grads]
        reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, dense)
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step, self._distribution_strategy,
            list(zip(self._clip(reduced), variables)), learning_rate)

    def get_config(self) -> dict:
        return {**super().get_config(), "clip_norm": self.clip_norm,
                "learning_rate_multipliers": self.learning_rate_multipliers}


def create_optimizer(
    total_steps: int,
    peak_learning_rate: float = 1e-4,
    warmup_steps: int = 10_000,
    weight_decay: float = 0.01,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-8,
    clip_norm: float | None = 1.0,
    learning_rate_multipliers: dict[str, float] | None = None,
) -> AdamWGlobalClip:
    """AdamW + warm-up/linear decay + global-norm clipping; no decay on bias/LayerNorm."""
    warmup_steps = min(warmup_steps, total_steps)
    optimizer = AdamWGlobalClip(
        learning_rate=WarmupLinearDecay(peak_learning_rate, warmup_steps, total_steps),
        weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
        clip_norm=clip_norm, learning_rate_multipliers=learning_rate_multipliers)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return optimizer


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A published training recipe: optimiser numbers plus batch and step budget."""

    peak_learning_rate: float
    warmup_steps: int
    total_steps: int
    global_batch_size: int
    max_seq_length: int
    weight_decay: float = 0.01
    epsilon: float = 1e-8
    clip_norm: float = 1.0

    def optimizer_args(self) -> dict:
        return {"peak_learning_rate": self.peak_learning_rate,
                "warmup_steps": self.warmup_steps, "weight_decay": self.weight_decay,
                "epsilon": self.epsilon, "clip_norm": self.clip_norm}


RECIPES = {
    # SpanBERT-large: AdamW (0.9, 0.999), eps 1e-8, peak 1e-4, 10k warm-up, linear decay,
    # weight decay 0.01, clip 1.0, 256 x 512 tokens, 2.4M steps.
    "spanbert-large": Recipe(1e-4, 10_000, 2_400_000, 256, 512),
    # SpanBERT-base: 8x larger batch, 300k steps, peak 5e-4 (DESIGN.md section 3).
    "spanbert-base": Recipe(5e-4, 10_000, 300_000, 2048, 512),
}
