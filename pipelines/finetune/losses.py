"""Losses and metrics for `compile()`/`fit()` of token-level tasks with ignored positions.

Token classification labels only the first sub-token of every word; the other
positions (continuation pieces, [CLS], [SEP], padding) carry the label -1.
`MaskedSparseCategoricalCrossentropy` averages the cross-entropy over labelled
positions only (so the padding length of a bucket does not change the loss) and
`MaskedSparseCategoricalAccuracy` counts only labelled positions.

Example:
    >>> import numpy as np
    >>> labels = np.array([[-1, 1, 0, -1]])
    >>> logits = np.array([[[0.0, 9.0], [0.0, 9.0], [0.0, 9.0], [9.0, 0.0]]], np.float32)
    >>> accuracy = MaskedSparseCategoricalAccuracy()
    >>> accuracy.update_state(labels, logits)
    >>> float(accuracy.result())
    0.5
"""

from __future__ import annotations

import keras
import tensorflow as tf


def labelled_positions(y_true) -> tf.Tensor:
    return tf.cast(y_true, tf.int32) >= 0


@keras.saving.register_keras_serializable(package="spanbert_tf")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Softmax cross-entropy from logits, averaged over positions with label >= 0."""

    def __init__(self, name: str = "masked_sparse_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        mask = labelled_positions(y_true)
        labels = tf.where(mask, tf.cast(y_true, tf.int32), 0)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=tf.cast(y_pred, tf.float32))
        weights = tf.cast(mask, tf.float32)
        return tf.math.divide_no_nan(tf.reduce_sum(losses * weights), tf.reduce_sum(weights))


@keras.saving.register_keras_serializable(package="spanbert_tf")
class MaskedSparseCategoricalAccuracy(keras.metrics.Metric):
    """Fraction of positions with label >= 0 whose argmax logit is the label."""

    def __init__(self, name: str = "accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct",
                                         aggregation="sum")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total",
                                       aggregation="sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        mask = tf.cast(labelled_positions(y_true), tf.float32)
        predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        hits = tf.cast(tf.equal(predicted, tf.cast(y_true, tf.int32)), tf.float32) * mask
        self.correct.assign_add(tf.reduce_sum(hits))
        self.total.assign_add(tf.reduce_sum(mask))

    def result(self):
        return tf.math.divide_no_nan(self.correct, self.total)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)
