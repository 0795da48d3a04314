"""Keras models: the encoder and the pretrainer (task models live beside them)."""

from spanbert_tf.models.encoder import SpanBertEncoder
from spanbert_tf.models.pretrainer import SpanBertPretrainer

__all__ = ["SpanBertEncoder", "SpanBertPretrainer"]
