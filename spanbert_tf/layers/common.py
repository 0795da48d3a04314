"""Small building blocks shared by the layers."""

from __future__ import annotations

import keras
import tensorflow as tf

from spanbert_tf.layers.tied_cross_entropy import tied_cross_entropy, vocabulary_logits


def weight_initializer(stddev: float) -> keras.initializers.Initializer:
    """BERT's initializer: truncated normal with the configured stddev."""
    return keras.initializers.TruncatedNormal(stddev=stddev)


def gelu(x: tf.Tensor) -> tf.Tensor:
    """BERT's exact GeLU, x * Phi(x) = (x / 2) * (1 + erf(x / sqrt(2))) (not the tanh form).

    Written with erf directly: `tf.nn.gelu(approximate=False)` lowers to an erfc form
    with one more elementwise pass over the [tokens, 3072] activations. This operand
    order is the pattern the TFLite converter fuses into its GELU builtin (TFLite has
    no Erf kernel), so the same layers convert without rewriting.
    """
    return (x * tf.cast(0.5, x.dtype)) * (
        tf.math.erf(x * tf.cast(0.7071067811865476, x.dtype)) + tf.cast(1.0, x.dtype))


def _written_transpose(rows: tf.Tensor) -> tf.Tensor:
    """rows^T as a tensor of its own. Grappler folds a plain 2-D Transpose that feeds a
    MatMul into `transpose_a`, the slow case below; through a 3-D transpose it stays."""
    shape = tf.shape(rows)
    batched = tf.reshape(rows, [1, shape[0], shape[1]])
    return tf.reshape(tf.transpose(batched, [0, 2, 1]), [shape[1], shape[0]])


# Row strides that are a multiple of 4 KiB make oneDNN's transposed-A kernel gradient slow on
# CPU (cache-set aliasing): [2048, 256]^T @ [2048, 1024] 18.2 ms, 12.5 ms on a copy padded
# by 16 columns, pad and slice included; no slower for the other shapes measured.
_ALIASED_STRIDE_BYTES = 4096
_STRIDE_PAD = 16


def _kernel_gradient(rows: tf.Tensor, upstream: tf.Tensor) -> tf.Tensor:
    """rows^T @ upstream (a Dense kernel's gradient) in the form oneDNN computes fastest.

    Narrowing layers (more inputs than units) multiply a written-out rows^T: oneDNN's
    `transpose_a` runs at about half speed when rows are wide ([2048, 1024] x [2048,
    256], BERT's FFN output layer: 20.5 ms vs 12.3 ms with the copy included). Upstream
    gradients whose row stride is a multiple of 4 KiB are padded (see above).
    """
    units = upstream.shape[-1]
    if rows.shape[-1] > units:
        return tf.matmul(_written_transpose(rows), upstream)
    if units * upstream.dtype.size % _ALIASED_STRIDE_BYTES == 0:
        padded = tf.pad(upstream, [[0, 0], [0, _STRIDE_PAD]])
        return tf.matmul(rows, padded, transpose_a=True)[:, :units]
    return tf.matmul(rows, upstream, transpose_a=True)


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
    `_FusedMatMul` kernel on CPU. In training the kernel gradient takes the faster
    forms of `_kernel_gradient`; inference graphs keep the plain MatMul that the
    fusion and the serving op lists expect. Weights, names and config are Dense's.
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
