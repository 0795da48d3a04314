"""BERT input embeddings: word + learned absolute position + token type, LayerNorm, dropout."""

from __future__ import annotations

import keras
import tensorflow as tf

from spanbert_tf.layers.common import layer_norm, weight_initializer
from spanbert_tf.layers.dropout import Dropout


@keras.saving.register_keras_serializable(package="spanbert_tf")
class SpanBertEmbeddings(keras.layers.Layer):
    """Sums word, position and segment embeddings, then LayerNorm and dropout.

    The word-embedding matrix (`word_embeddings.embeddings`) is also the decoder of the
    MLM and SBO heads (tied weights).

    Args:
        vocab_size: number of WordPiece ids.
        hidden_size: embedding width.
        max_position_embeddings: longest sequence the learned positions cover; longer
            inputs raise an error instead of being silently truncated.
        type_vocab_size: number of segment ids.
        dropout: dropout rate after the LayerNorm.
        initializer_range: stddev of the truncated-normal init.
        layer_norm_epsilon: LayerNorm epsilon.

    Example:
        >>> import numpy as np
        >>> layer = SpanBertEmbeddings(vocab_size=100, hidden_size=8)
        >>> layer(np.array([[2, 5, 3]]), np.zeros((1, 3), "int32")).shape
        TensorShape([1, 3, 8])
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        dropout: float = 0.1,
        initializer_range: float = 0.02,
        layer_norm_epsilon: float = 1e-12,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.dropout_rate = dropout
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon
        init = weight_initializer(initializer_range)
        self.word_embeddings = keras.layers.Embedding(
            vocab_size, hidden_size, embeddings_initializer=init, name="word_embeddings")
        self.position_embeddings = keras.layers.Embedding(
            max_position_embeddings, hidden_size, embeddings_initializer=init,
            name="position_embeddings")
        self.token_type_embeddings = keras.layers.Embedding(
            type_vocab_size, hidden_size, embeddings_initializer=init,
            name="token_type_embeddings")
        self.layer_norm = layer_norm(layer_norm_epsilon, "layer_norm")
        self.dropout = Dropout(dropout)

    def build(self, input_shape=None) -> None:
        self.word_embeddings.build((None, None))
        self.position_embeddings.build((None,))
        self.token_type_embeddings.build((None, None))
        self.layer_norm.build((None, None, self.hidden_size))
        self.built = True

    def check_length(self, input_ids: tf.Tensor) -> tf.Tensor:
        """Returns the sequence length, failing clearly if it exceeds the learned positions."""
        static_length = input_ids.shape[1]
        message = (f"input sequence is longer than max_position_embeddings="
                   f"{self.max_position_embeddings}; truncate or window the input")
        if static_length is not None:
            if static_length > self.max_position_embeddings:
                raise ValueError(f"{message} (got length {static_length})")
            return tf.constant(static_length, tf.int32)
        length = tf.shape(input_ids)[1]
        tf.debugging.assert_less_equal(length, self.max_position_embeddings, message=message)
        return length

    def call(self, input_ids, segment_ids=None, training=None):
        input_ids = tf.convert_to_tensor(input_ids)
        length = self.check_length(input_ids)
        embeddings = self.word_embeddings(input_ids)
        positions = self.position_embeddings.embeddings[:length]
        embeddings = embeddings + tf.cast(positions, embeddings.dtype)[tf.newaxis]
        if segment_ids is None:
            type_row = self.token_type_embeddings.embeddings[0]
            embeddings = embeddings + tf.cast(type_row, embeddings.dtype)
        else:
            embeddings = embeddings + self.token_type_embeddings(segment_ids)
        embeddings = self.layer_norm(embeddings)
        return self.dropout(embeddings, training=training)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size,
            dropout=self.dropout_rate,
            initializer_range=self.initializer_range,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
