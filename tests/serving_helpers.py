"""Shared by the serving tests: tiny raw-text SavedModels in TF Serving's layout and one
in-process `serve-local` endpoint (gRPC + REST on free ports) per test session.

The exports are built here, not with `serving.export`, so that the endpoint tests do not
depend on the export code's evolution: a tf.Module whose `serving_default` takes a 1-D
string batch `text` and runs `SpanBertTokenizer` + a tiny `SpanBertEncoder` (mean
pooling), plus `tokenize` (string in, int32 ids out) and `encode_ids` (int32 ids in).
Version 1 and version 2 of "encoder" have different weights, so version selection is
visible in the outputs.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import tempfile

import keras
import numpy as np
import tensorflow as tf

from spanbert_tf import SpanBertConfig, SpanBertEncoder, SpanBertTokenizer
from corpus_helpers import minilm_vocab

MAX_LENGTH = 32
SENTENCES = [
    "SpanBERT masks contiguous random spans rather than individual tokens.",
    "Paris is the capital of France.",
    "The river froze.",
    "Who wrote the novel that was published in London in January 1813?",
]


class TinyTextEncoder(tf.Module):
    """Raw strings -> mean-pooled embedding, [CLS] vector and token count."""

    def __init__(self, vocab_path: str, seed: int):
        super().__init__()
        self.tokenizer = SpanBertTokenizer(vocab_path, lowercase=True)
        keras.utils.set_random_seed(seed)
        self.encoder = SpanBertEncoder(SpanBertConfig.preset(
            "tiny", vocab_size=self.tokenizer.vocab_size, max_position_embeddings=MAX_LENGTH))

    def pack(self, text):
        ids = self.tokenizer.tokenize(text)[:, :MAX_LENGTH - 2]
        rows = ids.nrows()
        cls = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], self.tokenizer.cls_id))
        sep = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], self.tokenizer.sep_id))
        ids = tf.concat([cls, ids, sep], axis=1)
        input_ids = ids.to_tensor(default_value=self.tokenizer.pad_id)
        input_mask = tf.sequence_mask(ids.row_lengths(), tf.shape(input_ids)[1], tf.int32)
        return input_ids, input_mask

    def encode(self, input_ids, input_mask):
        sequence = self.encoder({"input_ids": input_ids, "input_mask": input_mask},
                                training=False)["sequence_output"]
        weights = tf.cast(input_mask, sequence.dtype)[:, :, tf.newaxis]
        pooled = tf.reduce_sum(sequence * weights, 1) / tf.maximum(
            tf.reduce_sum(weights, 1), 1.0)
        # sequence[:, :1], not [:, 0]: an empty batch packs to shape [0, 0, H].
        cls = tf.reshape(sequence[:, :1], [-1, self.encoder.config.hidden_size])
        return {"embedding": pooled, "cls_embedding": cls,
                "num_tokens": tf.reduce_sum(input_mask, 1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        return self.encode(*self.pack(text))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def tokenize(self, text):
        input_ids, input_mask = self.pack(text)
        return {"input_ids": input_ids, "input_mask": input_mask}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                                  tf.TensorSpec([None, None], tf.int32, name="input_mask")])
    def encode_ids(self, input_ids, input_mask):
        return self.encode(input_ids, input_mask)


def write_export(base_path: str, version: int, seed: int) -> str:
    """Writes BASE/VERSION/ (a TinyTextEncoder SavedModel); returns its path."""
    module = TinyTextEncoder(minilm_vocab(), seed)
    path = os.path.join(base_path, str(version))
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.serve, "tokenize": module.tokenize,
        "encode_ids": module.encode_ids})
    return path


@functools.lru_cache(maxsize=1)
def export_base() -> str:
    """EXPORT_BASE with encoder/1, encoder/2 (different seeds) and other/7 (a copy of
    encoder/1)."""
    base = tempfile.mkdtemp(prefix="spanbert_serving_")
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    write_export(os.path.join(base, "encoder"), 1, seed=1)
    write_export(os.path.join(base, "encoder"), 2, seed=2)
    # "other" only needs to exist under another name and version: a copy will do.
    shutil.copytree(os.path.join(base, "encoder", "1"), os.path.join(base, "other", "7"))
    return base


@functools.lru_cache(maxsize=None)
def loaded(model: str, version: int):
    """The SavedModel itself, loaded directly (the reference for served outputs)."""
    return tf.saved_model.load(os.path.join(export_base(), model, str(version)))


def direct_outputs(model: str, version: int, texts, signature: str = "serving_default"):
    function = loaded(model, version).signatures[signature]
    return {name: value.numpy()
            for name, value in function(text=tf.constant(texts, tf.string)).items()}


def write_model_config(base: str) -> str:
    """A models.config serving both versions of encoder (labels stable=1, canary=2) and
    the latest of other."""
    path = os.path.join(base, "models.config")
    with open(path, "w", encoding="utf-8") as file:
        file.write(f"""
model_config_list {{
  config {{
    name: "encoder"
    base_path: "{os.path.join(base, 'encoder')}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "other"
    base_path: "other"
    model_version_policy {{ latest {{ num_versions: 1 }} }}
  }}
}}
""")
    return path


@functools.lru_cache(maxsize=1)
def shared_registry():
    from serving.model_registry import ModelRegistry, parse_model_config

    registry = ModelRegistry(parse_model_config(write_model_config(export_base())))
    registry.refresh()
    return registry


@functools.lru_cache(maxsize=1)
def shared_server():
    """One LocalModelServer (gRPC + REST, free ports) for the whole test session."""
    from serving.server import LocalModelServer

    server = LocalModelServer(shared_registry(), grpc_port=0, rest_port=0, host="127.0.0.1",
                              workers=8, poll_seconds=0).start()
    atexit.register(server.stop, 0)
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def max_abs_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0
