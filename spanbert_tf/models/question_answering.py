"""Extractive question answering: a `SpanBertEncoder` with a start/end span head.

The model scores every position of `[CLS] question [SEP] context [SEP]` as the start
and as the end of the answer (BERT's SQuAD head: one Dense(2) over the sequence
output). Padding positions get a large negative logit, so the softmax over positions,
and hence the loss, does not depend on how much a batch is padded (bucketed batches
and fixed-length batches train the same way). Question and special tokens are not
masked here: like the official SpanBERT/BERT code and Hugging Face, the restriction to
context tokens happens in post-processing, and [CLS] (position 0) is the no-answer
position of SQuAD 2.0.

Outputs are a dict `{"start_logits": [B, L], "end_logits": [B, L]}` in float32; the
names are a contract with export and serving.

Training labels are the token positions of the answer's first and last token
(`start_positions`, `end_positions`, both 0 for "no answer in this window"). The loss
is BERT's: the mean of the start and end cross-entropies, which is what
`compile(loss=span_losses())` gives with the label dict
`{"start_logits": start_positions, "end_logits": end_positions}`.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from spanbert_tf.config import SpanBertConfig
from spanbert_tf.layers.common import dense
from spanbert_tf.models.encoder import SpanBertEncoder, encoder_for

# Logit given to padding positions; exp(-1e4 - max) is exactly 0 in float32.
PADDING_LOGIT = -10000.0
OUTPUT_NAMES = ("start_logits", "end_logits")


@keras.saving.register_keras_serializable(package="spanbert_tf")
class SpanEndpointLoss(keras.losses.Loss):
    """Cross-entropy of one span endpoint (start or end position) times `weight`.

    With the default weight 0.5 on both outputs, the total is BERT's QA loss,
    (start_loss + end_loss) / 2, without `loss_weights` in `compile`.
    """

    def __init__(self, weight: float = 0.5, name: str = "span_endpoint_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.weight = float(weight)

    def call(self, y_true, y_pred):
        losses = keras.losses.sparse_categorical_crossentropy(
            tf.cast(y_true, tf.int32), tf.cast(y_pred, tf.float32), from_logits=True)
        return self.weight * losses

    def get_config(self) -> dict:
        return {**super().get_config(), "weight": self.weight}


def span_losses() -> dict[str, keras.losses.Loss]:
    """BERT's QA loss as a `compile(loss=...)` dict: half the cross-entropy of each
    endpoint. Labels: `{"start_logits": start_positions, "end_logits": end_positions}`."""
    return {name: SpanEndpointLoss(0.5, name=f"{name}_loss") for name in OUTPUT_NAMES}


@keras.saving.register_keras_serializable(package="spanbert_tf")
class SpanBertQuestionAnswering(keras.Model):
    """`SpanBertEncoder` + Dense(2) span head for extractive QA (SQuAD, MRQA).

    Args:
        config: encoder config (object, dict or preset name); or pass `encoder`.
        encoder: an existing (e.g. pretrained) `SpanBertEncoder` to fine-tune.
        **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Call with a dict of `input_ids`, `input_mask` (1 = token, 0 = padding; default
    `input_ids != pad_token_id`) and `segment_ids` (0 for [CLS] question [SEP], 1 for
    context [SEP]); other keys are ignored. Returns float32 `start_logits` and
    `end_logits` [batch, seq], `PADDING_LOGIT` at padding.

    Example:
        >>> import keras, numpy as np
        >>> from spanbert_tf import SpanBertConfig, SpanBertQuestionAnswering
        >>> from spanbert_tf.models.question_answering import span_losses
        >>> model = SpanBertQuestionAnswering(SpanBertConfig.preset("tiny", vocab_size=100))
        >>> features = {"input_ids": np.array([[2, 7, 3, 9, 11, 3, 0]]),
        ...             "input_mask": np.array([[1, 1, 1, 1, 1, 1, 0]]),
        ...             "segment_ids": np.array([[0, 0, 0, 1, 1, 1, 0]])}
        >>> outputs = model(features)
        >>> outputs["start_logits"].shape, float(outputs["end_logits"][0, 6])
        (TensorShape([1, 7]), -10000.0)
        >>> model.compile(optimizer="adam", loss=span_losses())
        >>> labels = {"start_logits": np.array([3]), "end_logits": np.array([4])}
        >>> history = model.fit(features, labels, epochs=1, verbose=0)
    """

    def __init__(
        self,
        config: SpanBertConfig | dict[str, Any] | str | None = None,
        encoder: SpanBertEncoder | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        encoder = encoder_for("SpanBertQuestionAnswering", config, encoder, kwargs.get("dtype"))
        self.encoder = encoder
        self.config: SpanBertConfig = encoder.config
        self.span_head = dense(2, self.config.initializer_range, name="span_head")
        self.span_head.build((None, self.config.hidden_size))
        self.built = True

    def call(self, inputs: dict[str, tf.Tensor], training=None) -> dict[str, tf.Tensor]:
        if not isinstance(inputs, dict) or "input_ids" not in inputs:
            raise ValueError("SpanBertQuestionAnswering takes a dict with `input_ids` (and "
                             "`input_mask`, `segment_ids`)")
        input_ids = tf.cast(inputs["input_ids"], tf.int32)
        input_mask = inputs.get("input_mask")
        if input_mask is None:
            input_mask = tf.not_equal(input_ids, self.config.pad_token_id)
        encoder_inputs = {"input_ids": input_ids, "input_mask": input_mask}
        if inputs.get("segment_ids") is not None:
            encoder_inputs["segment_ids"] = inputs["segment_ids"]
        sequence_output = self.encoder(encoder_inputs, training=training)["sequence_output"]
        logits = tf.cast(self.span_head(sequence_output), tf.float32)  # [B, L, 2]
        padding = tf.logical_not(tf.cast(input_mask, tf.bool))
        logits = tf.where(padding[:, :, tf.newaxis], PADDING_LOGIT, logits)
        start_logits, end_logits = tf.unstack(logits, num=2, axis=-1)
        return {"start_logits": start_logits, "end_logits": end_logits}

    def get_config(self) -> dict:
        base = super().get_config()
        return {"name": base.get("name"), "trainable": base.get("trainable", True),
                "dtype": base.get("dtype"), "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> "SpanBertQuestionAnswering":
        config = dict(config)
        return cls(config=config.pop("config"), **config)
