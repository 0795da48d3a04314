"""The SpanBERT encoder: BERT embeddings and a stack of post-LN transformer layers."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from spanbert_tf.config import SpanBertConfig
from spanbert_tf.layers.embeddings import SpanBertEmbeddings
from spanbert_tf.layers.transformer import TransformerLayer

# Added to attention scores at padded keys. BERT's value; exp(-10000) is 0 in fp16 and fp32.
MASK_BIAS = -10000.0


def as_config(config: SpanBertConfig | dict[str, Any] | str) -> SpanBertConfig:
    """Accepts a config object, its dict form, or a preset name."""
    if isinstance(config, SpanBertConfig):
        return config
    if isinstance(config, str):
        return SpanBertConfig.preset(config)
    return SpanBertConfig.from_dict(dict(config))


def encoder_for(owner: str, config, encoder: "SpanBertEncoder | None", dtype=None
                ) -> "SpanBertEncoder":
    """The encoder a model built on `SpanBertEncoder` wraps: `encoder` as given, or a new
    one from `config`. Fails when neither, or two disagreeing ones, are passed."""
    if encoder is None:
        if config is None:
            raise ValueError(f"{owner} needs a config or an encoder")
        return SpanBertEncoder(config, name="encoder", dtype=dtype)
    if config is not None and as_config(config) != encoder.config:
        raise ValueError("config and encoder.config disagree; pass only one of them")
    return encoder


def attention_bias_from_mask(input_mask: tf.Tensor) -> tf.Tensor:
    """[batch, seq] 1/0 mask -> [batch, 1, 1, seq] additive bias (0 or MASK_BIAS)."""
    # expand_dims rather than [:, None, None, :]: TFLite's StridedSlice has no new axes.
    mask = tf.expand_dims(tf.expand_dims(tf.cast(input_mask, tf.float32), 1), 1)
    return (1.0 - mask) * MASK_BIAS


@keras.saving.register_keras_serializable(package="spanbert_tf")
class SpanBertEncoder(keras.Model):
    """BERT-compatible transformer encoder (no pooler: SpanBERT drops NSP).

    Inputs are a dict with `input_ids` [batch, seq] and optionally `input_mask`
    (1 = token, 0 = padding; default `input_ids != pad_token_id`) and `segment_ids`
    (default all 0). Returns a dict with `sequence_output` [batch, seq, hidden] and, when
    called with `output_hidden_states=True`, `hidden_states`: the embedding output
    followed by every layer's output (num_layers + 1 tensors).

    Sequences longer than `config.max_position_embeddings` raise an error.

    Example:
        >>> import numpy as np
        >>> from spanbert_tf import SpanBertConfig, SpanBertEncoder
        >>> encoder = SpanBertEncoder(SpanBertConfig.preset("tiny", vocab_size=100))
        >>> ids = np.array([[2, 7, 9, 3, 0]])
        >>> outputs = encoder({"input_ids": ids, "input_mask": ids != 0})
        >>> outputs["sequence_output"].shape
        TensorShape([1, 5, 64])
    """

    def __init__(self, config: SpanBertConfig | dict[str, Any] | str, **kwargs):
        super().__init__(**kwargs)
        self.config = as_config(config)
        c = self.config
        self.embeddings = SpanBertEmbeddings(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            max_position_embeddings=c.max_position_embeddings,
            type_vocab_size=c.type_vocab_size,
            dropout=c.hidden_dropout,
            initializer_range=c.initializer_range,
            layer_norm_epsilon=c.layer_norm_epsilon,
            name="embeddings",
        )
        self.transformer_layers = [
            TransformerLayer(
                hidden_size=c.hidden_size,
                num_heads=c.num_heads,
                intermediate_size=c.intermediate_size,
                hidden_dropout=c.hidden_dropout,
                attention_dropout=c.attention_dropout,
                initializer_range=c.initializer_range,
                layer_norm_epsilon=c.layer_norm_epsilon,
                name=f"transformer_layer_{index}",
            )
            for index in range(c.num_layers)
        ]
        self.build()

    def build(self, input_shape=None) -> None:
        # Every weight shape follows from the config, so the model is built eagerly: a
        # freshly constructed encoder can load weights before it has seen any input.
        self.embeddings.build()
        for layer in self.transformer_layers:
            layer.build()
        self.built = True

    @property
    def token_embedding(self) -> keras.layers.Embedding:
        """The word-embedding layer; its matrix is the tied decoder of the MLM/SBO heads."""
        return self.embeddings.word_embeddings

    def call(self, inputs, training=None, output_hidden_states: bool = False):
        if not isinstance(inputs, dict):
            inputs = {"input_ids": inputs}
        if "input_ids" not in inputs:
            raise ValueError(f"SpanBertEncoder needs `input_ids`; got keys {sorted(inputs)}")
        input_ids = tf.cast(inputs["input_ids"], tf.int32)
        input_mask = inputs.get("input_mask")
        if input_mask is None:
            input_mask = tf.not_equal(input_ids, self.config.pad_token_id)
        segment_ids = inputs.get("segment_ids")
        hidden = self.embeddings(input_ids, segment_ids, training=training)
        bias = attention_bias_from_mask(input_mask)
        hidden_states = [hidden]
        for layer in self.transformer_layers:
            hidden = layer(hidden, bias, training=training)
            hidden_states.append(hidden)
        outputs = {"sequence_output": hidden}
        if output_hidden_states:
            outputs["hidden_states"] = hidden_states
        return outputs

    def get_config(self) -> dict:
        base = super().get_config()
        return {"name": base.get("name"), "trainable": base.get("trainable", True),
                "dtype": base.get("dtype"), "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> "SpanBertEncoder":
        config = dict(config)
        return cls(config=config.pop("config"), **config)
