"""Small building blocks shared by the layers."""

from __future__ import annotations

import keras
import tensorflow as tf


def weight_initializer(stddev: float) -> keras.initializers.Initializer:
    """BERT's initializer: truncated normal with the configured stddev."""
    return keras.initializers.TruncatedNormal(stddev=stddev)


def gelu(x: tf.Tensor) -> tf.Tensor:
    """BERT's exact GeLU, x * Phi(x) with the erf form (not the tanh approximation)."""
    return tf.nn.gelu(x, approximate=False)


def dense(units: int, stddev: float, name: str) -> keras.layers.Dense:
    return keras.layers.Dense(units, kernel_initializer=weight_initializer(stddev), name=name)


def layer_norm(epsilon: float, name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=epsilon, name=name)


def tied_logits(hidden: tf.Tensor, embeddings: tf.Variable, bias: tf.Variable) -> tf.Tensor:
    """Projects [..., H] onto the vocabulary with the word-embedding matrix, in float32.

    Logits are computed in the compute dtype (fast under mixed precision) and cast to
    float32 before the bias is added, so that softmax and losses run in float32.
    """
    flat = tf.reshape(hidden, [-1, tf.shape(hidden)[-1]])
    matrix = tf.cast(embeddings, hidden.dtype)
    logits = tf.cast(tf.matmul(flat, matrix, transpose_b=True), tf.float32)
    logits = tf.nn.bias_add(logits, tf.cast(bias, tf.float32))
    out_shape = tf.concat([tf.shape(hidden)[:-1], [tf.shape(matrix)[0]]], axis=0)
    return tf.reshape(logits, out_shape)
