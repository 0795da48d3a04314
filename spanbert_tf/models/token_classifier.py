"""Token classification (named entity recognition) on a SpanBERT encoder."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from spanbert_tf.layers.common import dense
from spanbert_tf.layers.dropout import Dropout
from spanbert_tf.models.encoder import SpanBertEncoder


@keras.saving.register_keras_serializable(package="spanbert_tf")
class SpanBertTokenClassifier(keras.Model):
    """Tags every token: encoder output -> dropout -> linear layer to `num_labels` logits.

    BERT's `BertForTokenClassification` head. For word-level tags (CoNLL/BIO NER) the
    fine-tuning pipeline puts each word's label on its first sub-token and ignores the
    others (label -1), and reads predictions back from the first sub-tokens.

    Inputs: dict with `input_ids`, `input_mask`, `segment_ids` [batch, seq].
    Outputs: dict with `logits` [batch, seq, num_labels] (float32).

    Example:
        >>> import numpy as np
        >>> from spanbert_tf import SpanBertConfig, SpanBertEncoder, SpanBertTokenClassifier
        >>> encoder = SpanBertEncoder(SpanBertConfig.preset("tiny", vocab_size=100))
        >>> model = SpanBertTokenClassifier(encoder, num_labels=5)
        >>> ids = np.array([[2, 7, 9, 3, 0]])
        >>> model({"input_ids": ids, "input_mask": ids != 0,
        ...        "segment_ids": np.zeros_like(ids)})["logits"].shape
        TensorShape([1, 5, 5])
    """

    def __init__(self, encoder: SpanBertEncoder, num_labels: int, dropout: float | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if int(num_labels) < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.encoder = encoder
        self.num_labels = int(num_labels)
        config = encoder.config
        self.dropout_rate = float(config.hidden_dropout if dropout is None else dropout)
        self.dropout = Dropout(self.dropout_rate, name="dropout")
        self.classifier = dense(self.num_labels, config.initializer_range, "classifier")
        self.build()

    def build(self, input_shape=None) -> None:
        self.classifier.build((None, self.encoder.config.hidden_size))
        self.built = True

    def call(self, inputs, training=None):
        sequence = self.encoder(inputs, training=training)["sequence_output"]
        logits = self.classifier(self.dropout(sequence, training=training))
        return {"logits": tf.cast(logits, tf.float32)}

    def get_config(self) -> dict[str, Any]:
        base = super().get_config()
        return {"name": base.get("name"), "trainable": base.get("trainable", True),
                "dtype": base.get("dtype"),
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "num_labels": self.num_labels, "dropout": self.dropout_rate}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SpanBertTokenClassifier":
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        return cls(encoder=encoder, **config)
