"""Import of the official fairseq SpanBERT checkpoint with MLM and SBO heads.

facebookresearch/SpanBERT (`pretraining/fairseq/models/pair_bert.py`) wraps a
`BertForPreTraining` as the fairseq model's `decoder`, so its state dict reads

    decoder.bert.embeddings.*, decoder.bert.encoder.layer.N.*    (LayerNorms: gamma/beta)
    decoder.bert.pooler.*, decoder.cls.seq_relationship.*       (skipped: no NSP in SpanBERT)
    decoder.cls.predictions.{transform.*, bias, decoder.weight}  -> MaskedLMHead
    decoder.cls.pair_target_predictions.
        position_embeddings.weight [max_targets, 200]            -> SpanBoundaryHead
        mlp_layer_norm.{linear1 [H, 2H+200], layer_norm1, linear2, layer_norm2}
        bias [V], decoder.weight (tied to the word embeddings)

The file is a dict holding the state dict under "model" and the training `args`; a
bare state dict is accepted too. The architecture comes from the tensor shapes
(vocabulary, widths, layers, SBO sizes) and from `args.config` for what shapes cannot
tell (attention heads, dropout); without args the head count is hidden_size / 64 (BERT's
convention) and the report says so. Its input order [left; right; position] is ours.

Example:
    >>> from spanbert_tf.checkpoints import load_fairseq_checkpoint
    >>> path = "spanbert_large_with_head/model.pt"
    >>> pretrainer, report = load_fairseq_checkpoint(path)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from typing import Any

from spanbert_tf.checkpoints import bert_layout
from spanbert_tf.checkpoints.report import CheckpointError, CheckpointReport
from spanbert_tf.checkpoints.tensors import TensorSet
from spanbert_tf.checkpoints.torch_io import load_torch_file, state_dict_to_numpy
from spanbert_tf.config import SpanBertConfig
from spanbert_tf.layers.sbo_head import SpanBoundaryHead
from spanbert_tf.models.pretrainer import SpanBertPretrainer

SBO_PREFIX = "cls.pair_target_predictions."
DEFAULT_HEAD_SIZE = 64
LAYER_INDEX = re.compile(r"^encoder\.layer\.(\d+)\.")

# fairseq BertConfig field -> SpanBertConfig field, for settings shapes cannot reveal.
ARGS_FIELDS = {
    "num_attention_heads": "num_heads",
    "hidden_dropout_prob": "hidden_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "initializer_range": "initializer_range",
    "hidden_act": "hidden_act",
}


def split_checkpoint(checkpoint: Any) -> tuple[Any, Any]:
    """(state dict, training args or None) of a fairseq file or a bare state dict."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"], checkpoint.get("args")
    return checkpoint, None


def settings_of(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return dict(getattr(value, "__dict__", {}))


def check_supported(args: dict[str, Any], bert_config: dict[str, Any], source: str) -> None:
    if bert_config.get("clamp_attention"):
        raise CheckpointError(
            f"{source}: unsupported setting clamp_attention=True (attention scores clamped to "
            f"+-10000); spanbert-tf does not clamp")
    layer = args.get("pair_target_layer", -1)
    if layer not in (-1, None):
        raise CheckpointError(
            f"{source}: unsupported setting pair_target_layer={layer}; spanbert-tf's SBO head "
            f"reads the last layer (-1)")


def shape_for_config(tensors: TensorSet, name: str) -> tuple[int, ...]:
    if name not in tensors:
        raise CheckpointError(
            f"{tensors.report.source}: tensor {tensors.original(name)!r} is missing: it is "
            f"needed to determine the architecture")
    return tensors.shape(name)


def config_from_fairseq(tensors: TensorSet, args: Any, notes: list[str]) -> SpanBertConfig:
    """The architecture from tensor shapes, plus `args.config` for heads and dropout."""
    args_values = settings_of(args)
    bert_config = settings_of(args_values.get("config"))
    check_supported(args_values, bert_config, tensors.report.source)
    vocab_size, hidden_size = shape_for_config(tensors, bert_layout.WORD_EMBEDDINGS)
    layers = {int(m.group(1)) for m in map(LAYER_INDEX.match, tensors.names()) if m}
    if not layers:
        raise CheckpointError(f"{tensors.report.source}: no encoder.layer.N.* tensors found")
    values: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_layers": max(layers) + 1,
        "intermediate_size": shape_for_config(
            tensors, "encoder.layer.0.intermediate.dense.weight")[0],
        "max_position_embeddings": shape_for_config(
            tensors, "embeddings.position_embeddings.weight")[0],
        "type_vocab_size": shape_for_config(tensors, "embeddings.token_type_embeddings.weight")[0],
    }
    for theirs, ours in ARGS_FIELDS.items():
        if bert_config.get(theirs) is not None:
            values[ours] = bert_config[theirs]
    if "num_heads" not in values:
        values["num_heads"] = max(1, hidden_size // DEFAULT_HEAD_SIZE)
        notes.append(f"num_heads={values['num_heads']} inferred as hidden_size / "
                     f"{DEFAULT_HEAD_SIZE} (the checkpoint has no args.config); pass a config "
                     f"to override")
    try:
        return SpanBertConfig.from_dict({**values, **sbo_sizes(tensors)})
    except ValueError as error:
        raise CheckpointError(f"{tensors.report.source}: {error}") from None


def sbo_sizes(tensors: TensorSet) -> dict[str, int]:
    name = SBO_PREFIX + "position_embeddings.weight"
    if name not in tensors:
        return {}
    max_targets, position_size = tensors.shape(name)
    return {"sbo_max_targets": max_targets, "sbo_position_size": position_size}


def load_sbo_head(tensors: TensorSet, head: SpanBoundaryHead) -> None:
    mlp = SBO_PREFIX + "mlp_layer_norm."
    head.position_embeddings.assign(
        tensors.take(SBO_PREFIX + "position_embeddings.weight", head.position_embeddings.shape))
    bert_layout.assign_dense(tensors, mlp + "linear1", head.dense1)
    bert_layout.assign_layer_norm(tensors, mlp + "layer_norm1", head.layer_norm1)
    bert_layout.assign_dense(tensors, mlp + "linear2", head.dense2)
    bert_layout.assign_layer_norm(tensors, mlp + "layer_norm2", head.layer_norm2)
    head.bias.assign(tensors.take(SBO_PREFIX + "bias", head.bias.shape))
    tensors.check_tied(SBO_PREFIX + "decoder.weight", head.token_embedding.embeddings.numpy(),
                       bert_layout.WORD_EMBEDDINGS)


def canonical_tensors(tensors: TensorSet) -> TensorSet:
    """Drops the `decoder.` and `bert.` prefixes and renames `gamma`/`beta`."""
    return tensors.without_prefix("decoder.").without_prefix("bert.").with_new_layer_norm_names()


def load_fairseq_checkpoint(
    path: str | os.PathLike,
    config: SpanBertConfig | None = None,
    checkpoint: Any = None,
) -> tuple[SpanBertPretrainer, CheckpointReport]:
    """Builds a `SpanBertPretrainer` from a fairseq SpanBERT checkpoint file.

    Args:
        path: the `.pt` file (torch needed; read with `weights_only=True`).
        config: architecture to use instead of the one read from the checkpoint; its
            SBO sizes are replaced by those of the checkpoint's SBO head, if it has one.
        checkpoint: the already-loaded file content (avoids reading it twice).

    Returns:
        (pretrainer, report); heads the checkpoint lacks are listed in `report.fresh`.
    """
    path = os.fspath(path)
    if checkpoint is None:
        checkpoint = load_torch_file(path, allow_pickled_objects=True)
    state_dict, args = split_checkpoint(checkpoint)
    report = CheckpointReport(source=path, format="fairseq")
    tensors = canonical_tensors(TensorSet(state_dict_to_numpy(state_dict, path), report))
    if config is None:
        config = config_from_fairseq(tensors, args, report.notes)
    else:
        config = config.replace(**sbo_sizes(tensors))
    report.config = config
    pretrainer = SpanBertPretrainer(config)
    load_weights(tensors, pretrainer)
    return pretrainer, report


def load_weights(tensors: TensorSet, pretrainer: SpanBertPretrainer) -> None:
    bert_layout.load_encoder(tensors, pretrainer.encoder)
    if bert_layout.has_mlm_head(tensors):
        bert_layout.load_mlm_head(tensors, pretrainer.mlm_head)
    else:
        tensors.report.fresh.append("mlm_head")
    if tensors.names(SBO_PREFIX):
        load_sbo_head(tensors, pretrainer.sbo_head)
    else:
        tensors.report.fresh.append("sbo_head")
    bert_layout.skip_documented(tensors)
    tensors.check_all_used("a SpanBERT encoder, its MLM head or its SBO head")

