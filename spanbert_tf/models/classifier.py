"""Sequence classification / regression on a SpanBERT encoder: cross- or bi-encoded pairs."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from spanbert_tf.layers.common import dense, masked_mean
from spanbert_tf.layers.dropout import Dropout
from spanbert_tf.models.encoder import SpanBertEncoder

POOLINGS = ("cls", "mean")
PAIR_ENCODINGS = ("cross", "siamese")
PAIR_FEATURES = ("concat", "cosine")
INPUT_NAMES = ("input_ids", "input_mask", "segment_ids")
# Siamese models read the second text under these names.
SECOND_INPUT_NAMES = tuple(f"{name}_b" for name in INPUT_NAMES)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


@keras.saving.register_keras_serializable(package="spanbert_tf")
class SpanBertClassifier(keras.Model):
    """Classifies a sequence or a sentence pair from pooled encoder outputs.

    Default (`pooling="cls"`, `pair_encoding="cross"`): BERT's
    `BertForSequenceClassification`, which the official SpanBERT GLUE and TACRED
    scripts fine-tune: one input `[CLS] A [SEP] B [SEP]`, pooler (Dense H -> H, tanh) on
    the [CLS] vector, dropout, then a linear layer to `num_labels` logits. SpanBERT was
    pretrained without NSP, so its checkpoints have no trained pooler: the pooler starts
    from BERT's initialisation (truncated normal, stddev `initializer_range`) exactly as
    in the official fine-tuning. `use_pooler=False` drops it ([CLS] -> dropout -> linear).

    `pooling="mean"`: the masked mean of the sequence output over real tokens ([CLS]
    and [SEP] included, padding excluded), as sentence-transformers' MEAN pooling; no
    pooler layer (`use_pooler` defaults to False and may not be True).

    `pair_encoding="siamese"` (Sentence-BERT, Reimers & Gurevych 2019, classification
    objective): each text is encoded on its own by the same encoder (shared weights,
    one encoder called twice), pooled to u and v, and the head classifies the SBERT
    default features `[u, v, |u - v|]` (3 H) -> dropout -> linear. This is the mode
    for sentence-transformers bi-encoder checkpoints (e.g. all-MiniLM-L6-v2), whose
    cross-encoded pairs carry no pair signal; use it with `pooling="mean"`.
    `pair_features="cosine"` classifies the single feature cos(u, v) instead (the
    similarity such checkpoints were trained to produce): two parameters per label, so
    it cannot overfit a small training set; give it a larger head learning rate.

    With `num_labels=1` the single logit is a regression output (train with mean
    squared error); a siamese regression model puts the same linear head on its pair
    features (`[u, v, |u - v|]`, or cos(u, v) alone). Relation extraction (TACRED) uses the
    cross model on inputs whose subject and object spans were replaced by entity markers.

    Inputs: dict with `input_ids`, `input_mask`, `segment_ids` [batch, seq]; siamese
    models also take the second text as `input_ids_b`, `input_mask_b`, `segment_ids_b`
    [batch, seq_b] (each text packed as `[CLS] text [SEP]`, segment ids 0).
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
        >>> siamese = SpanBertClassifier(encoder, num_labels=2, pooling="mean",
        ...                              pair_encoding="siamese")
        >>> ids_b = np.array([[2, 11, 3]])
        >>> siamese({"input_ids": ids, "input_mask": ids != 0,
        ...          "segment_ids": np.zeros_like(ids), "input_ids_b": ids_b,
        ...          "input_mask_b": ids_b != 0,
        ...          "segment_ids_b": np.zeros_like(ids_b)})["logits"].shape
        TensorShape([1, 2])
    """

    def __init__(self, encoder: SpanBertEncoder, num_labels: int, dropout: float | None = None,
                 use_pooler: bool | None = None, pooling: str = "cls",
                 pair_encoding: str = "cross", pair_features: str = "concat", **kwargs):
        super().__init__(**kwargs)
        if int(num_labels) < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.pooling = check_choice("pooling", pooling, POOLINGS)
        self.pair_encoding = check_choice("pair_encoding", pair_encoding, PAIR_ENCODINGS)
        self.pair_features = check_choice("pair_features", pair_features, PAIR_FEATURES)
        if pair_features == "cosine" and pair_encoding != "siamese":
            raise ValueError("pair_features='cosine' needs pair_encoding='siamese' (the "
                             "cosine of two separately encoded texts)")
        if use_pooler is None:
            use_pooler = pooling == "cls"
        if use_pooler and pooling == "mean":
            raise ValueError("use_pooler=True needs pooling='cls' (the BERT pooler acts on "
                             "the [CLS] vector); mean pooling has no pooler layer")
        self.encoder = encoder
        self.num_labels = int(num_labels)
        config = encoder.config
        self.dropout_rate = float(config.hidden_dropout if dropout is None else dropout)
        self.use_pooler = bool(use_pooler)
        self.pooler = (dense(config.hidden_size, config.initializer_range, "pooler")
                       if self.use_pooler else None)
        self.dropout = Dropout(self.dropout_rate, name="dropout")
        self.classifier = dense(self.num_labels, config.initializer_range, "classifier")
        self.build()

    @property
    def siamese(self) -> bool:
        return self.pair_encoding == "siamese"

    def build(self, input_shape=None) -> None:
        # Weight shapes follow from the encoder config: build now, so that the model
        # can load weights (and be saved) before it has seen data.
        hidden = self.encoder.config.hidden_size
        if self.pooler is not None:
            self.pooler.build((None, hidden))
        self.classifier.build((None, self.feature_size(hidden)))
        self.built = True

    def feature_size(self, hidden: int) -> int:
        if not self.siamese:
            return hidden
        return 1 if self.pair_features == "cosine" else 3 * hidden

    def pool(self, inputs, training=None) -> tf.Tensor:
        """[batch, hidden] vector of each sequence of `inputs` (the three BERT inputs)."""
        sequence = self.encoder(inputs, training=training)["sequence_output"]
        if self.pooling == "mean":
            return masked_mean(sequence, inputs["input_mask"])
        pooled = sequence[:, 0, :]
        if self.pooler is not None:
            pooled = tf.tanh(self.pooler(pooled))
        return pooled

    def call(self, inputs, training=None):
        first = {name: inputs[name] for name in INPUT_NAMES}
        if self.siamese:
            missing = [name for name in SECOND_INPUT_NAMES if name not in inputs]
            if missing:
                raise ValueError(f"a siamese classifier needs the second text's inputs "
                                 f"{', '.join(missing)} besides {', '.join(INPUT_NAMES)}")
            u = self.pool(first, training)
            v = self.pool({name: inputs[f"{name}_b"] for name in INPUT_NAMES}, training)
            if self.pair_features == "cosine":
                features = tf.reduce_sum(tf.math.l2_normalize(u, axis=-1)
                                         * tf.math.l2_normalize(v, axis=-1), -1, keepdims=True)
            else:
                features = tf.concat([u, v, tf.abs(u - v)], axis=-1)
        else:
            features = self.pool(first, training)
        logits = self.classifier(self.dropout(features, training=training))
        return {"logits": tf.cast(logits, tf.float32)}

    def get_config(self) -> dict[str, Any]:
        base = super().get_config()
        return {"name": base.get("name"), "trainable": base.get("trainable", True),
                "dtype": base.get("dtype"),
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "num_labels": self.num_labels, "dropout": self.dropout_rate,
                "use_pooler": self.use_pooler, "pooling": self.pooling,
                "pair_encoding": self.pair_encoding, "pair_features": self.pair_features}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SpanBertClassifier":
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        return cls(encoder=encoder, **config)
