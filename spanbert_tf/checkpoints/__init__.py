"""Checkpoint import and spanbert-tf's own checkpoint format.

Import (each returns a `SpanBertPretrainer` and a `CheckpointReport`):
    load_hf_checkpoint       Hugging Face BERT layout (SpanBERT/spanbert-base-cased)
    load_fairseq_checkpoint  official fairseq SpanBERT checkpoint with MLM and SBO heads
    load_checkpoint          any of them, or a native checkpoint, format detected
Native format:
    save_checkpoint, load_pretrainer, load_encoder (any format), convert_checkpoint

Every mismatch (missing tensor, wrong shape, unexpected name, unsupported setting)
raises `CheckpointError` naming the tensor and both shapes. Only the pooler, the NSP
head, the position-id buffer and tied decoder copies are skipped, and the report lists
them.

Example:
    >>> from spanbert_tf.checkpoints import convert_checkpoint, load_encoder
    >>> report = convert_checkpoint("spanbert-base-cased/", "spanbert-base-tf/")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    >>> encoder = load_encoder("spanbert-base-tf/")  # doctest: +SKIP
"""

from spanbert_tf.checkpoints.fairseq import load_fairseq_checkpoint
from spanbert_tf.checkpoints.hf import config_from_hf_dict, load_hf_checkpoint
from spanbert_tf.checkpoints.loading import (
    FORMATS,
    convert_checkpoint,
    load_checkpoint,
    load_encoder,
    read_config_file,
)
from spanbert_tf.checkpoints.native import load_pretrainer, save_checkpoint, vocab_path
from spanbert_tf.checkpoints.report import CheckpointError, CheckpointReport

__all__ = [
    "FORMATS",
    "CheckpointError",
    "CheckpointReport",
    "config_from_hf_dict",
    "convert_checkpoint",
    "load_checkpoint",
    "load_encoder",
    "load_fairseq_checkpoint",
    "load_hf_checkpoint",
    "load_pretrainer",
    "read_config_file",
    "save_checkpoint",
    "vocab_path",
]
