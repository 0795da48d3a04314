"""One post-LayerNorm BERT transformer layer, written for CPU/GPU speed.

Why not keras-hub's TransformerEncoder: it projects Q, K and V with three separate
EinsumDense layers on [batch, seq, hidden] tensors. This layer fuses the three
projections into one matmul and keeps activations as [batch * seq, hidden] so every
dense layer is a plain 2-D GEMM (DESIGN.md section 6). The arithmetic is BERT's exactly:
post-LN, exact GeLU, attention scaled by 1/sqrt(head_size), additive padding mask.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from spanbert_tf.layers.common import dense, gelu, layer_norm
from spanbert_tf.layers.dropout import Dropout


@keras.saving.register_keras_serializable(package="spanbert_tf")
class TransformerLayer(keras.layers.Layer):
    """Self-attention + feed-forward block with residuals and post-LayerNorm (BERT).

    Call with `hidden` of shape [batch, seq, hidden_size] and `attention_bias` of shape
    [batch, 1, 1, seq] holding 0 for real tokens and a large negative value for padding.

    Example:
        >>> import numpy as np
        >>> layer = TransformerLayer(hidden_size=8, num_heads=2, intermediate_size=16)
        >>> x = np.random.rand(2, 5, 8).astype("float32")
        >>> layer(x, np.zeros((2, 1, 1, 5), "float32")).shape
        TensorShape([2, 5, 8])
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        initializer_range: float = 0.02,
        layer_norm_epsilon: float = 1e-12,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} not divisible by num_heads {num_heads}")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.intermediate_size = intermediate_size
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon
        std = initializer_range
        # Columns of `qkv` are [query | key | value], each [hidden_size] wide, heads
        # contiguous inside each block (the layout of BERT's separate Q, K, V matrices).
        self.qkv = dense(3 * hidden_size, std, "qkv")
        self.attention_output = dense(hidden_size, std, "attention_output")
        self.attention_layer_norm = layer_norm(layer_norm_epsilon, "attention_layer_norm")
        self.intermediate = dense(intermediate_size, std, "intermediate")
        self.output_dense = dense(hidden_size, std, "output")
        self.output_layer_norm = layer_norm(layer_norm_epsilon, "output_layer_norm")
        self.attention_probs_dropout = Dropout(attention_dropout)
        self.attention_output_dropout = Dropout(hidden_dropout)
        self.output_dropout = Dropout(hidden_dropout)

    def build(self, input_shape=None) -> None:
        hidden = (None, self.hidden_size)
        self.qkv.build(hidden)
        self.attention_output.build(hidden)
        self.attention_layer_norm.build(hidden)
        self.intermediate.build(hidden)
        self.output_dense.build((None, self.intermediate_size))
        self.output_layer_norm.build(hidden)
        self.built = True

    def attend(self, hidden_2d, attention_bias, batch, length, training):
        """Multi-head self-attention on [batch * seq, hidden] rows."""
        qkv = self.qkv(hidden_2d)
        qkv = tf.reshape(qkv, [batch, length, 3, self.num_heads, self.head_size])
        qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # [3, batch, heads, seq, head_size]
        # unstack, not qkv[0], qkv[1], qkv[2]: each slice's gradient would write a
        # zero-filled copy of the whole [3, ...] tensor (profiled: ~6% of a training step).
        query, key, value = tf.unstack(qkv, num=3, axis=0)
        # Scaling the query ([.., seq, head]) is cheaper than scaling the scores ([.., seq, seq]).
        query = query * tf.cast(1.0 / math.sqrt(self.head_size), query.dtype)
        scores = tf.matmul(query, key, transpose_b=True) + attention_bias
        probs = tf.nn.softmax(scores, axis=-1)
        probs = self.attention_probs_dropout(probs, training=training)
        context = tf.matmul(probs, value)  # [batch, heads, seq, head_size]
        context = tf.transpose(context, [0, 2, 1, 3])
        return tf.reshape(context, [batch * length, self.hidden_size])

    def call(self, hidden, attention_bias, training=None):
        shape = tf.shape(hidden)
        batch, length = shape[0], shape[1]
        hidden_2d = tf.reshape(hidden, [-1, self.hidden_size])
        attention_bias = tf.cast(attention_bias, hidden.dtype)
        context = self.attend(hidden_2d, attention_bias, batch, length, training)
        attended = self.attention_output_dropout(self.attention_output(context), training=training)
        attended = self.attention_layer_norm(attended + hidden_2d)
        inner = gelu(self.intermediate(attended), training)
        output = self.output_dropout(self.output_dense(inner), training=training)
        output = self.output_layer_norm(output + attended)
        return tf.reshape(output, shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            initializer_range=self.initializer_range,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
