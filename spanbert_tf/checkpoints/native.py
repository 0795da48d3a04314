"""spanbert-tf's own checkpoint: a directory any SpanBERT model can be restored from.

    DIR/config.json           SpanBertConfig (SpanBertConfig.load reads it)
    DIR/encoder.weights.h5    SpanBertEncoder weights (Keras `save_weights` format)
    DIR/mlm_head.weights.h5   MaskedLMHead weights, optional
    DIR/sbo_head.weights.h5   SpanBoundaryHead weights, optional
    DIR/vocab.txt             WordPiece vocabulary, optional
    DIR/checkpoint.json       format version, which heads are stored, provenance

The head files hold only the heads' own weights (transform, LayerNorms, biases, SBO
position embeddings); their decoder is the encoder's word-embedding matrix. A head
without a file was never trained or imported: `load_pretrainer` leaves it at its random
initialisation and lists it in `report.fresh`. `encoder.weights.h5` also loads directly
with `SpanBertEncoder(config).load_weights(...)`.

Example:
    >>> import tempfile
    >>> from spanbert_tf import SpanBertConfig, SpanBertPretrainer
    >>> model = SpanBertPretrainer(SpanBertConfig.preset("tiny", vocab_size=100))
    >>> directory = tempfile.mkdtemp()
    >>> _ = save_checkpoint(directory, model, heads=["mlm_head"], overwrite=True)
    >>> restored, report = load_pretrainer(directory)
    >>> report.fresh
    ['sbo_head']
    >>> load_encoder(directory).config == model.config
    True
"""

from __future__ import annotations

import collections
import json
import os
import shutil
from typing import Any, Sequence

import h5py
import keras

from spanbert_tf.checkpoints.report import HEADS, CheckpointError, CheckpointReport
from spanbert_tf.checkpoints.tensors import format_shape
from spanbert_tf.config import SpanBertConfig
from spanbert_tf.models.encoder import SpanBertEncoder
from spanbert_tf.models.pretrainer import SpanBertPretrainer

FORMAT_NAME = "spanbert-tf"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MANIFEST_FILE = "checkpoint.json"
ENCODER_FILE = "encoder.weights.h5"
VOCAB_FILE = "vocab.txt"


def head_file(head: str) -> str:
    return f"{head}.weights.h5"


def is_native_checkpoint(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return os.path.isfile(os.path.join(path, ENCODER_FILE)) and os.path.isfile(
        os.path.join(path, CONFIG_FILE))


def count_vocab_entries(vocab_file: str) -> int:
    with open(vocab_file, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.rstrip("\n"))


def copy_vocab(vocab_file: str, directory: str, config: SpanBertConfig) -> None:
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(f"{vocab_file}: no such vocabulary file")
    entries = count_vocab_entries(vocab_file)
    if entries > config.vocab_size:
        raise CheckpointError(
            f"{vocab_file}: {entries} entries, but the model's word embeddings have only "
            f"{config.vocab_size} rows")
    shutil.copyfile(vocab_file, os.path.join(directory, VOCAB_FILE))


def check_writable(directory: str, overwrite: bool) -> None:
    if os.path.exists(os.path.join(directory, CONFIG_FILE)) and not overwrite:
        raise ValueError(f"{directory} already holds a checkpoint; pass overwrite=True "
                         f"(--overwrite)")


def save_checkpoint(
    directory: str | os.PathLike,
    model: SpanBertEncoder | SpanBertPretrainer,
    heads: Sequence[str] | None = None,
    vocab_file: str | None = None,
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Writes `model` as a native checkpoint and returns the file names written.

    Args:
        directory: created if needed; must not hold a checkpoint unless `overwrite`.
        model: an encoder, or a pretrainer whose heads may be stored too.
        heads: which heads to store ("mlm_head", "sbo_head"); default all heads of a
            pretrainer. Leave out heads that were never trained or imported, so that
            loading reports them as fresh.
        vocab_file: WordPiece vocabulary copied in as vocab.txt.
        source: provenance recorded in checkpoint.json (e.g. the imported path).
    """
    directory = os.fspath(directory)
    encoder = model.encoder if isinstance(model, SpanBertPretrainer) else model
    if heads is None:
        heads = list(HEADS) if isinstance(model, SpanBertPretrainer) else []
    unknown = sorted(set(heads) - set(HEADS))
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; choose from {list(HEADS)}")
    if heads and not isinstance(model, SpanBertPretrainer):
        raise ValueError(f"heads {list(heads)} requested but the model is a bare encoder")
    check_writable(directory, overwrite)
    os.makedirs(directory, exist_ok=True)
    for stale in [head_file(h) for h in HEADS] + [VOCAB_FILE]:
        if os.path.exists(os.path.join(directory, stale)):
            os.remove(os.path.join(directory, stale))
    encoder.config.save(os.path.join(directory, CONFIG_FILE))
    keras.saving.save_weights(encoder, os.path.join(directory, ENCODER_FILE))
    written = [CONFIG_FILE, ENCODER_FILE]
    for head in heads:
        layer = getattr(model, head)
        keras.saving.save_weights(layer, os.path.join(directory, head_file(head)),
                                  objects_to_skip=[layer.token_embedding])
        written.append(head_file(head))
    if vocab_file is not None:
        copy_vocab(vocab_file, directory, encoder.config)
        written.append(VOCAB_FILE)
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "heads": list(heads),
                "vocab": VOCAB_FILE if vocab_file is not None else None,
                "source": source or {}}
    with open(os.path.join(directory, MANIFEST_FILE), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")
    written.append(MANIFEST_FILE)
    return written


def read_manifest(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: not a {FORMAT_NAME} checkpoint of version {FORMAT_VERSION} "
            f"(format={manifest.get('format')!r}, version={manifest.get('version')!r})")
    return manifest


def read_config(directory: str) -> SpanBertConfig:
    if not is_native_checkpoint(directory):
        raise FileNotFoundError(
            f"{directory}: not a spanbert-tf checkpoint (needs {CONFIG_FILE} and {ENCODER_FILE})")
    read_manifest(directory)
    return SpanBertConfig.load(os.path.join(directory, CONFIG_FILE))


def stored_shapes(path: str) -> list[tuple[str, tuple[int, ...]]]:
    shapes: list[tuple[str, tuple[int, ...]]] = []

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            shapes.append((name, tuple(int(d) for d in item.shape)))

    with h5py.File(path, "r") as handle:
        handle.visititems(visit)
    return shapes


def check_shapes(path: str, variables: Sequence[keras.Variable]) -> None:
    """Fails, naming weights and shapes, when a file does not fit the configured model.

    Keras matches weights by position, and its own error does not give shapes; comparing
    the multisets of shapes catches every vocabulary, width or depth mismatch first.
    """
    expected = collections.Counter(tuple(v.shape) for v in variables)
    found_list = stored_shapes(path)
    found = collections.Counter(shape for _, shape in found_list)
    if expected == found:
        return
    missing = [(v.path, tuple(v.shape)) for v in variables
               if (expected - found)[tuple(v.shape)] > 0]
    extra = [(name, shape) for name, shape in found_list if (found - expected)[shape] > 0]
    details = [f"expected {name} {format_shape(shape)}" for name, shape in missing[:5]]
    details += [f"found {name} {format_shape(shape)}" for name, shape in extra[:5]]
    raise CheckpointError(
        f"{path} does not match {CONFIG_FILE} ({sum(expected.values())} weights expected, "
        f"{len(found_list)} stored): " + "; ".join(details))


def load_file(path: str, layer: keras.layers.Layer, skip: Sequence[keras.layers.Layer],
              report: CheckpointReport) -> None:
    skipped = {id(v) for item in skip for v in item.weights}
    variables = [v for v in layer.weights if id(v) not in skipped]
    check_shapes(path, variables)
    keras.saving.load_weights(layer, path, objects_to_skip=list(skip) or None)
    for variable in variables:
        report.add_loaded(variable.path, variable.shape)


def load_encoder(directory: str | os.PathLike) -> SpanBertEncoder:
    """Restores the encoder of a native checkpoint (heads, if any, are not read)."""
    directory = os.fspath(directory)
    config = read_config(directory)
    encoder = SpanBertEncoder(config, name="encoder")
    report = CheckpointReport(directory, "native", config)
    load_file(os.path.join(directory, ENCODER_FILE), encoder, [], report)
    return encoder


def load_pretrainer(directory: str | os.PathLike) -> tuple[SpanBertPretrainer, CheckpointReport]:
    """Restores encoder and stored heads; heads without a file are reported fresh."""
    directory = os.fspath(directory)
    config = read_config(directory)
    report = CheckpointReport(directory, "native", config)
    pretrainer = SpanBertPretrainer(config)
    load_file(os.path.join(directory, ENCODER_FILE), pretrainer.encoder, [], report)
    manifest_heads = read_manifest(directory).get("heads")
    for head in HEADS:
        path = os.path.join(directory, head_file(head))
        if os.path.isfile(path):
            layer = getattr(pretrainer, head)
            load_file(path, layer, [layer.token_embedding], report)
        elif manifest_heads and head in manifest_heads:
            raise FileNotFoundError(f"{path}: listed in {MANIFEST_FILE} but missing")
        else:
            report.fresh.append(head)
    return pretrainer, report


def vocab_path(directory: str | os.PathLike) -> str | None:
    """The checkpoint's vocab.txt, or None when it stores no vocabulary."""
    path = os.path.join(os.fspath(directory), VOCAB_FILE)
    return path if os.path.isfile(path) else None
