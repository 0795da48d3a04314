"""BERT parameter names (Hugging Face / original PyTorch BERT) onto our Keras layers.

Both the Hugging Face layout and the fairseq SpanBERT checkpoint name the encoder and
the MLM head the same way once their prefixes are removed:

    embeddings.{word,position,token_type}_embeddings.weight, embeddings.LayerNorm.*
    encoder.layer.N.attention.self.{query,key,value}.*      -> TransformerLayer.qkv (fused)
    encoder.layer.N.attention.output.dense.*                -> attention_output
    encoder.layer.N.attention.output.LayerNorm.*            -> attention_layer_norm
    encoder.layer.N.intermediate.dense.*                    -> intermediate
    encoder.layer.N.output.{dense,LayerNorm}.*              -> output, output_layer_norm
    cls.predictions.transform.{dense,LayerNorm}.*, cls.predictions.bias -> MaskedLMHead

torch `Linear.weight` is [out, in]; a Keras `Dense.kernel` is [in, out], hence the
transposes. The fused `qkv` kernel is [H, 3H] with columns [query | key | value].
"""

from __future__ import annotations

import keras
import numpy as np

from spanbert_tf.checkpoints.tensors import TensorSet
from spanbert_tf.layers.mlm_head import MaskedLMHead
from spanbert_tf.models.encoder import SpanBertEncoder

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
MLM_PREFIX = "cls.predictions."

# The only tensors an import may leave out, each with the reason reported to the user.
SKIPPED_PREFIXES = (
    ("pooler.", "pooler: SpanBERT has no pooler (no next-sentence prediction)"),
    ("cls.seq_relationship.", "next-sentence-prediction head: SpanBERT has no NSP"),
)
SKIPPED_NAMES = (
    ("embeddings.position_ids", "buffer: positions are computed, not stored"),
)


def assign_dense(tensors: TensorSet, name: str, layer: keras.layers.Dense) -> None:
    kernel_shape = tuple(layer.kernel.shape)
    weight = tensors.take(f"{name}.weight", kernel_shape[::-1])
    layer.kernel.assign(weight.T)
    layer.bias.assign(tensors.take(f"{name}.bias", layer.bias.shape))


def assign_layer_norm(tensors: TensorSet, name: str,
                      layer: keras.layers.LayerNormalization) -> None:
    layer.gamma.assign(tensors.take(f"{name}.weight", layer.gamma.shape))
    layer.beta.assign(tensors.take(f"{name}.bias", layer.beta.shape))


def assign_embedding(tensors: TensorSet, name: str, layer: keras.layers.Embedding) -> None:
    layer.embeddings.assign(tensors.take(f"{name}.weight", layer.embeddings.shape))


def assign_qkv(tensors: TensorSet, name: str, layer: keras.layers.Dense) -> None:
    """Concatenates the separate query/key/value Linears into the fused [H, 3H] kernel."""
    hidden = layer.kernel.shape[0]
    parts = ("query", "key", "value")
    kernels = [tensors.take(f"{name}.{part}.weight", (hidden, hidden)).T for part in parts]
    biases = [tensors.take(f"{name}.{part}.bias", (hidden,)) for part in parts]
    layer.kernel.assign(np.concatenate(kernels, axis=1))
    layer.bias.assign(np.concatenate(biases, axis=0))


def load_encoder(tensors: TensorSet, encoder: SpanBertEncoder) -> None:
    """Copies `embeddings.*` and `encoder.layer.N.*` into `encoder`."""
    embeddings = encoder.embeddings
    assign_embedding(tensors, "embeddings.word_embeddings", embeddings.word_embeddings)
    assign_embedding(tensors, "embeddings.position_embeddings", embeddings.position_embeddings)
    assign_embedding(tensors, "embeddings.token_type_embeddings",
                     embeddings.token_type_embeddings)
    assign_layer_norm(tensors, "embeddings.LayerNorm", embeddings.layer_norm)
    for index, layer in enumerate(encoder.transformer_layers):
        prefix = f"encoder.layer.{index}"
        assign_qkv(tensors, f"{prefix}.attention.self", layer.qkv)
        assign_dense(tensors, f"{prefix}.attention.output.dense", layer.attention_output)
        assign_layer_norm(tensors, f"{prefix}.attention.output.LayerNorm",
                          layer.attention_layer_norm)
        assign_dense(tensors, f"{prefix}.intermediate.dense", layer.intermediate)
        assign_dense(tensors, f"{prefix}.output.dense", layer.output_dense)
        assign_layer_norm(tensors, f"{prefix}.output.LayerNorm", layer.output_layer_norm)


def has_mlm_head(tensors: TensorSet) -> bool:
    return bool(tensors.names(MLM_PREFIX))


def load_mlm_head(tensors: TensorSet, head: MaskedLMHead) -> None:
    """Copies `cls.predictions.*`; the decoder must be the (already loaded) word embeddings.

    Hugging Face also stores `cls.predictions.decoder.bias`, tied to `cls.predictions.bias`.
    """
    assign_dense(tensors, "cls.predictions.transform.dense", head.transform)
    assign_layer_norm(tensors, "cls.predictions.transform.LayerNorm", head.layer_norm)
    head.bias.assign(tensors.take("cls.predictions.bias", head.bias.shape))
    tensors.check_tied("cls.predictions.decoder.weight",
                       head.token_embedding.embeddings.numpy(), WORD_EMBEDDINGS)
    tensors.check_tied("cls.predictions.decoder.bias", head.bias.numpy(),
                       "cls.predictions.bias")


def skip_documented(tensors: TensorSet) -> None:
    """Marks the pooler, the NSP head and the position-id buffer as skipped, with reasons."""
    for prefix, reason in SKIPPED_PREFIXES:
        tensors.skip_prefix(prefix, reason)
    for name, reason in SKIPPED_NAMES:
        if name in tensors:
            tensors.skip(name, reason)
