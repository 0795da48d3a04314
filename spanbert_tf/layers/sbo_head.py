"""Span boundary objective (SBO) head of SpanBERT (Joshi et al. 2020, section 3.2)."""

from __future__ import annotations

import keras
import tensorflow as tf

from spanbert_tf.layers.common import (dense, gelu, layer_norm, tied_decoder_loss, tied_logits,
                                       weight_initializer)


@keras.saving.register_keras_serializable(package="spanbert_tf")
class SpanBoundaryHead(keras.layers.Layer):
    """Predicts each token x_i of a masked span (s, e) from its boundary and its offset.

        y_i = f([h_{s-1}; h_{e+1}; p_{i-s}])
        f   = LayerNorm(GeLU(W2 . LayerNorm(GeLU(W1 . z + b1)) + b2))
        logits_i = E y_i + b_sbo        (E: the tied word-embedding matrix)

    The concatenation order (left boundary, right boundary, position) is the official
    implementation's, which matters when importing its weights.

    Args:
        token_embedding: the encoder's word `keras.layers.Embedding` (tied decoder).
        hidden_size: encoder width H; the MLP maps 2H + position_size -> H -> H.
        position_size: width of the relative-position embedding p (paper: 200).
        max_targets: number of relative positions, i.e. targets per span (paper: 15).
        initializer_range: stddev of the truncated-normal init.
        layer_norm_epsilon: LayerNorm epsilon.

    Call: `head(sequence_output [B, L, H], boundaries [B, N, 2], offsets [B, N])` with one
    row per predicted token: `boundaries` holds (s - 1, e + 1) of its span and `offsets`
    holds i - s in [0, max_targets). Returns float32 logits [B, N, V].

    Example:
        >>> import keras, numpy as np
        >>> embedding = keras.layers.Embedding(50, 8); embedding.build((None,))
        >>> head = SpanBoundaryHead(embedding, hidden_size=8, position_size=4)
        >>> h = np.random.rand(1, 10, 8).astype("float32")
        >>> head(h, np.array([[[2, 6], [2, 6]]]), np.array([[0, 1]])).shape
        TensorShape([1, 2, 50])
    """

    def __init__(
        self,
        token_embedding: keras.layers.Embedding,
        hidden_size: int,
        position_size: int = 200,
        max_targets: int = 15,
        initializer_range: float = 0.02,
        layer_norm_epsilon: float = 1e-12,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.token_embedding = token_embedding
        self.hidden_size = hidden_size
        self.position_size = position_size
        self.max_targets = max_targets
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dense1 = dense(hidden_size, initializer_range, "dense1")
        self.layer_norm1 = layer_norm(layer_norm_epsilon, "layer_norm1")
        self.dense2 = dense(hidden_size, initializer_range, "dense2")
        self.layer_norm2 = layer_norm(layer_norm_epsilon, "layer_norm2")

    def build(self, input_shape=None) -> None:
        self.position_embeddings = self.add_weight(
            name="position_embeddings", shape=(self.max_targets, self.position_size),
            initializer=weight_initializer(self.initializer_range))
        self.dense1.build((None, 2 * self.hidden_size + self.position_size))
        self.layer_norm1.build((None, self.hidden_size))
        self.dense2.build((None, self.hidden_size))
        self.layer_norm2.build((None, self.hidden_size))
        self.bias = self.add_weight(
            name="bias", shape=(self.token_embedding.input_dim,), initializer="zeros",
            dtype="float32")
        self.built = True

    def hidden_states(self, sequence_output, boundaries, offsets):
        """The decoder's input [B, N, H]: two Linear-GeLU-LayerNorm layers on the span
        boundary representations and the relative position embedding."""
        boundaries = tf.cast(boundaries, tf.int32)
        left = tf.gather(sequence_output, boundaries[..., 0], batch_dims=1)
        right = tf.gather(sequence_output, boundaries[..., 1], batch_dims=1)
        position = tf.gather(self.position_embeddings, tf.cast(offsets, tf.int32))
        features = tf.concat([left, right, tf.cast(position, left.dtype)], axis=-1)
        hidden = self.layer_norm1(gelu(self.dense1(features)))
        return self.layer_norm2(gelu(self.dense2(hidden)))

    def loss(self, hidden, labels):
        """(cross-entropy, argmax hits) [B, N] of the decoder on `hidden_states` output."""
        return tied_decoder_loss(hidden, self.token_embedding.embeddings, self.bias, labels)

    def call(self, sequence_output, boundaries, offsets):
        hidden = self.hidden_states(sequence_output, boundaries, offsets)
        return tied_logits(hidden, self.token_embedding.embeddings, self.bias)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            position_size=self.position_size,
            max_targets=self.max_targets,
            initializer_range=self.initializer_range,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
