"""Tiny pretraining inputs for the `pretrain` tests, built from the bundled corpus.

A WikiText excerpt (data/corpus) gets its own small WordPiece vocabulary
(`pipelines.vocab.build_vocab`) and is packed into two TFRecord shards by
`pipelines.prepare_pretraining`, exactly as a user would prepare real data.
"""

from __future__ import annotations

import os
import subprocess
import sys

from pipelines.corpus import BUNDLED_CORPUS_DIR
from pipelines.prepare_pretraining import prepare_pretraining
from pipelines.vocab import build_vocab
from spanbert_tf import SpanBertConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIKITEXT = os.path.join(BUNDLED_CORPUS_DIR, "wikitext2_raw_test_shared.txt")
SEQUENCE_LENGTH = 64


def make_pretraining_data(directory: str, lines: int = 300, vocab_size: int = 2000) -> str:
    """Writes DIR/corpus.txt, DIR/vocab.txt and DIR/shards/; returns the shard directory."""
    os.makedirs(directory, exist_ok=True)
    excerpt = os.path.join(directory, "corpus.txt")
    with open(WIKITEXT, encoding="utf-8") as source:
        text = source.read().split("\n")[:lines]
    with open(excerpt, "w", encoding="utf-8") as target:
        target.write("\n".join(text) + "\n")
    vocab = os.path.join(directory, "vocab.txt")
    build_vocab([excerpt], vocab, vocab_size=vocab_size, num_unused=10, progress=False)
    shards = os.path.join(directory, "shards")
    prepare_pretraining([excerpt], shards, vocab, max_seq_length=SEQUENCE_LENGTH,
                        num_shards=2, num_workers=1, overwrite=True, progress=False)
    return shards


def vocab_size_of(shards: str) -> int:
    with open(os.path.join(os.path.dirname(shards), "vocab.txt"), encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def write_tiny_config(path: str, vocab_size: int, **overrides) -> str:
    """The tiny preset at sequence length 64, without dropout (deterministic replicas)."""
    values = dict(vocab_size=vocab_size, max_position_embeddings=SEQUENCE_LENGTH,
                  hidden_dropout=0.0, attention_dropout=0.0, num_layers=1)
    values.update(overrides)
    SpanBertConfig.preset("tiny", **values).save(path)
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
                "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
                "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"})
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def pretrain_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "spanbert_tf.cli", "pretrain", *args]


def start(command: list[str], log_path: str, **env: str) -> subprocess.Popen:
    log = open(log_path, "w", encoding="utf-8")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                            env=subprocess_env(**env))
