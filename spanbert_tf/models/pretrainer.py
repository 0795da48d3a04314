"""SpanBERT pretraining model: encoder + masked-LM head + span boundary (SBO) head."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from spanbert_tf.config import SpanBertConfig
from spanbert_tf.layers.common import tied_logits
from spanbert_tf.layers.mlm_head import MaskedLMHead
from spanbert_tf.layers.sbo_head import SpanBoundaryHead
from spanbert_tf.models.encoder import SpanBertEncoder, encoder_for

MLM_FEATURES = (
    "input_ids", "input_mask", "segment_ids",
    "masked_lm_positions", "masked_lm_ids", "masked_lm_weights",
)
SBO_FEATURES = ("span_boundaries", "span_target_positions", "span_target_ids",
                "span_target_weights")
PRETRAINING_FEATURES = MLM_FEATURES + SBO_FEATURES


def compact_span_targets(features: dict[str, tf.Tensor], num_slots: int):
    """Packs the valid SBO targets of the [S, T] span layout into `num_slots` rows.

    The pretraining example stores targets per span: `span_target_*[s, t]` is the
    token at offset t from the start of span s, valid where its weight is > 0. Most of
    the S * T slots are padding, and every valid target is a masked token, so at most
    `num_slots` = P (masked positions) are valid. Packing them first makes the SBO
    decoder as cheap as the MLM decoder. Order is preserved (a stable top-k).

    Returns (boundaries [B, K, 2], offsets [B, K], ids [B, K], weights [B, K]).
    """
    weights = features["span_target_weights"]
    num_spans, num_targets = weights.shape[1], weights.shape[2]
    if num_spans is None or num_targets is None:
        raise ValueError("span_target_weights needs static [spans, targets] dimensions")
    flat_size = num_spans * num_targets
    slots = min(num_slots, flat_size)
    flat_weights = tf.reshape(tf.cast(weights, tf.float32), [-1, flat_size])
    valid = tf.cast(flat_weights > 0, tf.int32)
    tf.debugging.assert_less_equal(
        tf.reduce_sum(valid, axis=1), slots,
        message="more SBO targets than masked positions: the example is inconsistent")
    order_key = valid * flat_size + tf.range(flat_size - 1, -1, -1, dtype=tf.int32)
    flat_index = tf.math.top_k(order_key, k=slots, sorted=True).indices
    span_index = flat_index // num_targets
    boundaries = tf.gather(tf.cast(features["span_boundaries"], tf.int32), span_index,
                           batch_dims=1)
    flat_ids = tf.reshape(tf.cast(features["span_target_ids"], tf.int32), [-1, flat_size])
    ids = tf.gather(flat_ids, flat_index, batch_dims=1)
    target_weights = tf.gather(flat_weights, flat_index, batch_dims=1)
    return boundaries, flat_index % num_targets, ids, target_weights


def global_weighted_mean(values, weights) -> tf.Tensor:
    """This replica's share of the weighted mean over the whole (global) batch.

    The denominator is the weight total summed over replicas, so the replicas' shares
    add up to the mean over every target of the global batch, exactly what one device
    computes on the same batch. With one replica it is the plain weighted mean.
    """
    weights = tf.cast(weights, tf.float32)
    total = tf.stop_gradient(tf.reduce_sum(weights))
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, total)
    return tf.math.divide_no_nan(tf.reduce_sum(tf.cast(values, tf.float32) * weights), total)


@keras.saving.register_keras_serializable(package="spanbert_tf")
class SpanBertPretrainer(keras.Model):
    """Trains a `SpanBertEncoder` with the MLM and span boundary objectives.

    Consumes the pretraining example of DESIGN.md section 4 (a dict of fixed-shape
    tensors: see `PRETRAINING_FEATURES`) and needs no `y`: the labels are inside the
    example. Loss = mean MLM cross-entropy over masked tokens + `sbo_weight` * mean SBO
    cross-entropy over SBO targets; zero weights mark padding. Reports `mlm_loss`,
    `sbo_loss`, `mlm_accuracy` and `sbo_accuracy` beside `loss`.

    With `config.sbo_weight == 0` the model trains MLM only (BERT-style continued
    pretraining): the SBO head is not computed at all, its weights stay as they are
    (frozen, still saved), the example needs only `MLM_FEATURES`, and only `loss`,
    `mlm_loss` and `mlm_accuracy` are reported.

    `call` returns the heads' decoder inputs (`mlm_hidden`, `sbo_hidden`) and the packed
    SBO targets; the losses are computed from them by `tied_cross_entropy` (its own
    gradient, no softmax or one-hot tensors). `logits(outputs)` gives the logits when
    wanted.

    Example:
        >>> import keras
        >>> from spanbert_tf import SpanBertConfig, SpanBertPretrainer
        >>> model = SpanBertPretrainer(SpanBertConfig.preset("tiny", vocab_size=1000))
        >>> model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        >>> # model.fit(dataset_of_pretraining_examples, epochs=1)
    """

    def __init__(
        self,
        config: SpanBertConfig | dict[str, Any] | str | None = None,
        encoder: SpanBertEncoder | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        encoder = encoder_for("SpanBertPretrainer", config, encoder, kwargs.get("dtype"))
        self.encoder = encoder
        c: SpanBertConfig = encoder.config
        self.config = c
        self.mlm_head = MaskedLMHead(
            encoder.token_embedding, hidden_size=c.hidden_size,
            initializer_range=c.initializer_range, layer_norm_epsilon=c.layer_norm_epsilon,
            name="mlm_head", dtype=kwargs.get("dtype"))
        self.sbo_head = SpanBoundaryHead(
            encoder.token_embedding, hidden_size=c.hidden_size,
            position_size=c.sbo_position_size, max_targets=c.sbo_max_targets,
            initializer_range=c.initializer_range, layer_norm_epsilon=c.layer_norm_epsilon,
            name="sbo_head", dtype=kwargs.get("dtype"))
        self.mlm_head.build()
        self.sbo_head.build()
        self.uses_sbo = c.sbo_weight > 0
        # Freezing a layer freezes its sublayers, and the SBO head holds the encoder's
        # word embedding (its tied decoder): keep that one as it was.
        embedding_trainable = encoder.token_embedding.trainable
        self.sbo_head.trainable = self.uses_sbo
        encoder.token_embedding.trainable = embedding_trainable
        self.mlm_loss_tracker = keras.metrics.Mean(name="mlm_loss")
        self.mlm_accuracy = keras.metrics.Mean(name="mlm_accuracy")
        if self.uses_sbo:
            self.sbo_loss_tracker = keras.metrics.Mean(name="sbo_loss")
            self.sbo_accuracy = keras.metrics.Mean(name="sbo_accuracy")
        self.built = True

    @property
    def required_features(self) -> tuple[str, ...]:
        """Example fields `call` reads: all of `PRETRAINING_FEATURES`, or only
        `MLM_FEATURES` when the SBO objective is off (`sbo_weight == 0`)."""
        return PRETRAINING_FEATURES if self.uses_sbo else MLM_FEATURES

    def call(self, inputs: dict[str, tf.Tensor], training=None) -> dict[str, tf.Tensor]:
        missing = [name for name in self.required_features if name not in inputs]
        if missing:
            raise ValueError(f"pretraining example is missing {missing}")
        sequence_output = self.encoder(
            {k: inputs[k] for k in ("input_ids", "input_mask", "segment_ids")},
            training=training)["sequence_output"]
        outputs = {"mlm_hidden": self.mlm_head.hidden_states(sequence_output,
                                                             inputs["masked_lm_positions"])}
        if self.uses_sbo:
            num_slots = inputs["masked_lm_positions"].shape[1]
            boundaries, offsets, sbo_ids, sbo_weights = compact_span_targets(inputs, num_slots)
            outputs.update(
                sbo_hidden=self.sbo_head.hidden_states(sequence_output, boundaries, offsets),
                sbo_ids=sbo_ids, sbo_weights=sbo_weights)
        return outputs

    def logits(self, outputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """float32 vocabulary logits {"mlm_logits" [B, P, V], "sbo_logits" [B, K, V]} of
        `call`'s outputs (training does not need them: see `compute_loss`); no
        "sbo_logits" when the SBO objective is off."""
        embeddings = self.encoder.token_embedding.embeddings
        logits = {"mlm_logits": tied_logits(outputs["mlm_hidden"], embeddings,
                                            self.mlm_head.bias)}
        if "sbo_hidden" in outputs:
            logits["sbo_logits"] = tied_logits(outputs["sbo_hidden"], embeddings,
                                               self.sbo_head.bias)
        return logits

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Returns this replica's share of the global-batch loss.

        Gradients are summed over replicas, so each replica's loss is its part of the
        global mean (see `global_weighted_mean`): mirrored training then follows the
        same trajectory as one device on the same global batch.
        """
        mlm_weights = x["masked_lm_weights"]
        mlm_losses, mlm_hits = self.mlm_head.loss(y_pred["mlm_hidden"], x["masked_lm_ids"])
        mlm_loss = global_weighted_mean(mlm_losses, mlm_weights)
        # Mean metrics average over replicas; scaled shares average to the global value.
        replicas = tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
        self.mlm_loss_tracker.update_state(mlm_loss * replicas)
        self.mlm_accuracy.update_state(mlm_hits, sample_weight=mlm_weights)
        if not self.uses_sbo:
            return mlm_loss
        sbo_losses, sbo_hits = self.sbo_head.loss(y_pred["sbo_hidden"], y_pred["sbo_ids"])
        sbo_loss = global_weighted_mean(sbo_losses, y_pred["sbo_weights"])
        self.sbo_loss_tracker.update_state(sbo_loss * replicas)
        self.sbo_accuracy.update_state(sbo_hits, sample_weight=y_pred["sbo_weights"])
        return mlm_loss + self.config.sbo_weight * sbo_loss

    def get_config(self) -> dict:
        base = super().get_config()
        return {"name": base.get("name"), "trainable": base.get("trainable", True),
                "dtype": base.get("dtype"), "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> "SpanBertPretrainer":
        config = dict(config)
        return cls(config=config.pop("config"), **config)
