"""Keras models: the encoder, the pretrainer and the fine-tuning task models."""

from spanbert_tf.models.classifier import SpanBertClassifier
from spanbert_tf.models.encoder import SpanBertEncoder
from spanbert_tf.models.pretrainer import SpanBertPretrainer
from spanbert_tf.models.question_answering import SpanBertQuestionAnswering
from spanbert_tf.models.token_classifier import SpanBertTokenClassifier

__all__ = ["SpanBertClassifier", "SpanBertEncoder", "SpanBertPretrainer",
           "SpanBertQuestionAnswering", "SpanBertTokenClassifier"]
