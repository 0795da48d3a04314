"""Small building blocks shared by the layers."""

from __future__ import annotations

import keras
import tensorflow as tf

from spanbert_tf.layers.tied_cross_entropy import tied_cross_entropy, vocabulary_logits


def weight_initializer(stddev: float) -> keras.initializers.Initializer:
    """BERT's initializer: truncated normal with the configured stddev."""
    return keras.initializers.TruncatedNormal(stddev=stddev)


_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def gelu(x: tf.Tensor, training: bool = False) -> tf.Tensor:
    """BERT's exact GeLU, x * Phi(x) = (x / 2) * (1 + erf(x / sqrt(2))) (not the tanh form).

    Written with erf directly: `tf.nn.gelu(approximate=False)` lowers to an erfc form
    with one more elementwise pass over the [tokens, 3072] activations. This operand
    order is the pattern the TFLite converter fuses into its GELU builtin (TFLite has
    no Erf kernel), so the same layers convert without rewriting. In training the same
    function runs as one fused XLA loop with a one-pass gradient (`_training_gelu`).
    """
    if training:
        return _training_gelu(x)
    return (x * tf.cast(0.5, x.dtype)) * _one_plus_erf(x)


def _one_plus_erf(x: tf.Tensor) -> tf.Tensor:
    """1 + erf(x / sqrt(2)) = 2 Phi(x)."""
    return tf.math.erf(x * tf.cast(_SQRT_HALF, x.dtype)) + tf.cast(1.0, x.dtype)


@tf.function(jit_compile=True, autograph=False)
def _fused_gelu(x: tf.Tensor) -> tf.Tensor:
    return gelu(x)


@tf.function(jit_compile=True, autograph=False)
def _fused_gelu_gradient(x: tf.Tensor, upstream: tf.Tensor) -> tf.Tensor:
    """upstream * d gelu / dx = upstream * (Phi(x) + x * phi(x))."""
    half = tf.cast(0.5, x.dtype)
    density = tf.cast(_INV_SQRT_2PI, x.dtype) * tf.exp(-half * x * x)
    return upstream * (half * _one_plus_erf(x) + x * density)


# TensorFlow's gradient of the formula above is ~9 elementwise passes over the
# [tokens, intermediate] activations, its forward 5; fused they are one each
# ([2048, 1024] forward + backward 9.4 -> 3.2 ms on the 2-core CPU).
@tf.custom_gradient
def _training_gelu(x: tf.Tensor):
    return _fused_gelu(x), lambda upstream: _fused_gelu_gradient(x, upstream)


# oneDNN's transposed-A matmul, which computes a Dense kernel's gradient, is slow on CPU
# when an operand's row stride is a multiple of 4 KiB (cache-set aliasing). Padding such
# operands by 16 columns and slicing the result costs less than it saves, pad and slice
# included (same-run medians): [2048, 256]^T x [2048, 1024] 18.2 -> 12.5 ms,
# [2048, 1024]^T x [2048, 256] 20.7 -> 13.0 ms, BERT-base [1024, 3072]^T x [1024, 768]
# 42.0 -> 38.6 ms; no shape measured was slower.
_ALIASED_STRIDE_BYTES = 4096
_STRIDE_PAD = 16


def _unaliased(rows: tf.Tensor) -> tf.Tensor:
    """`rows`, padded with zero columns when its row stride is a multiple of 4 KiB."""
    if rows.shape[-1] * rows.dtype.size % _ALIASED_STRIDE_BYTES:
        return rows
    return tf.pad(rows, [[0, 0], [0, _STRIDE_PAD]])


def _kernel_gradient(rows: tf.Tensor, upstream: tf.Tensor) -> tf.Tensor:
    """rows^T @ upstream, a Dense kernel's gradient, on unaliased operands."""
    inputs, units = rows.shape[-1], upstream.shape[-1]
    gradient = tf.matmul(_unaliased(rows), _unaliased(upstream), transpose_a=True)
    if gradient.shape[0] != inputs:
        gradient = gradient[:inputs]
    return gradient if gradient.shape[1] == units else gradient[:, :units]


@tf.custom_gradient
def _training_matmul(rows: tf.Tensor, kernel: tf.Tensor):
    """rows @ kernel whose kernel gradient is `_kernel_gradient`'s."""
    def grad(upstream):
        return tf.matmul(upstream, kernel, transpose_b=True), _kernel_gradient(rows, upstream)
    return tf.matmul(rows, kernel), grad


@keras.saving.register_keras_serializable(package="spanbert_tf")
class BiasAddDense(keras.layers.Dense):
    """`keras.layers.Dense` computed as MatMul + BiasAdd on 2-D rows.

    Keras adds the bias with a broadcasting AddV2, which TensorFlow's graph optimizer
    leaves as a separate pass; BiasAdd after a 2-D MatMul is fused into one
    `_FusedMatMul` kernel on CPU. In training the kernel gradient is computed on
    unaliased operands (`_kernel_gradient`); inference graphs keep the plain MatMul
    that the fusion and the serving op lists expect. Weights, names and config are Dense's.
    """

    def call(self, inputs, training=None):
        inputs = tf.convert_to_tensor(inputs)
        rows = tf.reshape(inputs, [-1, tf.shape(inputs)[-1]]) if inputs.shape.rank != 2 else inputs
        kernel = tf.cast(self.kernel, rows.dtype)
        outputs = _training_matmul(rows, kernel) if training else tf.matmul(rows, kernel)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, tf.cast(self.bias, outputs.dtype))
        if self.activation is not None:
            outputs = self.activation(outputs)
        if inputs.shape.rank != 2:
            outputs = tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [self.units]], 0))
        return outputs


def dense(units: int, stddev: float, name: str) -> keras.layers.Dense:
    return BiasAddDense(units, kernel_initializer=weight_initializer(stddev), name=name)


def layer_norm(epsilon: float, name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=epsilon, name=name)


def tied_logits(hidden: tf.Tensor, embeddings: tf.Variable, bias: tf.Variable) -> tf.Tensor:
    """Projects [..., H] onto the vocabulary with the word-embedding matrix, in float32
    (see `vocabulary_logits`)."""
    flat = tf.reshape(hidden, [-1, tf.shape(hidden)[-1]])
    matrix = tf.cast(embeddings, hidden.dtype)
    logits = vocabulary_logits(flat, matrix, bias)
    out_shape = tf.concat([tf.shape(hidden)[:-1], [tf.shape(matrix)[0]]], axis=0)
    return tf.reshape(logits, out_shape)


def masked_mean(sequence: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of the vectors of `sequence` [B, L, H] where `mask` [B, L] is non-zero.

    Sentence-transformers' MEAN pooling: [CLS] and [SEP] count as real tokens, padding
    does not; an all-padding row gives zeros. expand_dims rather than [:, :, None]:
    TFLite's StridedSlice rejects new_axis_mask.
    """
    weights = tf.expand_dims(tf.cast(mask, sequence.dtype), -1)
    total = tf.reduce_sum(sequence * weights, axis=1)
    return total / tf.maximum(tf.reduce_sum(weights, axis=1), tf.cast(1.0, sequence.dtype))


def tied_decoder_loss(hidden: tf.Tensor, embeddings: tf.Variable, bias: tf.Variable,
                      labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Cross-entropy and argmax hits of `tied_logits(hidden, ...)` against `labels`.

    Same values as softmax cross-entropy on `tied_logits`, with fewer passes over the
    [rows, vocab] floats (see `tied_cross_entropy`).
    Returns float32 (loss, hits), both shaped like `labels`.
    """
    flat = tf.reshape(hidden, [-1, tf.shape(hidden)[-1]])
    loss, hits = tied_cross_entropy(flat, tf.cast(embeddings, hidden.dtype), bias,
                                    tf.reshape(labels, [-1]))
    return tf.reshape(loss, tf.shape(labels)), tf.reshape(hits, tf.shape(labels))
