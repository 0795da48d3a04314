"""One entry point for every checkpoint format: detection, loading, conversion.

Formats:
    "hf"       Hugging Face BERT directory (config.json + model.safetensors or
               pytorch_model.bin), or one of its weights files.
    "fairseq"  the official SpanBERT fairseq `.pt` file (with MLM and SBO heads).
    "native"   spanbert-tf's directory format (see `spanbert_tf.checkpoints.native`).

Example:
    >>> from spanbert_tf.checkpoints import convert_checkpoint, load_checkpoint
    >>> report = convert_checkpoint("spanbert-base-cased/", "converted/")  # doctest: +SKIP
    >>> pretrainer, report = load_checkpoint("converted/")  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import os
from typing import Any

from spanbert_tf.checkpoints import fairseq, hf, native
from spanbert_tf.checkpoints.report import CheckpointError, CheckpointReport
from spanbert_tf.checkpoints.torch_io import load_torch_file, state_dict_to_numpy
from spanbert_tf.config import SpanBertConfig
from spanbert_tf.models.encoder import SpanBertEncoder
from spanbert_tf.models.pretrainer import SpanBertPretrainer

FORMATS = ("auto", "hf", "fairseq", "native")
HF_FILE_SUFFIXES = (".safetensors", ".index.json")


def read_config_file(path: str | os.PathLike) -> SpanBertConfig:
    """A SpanBertConfig JSON or a Hugging Face BERT config.json (told apart by its fields)."""
    path = os.fspath(path)
    values = hf.read_json(path)
    if "num_hidden_layers" in values or "model_type" in values:
        return hf.config_from_hf_dict(values, source=path)
    try:
        return SpanBertConfig.from_dict(values)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None


def is_fairseq_content(checkpoint: Any) -> bool:
    state_dict, args = fairseq.split_checkpoint(checkpoint)
    if args is not None or state_dict is not checkpoint:
        return True
    return isinstance(state_dict, dict) and any(
        str(name).startswith("decoder.bert.") for name in state_dict)


def single_torch_file(directory: str) -> str:
    torch_files = sorted(glob.glob(os.path.join(directory, "*.pt")))
    if len(torch_files) != 1:
        raise FileNotFoundError(
            f"{directory}: expected exactly one fairseq .pt file, found {len(torch_files)}")
    return torch_files[0]


def detect_directory_format(path: str) -> tuple[str, str]:
    if native.is_native_checkpoint(path):
        return "native", path
    if os.path.isfile(os.path.join(path, hf.CONFIG_NAME)) and any(
            os.path.isfile(os.path.join(path, name)) for name in hf.WEIGHT_NAMES):
        return "hf", path
    if len(glob.glob(os.path.join(path, "*.pt"))) == 1:
        return "fairseq", single_torch_file(path)
    raise CheckpointError(
        f"{path}: cannot tell the checkpoint format: expected a spanbert-tf checkpoint "
        f"({native.CONFIG_FILE} + {native.ENCODER_FILE}), a Hugging Face checkpoint "
        f"({hf.CONFIG_NAME} + one of {', '.join(hf.WEIGHT_NAMES)}) or one fairseq .pt file")


def load_checkpoint(
    path: str | os.PathLike,
    format: str = "auto",
    config: SpanBertConfig | None = None,
) -> tuple[SpanBertPretrainer, CheckpointReport]:
    """Loads any supported checkpoint into a `SpanBertPretrainer`.

    Args:
        path: checkpoint directory or file.
        format: one of FORMATS; "auto" inspects the directory or the file's content.
        config: architecture override for "hf" and "fairseq" (see their loaders).
    """
    path = os.fspath(path)
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose from {FORMATS}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    content = None
    if format == "auto":
        if os.path.isdir(path):
            format, path = detect_directory_format(path)
        elif path.endswith(HF_FILE_SUFFIXES):
            format = "hf"
        else:
            content = load_torch_file(path, allow_pickled_objects=True)
            format = "fairseq" if is_fairseq_content(content) else "hf"
    if format == "native":
        if config is not None:
            raise ValueError("a native checkpoint carries its own config; do not pass one")
        return native.load_pretrainer(path)
    if format == "fairseq":
        if os.path.isdir(path):
            path = single_torch_file(path)
        return fairseq.load_fairseq_checkpoint(path, config=config, checkpoint=content)
    tensors = None if content is None else state_dict_to_numpy(content, path)
    return hf.load_hf_checkpoint(path, config=config, tensors=tensors)


def load_encoder(path: str | os.PathLike, format: str = "auto") -> SpanBertEncoder:
    """The encoder of any supported checkpoint (a native one is read without its heads)."""
    path = os.fspath(path)
    if format in ("auto", "native") and os.path.isdir(path) and native.is_native_checkpoint(path):
        return native.load_encoder(path)
    return load_checkpoint(path, format=format)[0].encoder


def source_vocab(path: str) -> str | None:
    """The vocab.txt shipped beside an imported checkpoint, if any."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    candidate = os.path.join(directory or ".", native.VOCAB_FILE)
    return candidate if os.path.isfile(candidate) else None


def convert_checkpoint(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    format: str = "auto",
    vocab_file: str | None = None,
    config: SpanBertConfig | None = None,
    overwrite: bool = False,
) -> CheckpointReport:
    """Imports a checkpoint and writes it as a native spanbert-tf checkpoint.

    Only heads that came from the checkpoint are written; the others are reported fresh
    and stay absent from the output. Without `vocab_file`, a vocab.txt found next to
    the input is copied. Returns the import report (with a note on the files written).
    """
    input_path, output_dir = os.fspath(input_path), os.fspath(output_dir)
    native.check_writable(output_dir, overwrite)
    pretrainer, report = load_checkpoint(input_path, format=format, config=config)
    if vocab_file is None:
        vocab_file = source_vocab(input_path)
        if vocab_file is not None:
            report.notes.append(f"vocabulary {vocab_file} copied")
    written = native.save_checkpoint(
        output_dir, pretrainer, heads=report.heads_loaded, vocab_file=vocab_file,
        source={"path": os.path.abspath(input_path), "format": report.format,
                "tensors_loaded": len(report.loaded)},
        overwrite=overwrite)
    report.notes.append(f"wrote {output_dir}: {', '.join(written)}")
    return report
