"""Masked-LM head: Linear -> GeLU -> LayerNorm -> tied decoder + bias, at masked positions only."""

from __future__ import annotations

import keras
import tensorflow as tf

from spanbert_tf.layers.common import dense, gelu, layer_norm, tied_decoder_loss, tied_logits


@keras.saving.register_keras_serializable(package="spanbert_tf")
class MaskedLMHead(keras.layers.Layer):
    """Predicts the original token at each masked position.

    The sequence output is gathered at `positions` first, so the vocabulary projection
    costs [batch * num_positions, vocab] instead of [batch * seq, vocab] (the largest
    saving in pretraining, DESIGN.md section 6). The decoder matrix is the word-embedding
    matrix of `token_embedding`; the head owns only the transform and the output bias.

    Args:
        token_embedding: the encoder's word `keras.layers.Embedding` (tied decoder).
        hidden_size: width of the transform.
        initializer_range: stddev of the truncated-normal init.
        layer_norm_epsilon: LayerNorm epsilon.

    Call: `head(sequence_output [B, L, H], positions [B, P])` -> float32 logits [B, P, V].

    Example:
        >>> import keras, numpy as np
        >>> embedding = keras.layers.Embedding(50, 8); embedding.build((None,))
        >>> head = MaskedLMHead(embedding, hidden_size=8)
        >>> head(np.random.rand(2, 6, 8).astype("float32"), np.array([[1, 2], [3, 0]])).shape
        TensorShape([2, 2, 50])
    """

    def __init__(
        self,
        token_embedding: keras.layers.Embedding,
        hidden_size: int,
        initializer_range: float = 0.02,
        layer_norm_epsilon: float = 1e-12,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.token_embedding = token_embedding
        self.hidden_size = hidden_size
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon
        self.transform = dense(hidden_size, initializer_range, "transform")
        self.layer_norm = layer_norm(layer_norm_epsilon, "layer_norm")

    def build(self, input_shape=None) -> None:
        self.transform.build((None, self.hidden_size))
        self.layer_norm.build((None, self.hidden_size))
        self.bias = self.add_weight(
            name="bias", shape=(self.token_embedding.input_dim,), initializer="zeros",
            dtype="float32")
        self.built = True

    def hidden_states(self, sequence_output, positions):
        """The decoder's input [B, P, H]: transform of the gathered masked positions."""
        gathered = tf.gather(sequence_output, tf.cast(positions, tf.int32), batch_dims=1)
        return self.layer_norm(gelu(self.transform(gathered)))

    def loss(self, hidden, labels):
        """(cross-entropy, argmax hits) [B, P] of the decoder on `hidden_states` output."""
        return tied_decoder_loss(hidden, self.token_embedding.embeddings, self.bias, labels)

    def call(self, sequence_output, positions):
        hidden = self.hidden_states(sequence_output, positions)
        return tied_logits(hidden, self.token_embedding.embeddings, self.bias)

    def get_config(self) -> dict:
        # `token_embedding` is a reference into the encoder; the owning model re-links it.
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            initializer_range=self.initializer_range,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
