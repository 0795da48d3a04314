"""Keras 3 layers of SpanBERT: embeddings, transformer layer, MLM and SBO heads."""

from spanbert_tf.layers.embeddings import SpanBertEmbeddings
from spanbert_tf.layers.mlm_head import MaskedLMHead
from spanbert_tf.layers.sbo_head import SpanBoundaryHead
from spanbert_tf.layers.transformer import TransformerLayer

__all__ = ["SpanBertEmbeddings", "MaskedLMHead", "SpanBoundaryHead", "TransformerLayer"]
