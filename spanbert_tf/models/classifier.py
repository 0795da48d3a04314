"""Sequence classification / regression on the [CLS] token of a SpanBERT encoder."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from spanbert_tf.layers.common import dense
from spanbert_tf.models.encoder import SpanBertEncoder


@keras.saving.register_keras_serializable(package="spanbert_tf")
class SpanBertClassifier(keras.Model):
    """Classifies a sequence (or a sentence pair) from the encoder's [CLS] vector.

    The head is BERT's `BertForSequenceClassification`, which the official SpanBERT
    GLUE and TACRED scripts fine-tune: pooler (Dense H -> H, tanh) on the [CLS] vector,
    dropout, then a linear layer to `num_labels` logits. SpanBERT was pretrained without
    NSP, so its checkpoints have no trained pooler: the pooler starts from BERT's
    initialisation (truncated normal, stddev `initializer_range`) exactly as in the
    official fine-tuning. `use_pooler=False` drops it ([CLS] -> dropout -> linear).

    With `num_labels=1` the single logit is a regression output (train with mean
    squared error). Relation extraction (TACRED) uses this model on inputs whose
    subject and object spans were replaced by entity-marker tokens.

    Inputs: dict with `input_ids`, `input_mask`, `segment_ids` [batch, seq].
    Outputs: dict with `logits` [batch, num_labels] (float32, also under mixed precision).

    Example:
        >>> import numpy as np
        >>> from spanbert_tf import SpanBertClassifier, SpanBertConfig, SpanBertEncoder
        >>> encoder = SpanBertEncoder(SpanBertConfig.preset("tiny", vocab_size=100))
        >>> model = SpanBertClassifier(encoder, num_labels=3)
        >>> ids = np.array([[2, 7, 9, 3, 0]])
        >>> model({"input_ids": ids, "input_mask": ids != 0,
        ...        "segment_ids": np.zeros_like(ids)})["logits"].shape
        TensorShape([1, 3])
    """

    def __init__(self, encoder: SpanBertEncoder, num_labels: int, dropout: float | None = None,
                 use_pooler: bool = True, **kwargs):
        super().__init__(**kwargs)
        if int(num_labels) < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.encoder = encoder
        self.num_labels = int(num_labels)
        config = encoder.config
        self.dropout_rate = float(config.hidden_dropout if dropout is None else dropout)
        self.use_pooler = bool(use_pooler)
        self.pooler = (dense(config.hidden_size, config.initializer_range, "pooler")
                       if self.use_pooler else None)
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout")
        self.classifier = dense(self.num_labels, config.initializer_range, "classifier")
        self.build()

    def build(self, input_shape=None) -> None:
        # Weight shapes follow from the encoder config: build now, so that the model
        # can load weights (and be saved) before it has seen data.
        hidden = self.encoder.config.hidden_size
        if self.pooler is not None:
            self.pooler.build((None, hidden))
        self.classifier.build((None, hidden))
        self.built = True

    def call(self, inputs, training=None):
        sequence = self.encoder(inputs, training=training)["sequence_output"]
        pooled = sequence[:, 0, :]
        if self.pooler is not None:
            pooled = tf.tanh(self.pooler(pooled))
        logits = self.classifier(self.dropout(pooled, training=training))
        return {"logits": tf.cast(logits, tf.float32)}

    def get_config(self) -> dict[str, Any]:
        base = super().get_config()
        return {"name": base.get("name"), "trainable": base.get("trainable", True),
                "dtype": base.get("dtype"),
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "num_labels": self.num_labels, "dropout": self.dropout_rate,
                "use_pooler": self.use_pooler}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SpanBertClassifier":
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        return cls(encoder=encoder, **config)
