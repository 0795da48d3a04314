"""Import of Hugging Face BERT checkpoints (e.g. SpanBERT/spanbert-base-cased).

A checkpoint is a directory with `config.json` and `model.safetensors` (read with
safetensors' numpy API: no torch needed), `model.safetensors.index.json` with its
shards, or `pytorch_model.bin` (needs torch; read with `weights_only=True`). Names may
carry the `bert.` prefix (BertForPreTraining, BertForMaskedLM) or not (BertModel);
LayerNorm parameters may use the old `gamma`/`beta` names.

Loaded: embeddings, every transformer layer, and the MLM head (`cls.predictions.*`)
when present. Skipped by design, and listed in the report: `pooler.*` and
`cls.seq_relationship.*` (SpanBERT has no NSP), the `embeddings.position_ids` buffer,
and tied decoder copies (checked equal to the weights they are tied to). Anything else
fails the import, as do missing and mis-shaped tensors.

Example:
    >>> from spanbert_tf.checkpoints import load_hf_checkpoint
    >>> pretrainer, report = load_hf_checkpoint("spanbert-base-cased/")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from spanbert_tf.checkpoints import bert_layout
from spanbert_tf.checkpoints.report import CheckpointError, CheckpointReport
from spanbert_tf.checkpoints.tensors import TensorSet
from spanbert_tf.checkpoints.torch_io import read_torch_state_dict
from spanbert_tf.config import SpanBertConfig
from spanbert_tf.models.pretrainer import SpanBertPretrainer

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"
WEIGHT_NAMES = (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, PYTORCH_NAME)

# Hugging Face BertConfig field -> (SpanBertConfig field, Hugging Face default).
HF_FIELDS = {
    "vocab_size": ("vocab_size", 30522),
    "hidden_size": ("hidden_size", 768),
    "num_hidden_layers": ("num_layers", 12),
    "num_attention_heads": ("num_heads", 12),
    "intermediate_size": ("intermediate_size", 3072),
    "max_position_embeddings": ("max_position_embeddings", 512),
    "type_vocab_size": ("type_vocab_size", 2),
    "hidden_dropout_prob": ("hidden_dropout", 0.1),
    "attention_probs_dropout_prob": ("attention_dropout", 0.1),
    "initializer_range": ("initializer_range", 0.02),
    "layer_norm_eps": ("layer_norm_epsilon", 1e-12),
    "hidden_act": ("hidden_act", "gelu"),
    "pad_token_id": ("pad_token_id", 0),
}

# Settings this implementation does not have: field -> the only value we support.
# Hugging Face's "gelu" is the exact erf GeLU; "gelu_new" etc. are tanh approximations.
HF_REQUIRED_VALUES = {
    "model_type": "bert",
    "position_embedding_type": "absolute",
    "hidden_act": "gelu",
    "is_decoder": False,
    "add_cross_attention": False,
}


def config_from_hf_dict(values: dict[str, Any], source: str = "config.json",
                        **overrides: Any) -> SpanBertConfig:
    """Maps a Hugging Face BERT `config.json` onto `SpanBertConfig`.

    Absent fields take Hugging Face's BertConfig defaults, as transformers would.
    Settings we do not implement raise `CheckpointError`; unrelated fields (e.g.
    `architectures`, `use_cache`) are ignored. `overrides` set SpanBertConfig fields
    that have no Hugging Face counterpart (e.g. `sbo_position_size`).
    """
    for field, supported in HF_REQUIRED_VALUES.items():
        value = values.get(field, supported)
        if value != supported:
            raise CheckpointError(
                f"{source}: unsupported setting {field}={value!r}; spanbert-tf implements "
                f"BERT with {field}={supported!r} only")
    mapped = {ours: values.get(theirs, default)
              for theirs, (ours, default) in HF_FIELDS.items()}
    if mapped["pad_token_id"] is None:
        mapped["pad_token_id"] = 0
    try:
        return SpanBertConfig.from_dict({**mapped, **overrides})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: {error}") from None


def read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as handle:
        try:
            values = json.load(handle)
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return values


def read_hf_config(path: str) -> SpanBertConfig:
    return config_from_hf_dict(read_json(path), source=path)


def find_weights_file(directory: str) -> str:
    """The weights file of a checkpoint directory, safetensors first (as transformers does)."""
    for name in WEIGHT_NAMES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{directory}: no weights file; expected one of {', '.join(WEIGHT_NAMES)}")


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read safetensors file: {error}") from error


def read_sharded_safetensors(index_path: str) -> dict[str, np.ndarray]:
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: no 'weight_map' object")
    directory = os.path.dirname(index_path)
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        tensors.update(read_safetensors(os.path.join(directory, shard)))
    return tensors


def read_hf_tensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a `.safetensors`, `.safetensors.index.json` or `.bin` file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith(".index.json"):
        return read_sharded_safetensors(path)
    return read_torch_state_dict(path)


def canonical_tensors(tensors: TensorSet) -> TensorSet:
    """Drops the optional `bert.` prefix and renames `gamma`/`beta` to `weight`/`bias`."""
    return tensors.without_prefix("bert.").with_new_layer_norm_names()


def load_bert_tensors(tensors: TensorSet, pretrainer: SpanBertPretrainer) -> None:
    """Loads encoder (+ MLM head if present) from canonical names; SBO head stays fresh."""
    bert_layout.load_encoder(tensors, pretrainer.encoder)
    if bert_layout.has_mlm_head(tensors):
        bert_layout.load_mlm_head(tensors, pretrainer.mlm_head)
    else:
        tensors.report.fresh.append("mlm_head")
    tensors.report.fresh.append("sbo_head")
    bert_layout.skip_documented(tensors)
    tensors.check_all_used("a BERT encoder or its MLM head")


def resolve_hf_paths(path: str) -> tuple[str, str]:
    """(config path, weights path) for a checkpoint directory or a weights file."""
    if os.path.isdir(path):
        return os.path.join(path, CONFIG_NAME), find_weights_file(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint directory or file")
    return os.path.join(os.path.dirname(path) or ".", CONFIG_NAME), path


def load_hf_checkpoint(
    path: str | os.PathLike,
    config: SpanBertConfig | None = None,
    tensors: dict[str, np.ndarray] | None = None,
) -> tuple[SpanBertPretrainer, CheckpointReport]:
    """Builds a `SpanBertPretrainer` from a Hugging Face BERT checkpoint.

    Args:
        path: checkpoint directory, or its weights file (config.json read beside it).
        config: architecture to use instead of the checkpoint's config.json.
        tensors: already-read tensors of `path` (avoids reading the file twice).

    Returns:
        (pretrainer, report). The SBO head, and the MLM head when the checkpoint has
        none, keep their random initialisation and are listed in `report.fresh`.
    """
    path = os.fspath(path)
    config_path, weights_path = resolve_hf_paths(path)
    if config is None:
        config = read_hf_config(config_path)
    if tensors is None:
        tensors = read_hf_tensors(weights_path)
    report = CheckpointReport(source=weights_path, format="hf", config=config)
    pretrainer = SpanBertPretrainer(config)
    load_bert_tensors(canonical_tensors(TensorSet(tensors, report)), pretrainer)
    return pretrainer, report
