"""Classification export from a fine-tuned model directory (task.json + model.keras +
vocab.txt): single texts and text pairs, fresh-process parity with the Keras model,
label names as assets, op list, bad inputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from serving import op_check
from serving.export import export_model
from serving.preprocessing import TextPreprocessor
from spanbert_tf import SpanBertConfig
from tests.export_helpers import (BAD_INPUTS, CentroidClassifier, minilm_tokenizer,
                                  real_sentences, run_fresh_process, write_task_dir)

LABELS = ["negative", "neutral", "positive"]
MAX_LENGTH = 48
OP_LIST = os.path.join(op_check.OPS_DIR, "classification_ops.txt")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random classifier exported twice: single-text and text-pair."""
    config = SpanBertConfig.preset("tiny", vocab_size=minilm_tokenizer().vocab_size)
    model = CentroidClassifier(config.to_dict(), num_labels=len(LABELS))
    base = str(tmp_path_factory.mktemp("exports"))
    paths = {}
    for pair in (False, True):
        task_dir = write_task_dir(model, str(tmp_path_factory.mktemp("task")), LABELS,
                                  MAX_LENGTH, pair=pair)
        paths[pair] = export_model(task_dir, base, name="pair" if pair else "single")
    return model, paths


def keras_logits(model, texts, pairs=None) -> np.ndarray:
    # The same packing the SavedModel uses, run eagerly (tested against Hugging Face in
    # test_export_preprocessing.py), then the Keras model.
    features = TextPreprocessor(minilm_tokenizer(), MAX_LENGTH)(
        tf.constant(texts), None if pairs is None else tf.constant(pairs))
    return model(features)["logits"].numpy()


def test_label_names_are_an_asset_and_in_metadata(exported):
    _, paths = exported
    with open(os.path.join(paths[False], "assets", "labels.txt"), encoding="utf-8") as handle:
        assert handle.read().splitlines() == LABELS
    with open(os.path.join(paths[True], "assets.extra", "export.json"), encoding="utf-8") as h:
        metadata = json.load(h)
    assert metadata["labels"] == LABELS and metadata["pair"] is True
    assert sorted(metadata["signatures"]["serving_default"]["inputs"]) == ["text", "text_pair"]
    assert sorted(metadata["signatures"]["serving_default"]["outputs"]) == [
        "label_ids", "label_names", "logits", "probabilities"]


def test_single_and_pair_exports_match_keras_in_a_fresh_process(exported):
    model, paths = exported
    texts = list(real_sentences(16))
    pairs = texts[8:] + texts[:8]
    bad = [BAD_INPUTS[name] for name in BAD_INPUTS]
    ids = {name: value.numpy() for name, value in TextPreprocessor(
        minilm_tokenizer(), MAX_LENGTH)(tf.constant(texts)).items()}
    results, info = run_fresh_process(paths[False], {
        "texts": ("serving_default", {"text": texts}),
        "bad": ("serving_default", {"text": bad}),
        "zero": ("serving_default", {"text": []}),
        "ids": ("predict_ids", ids),
        "pairs": (paths[True], "serving_default", {"text": texts, "text_pair": pairs}),
        "pair_bad": (paths[True], "serving_default", {"text": bad, "text_pair": bad[::-1]}),
        "tokenize": (paths[True], "tokenize", {"text": texts[:2], "text_pair": pairs[:2]}),
    })
    assert info["forbidden_modules"] == []
    expected = keras_logits(model, texts)
    diff = np.abs(results["texts/logits"] - expected).max()
    pair_diff = np.abs(results["pairs/logits"] - keras_logits(model, texts, pairs)).max()
    print(f"classification logits max abs diff vs Keras: single {diff:.2e}, pair {pair_diff:.2e}")
    assert diff <= 1e-5 and pair_diff <= 1e-5
    assert np.abs(results["ids/logits"] - expected).max() <= 1e-5
    ids = results["texts/label_ids"]
    assert ids.tolist() == expected.argmax(-1).tolist()
    assert [name.decode() for name in results["texts/label_names"]] == [LABELS[i] for i in ids]
    assert np.allclose(results["texts/probabilities"].sum(-1), 1.0, atol=1e-5)
    for key in ("bad", "pair_bad"):
        assert results[f"{key}/probabilities"].shape == (len(BAD_INPUTS), len(LABELS))
        assert np.isfinite(results[f"{key}/probabilities"]).all()
    assert results["zero/label_names"].shape == (0,)
    segments = results["tokenize/segment_ids"]
    assert set(segments[0].tolist()) == {0, 1}


def test_classification_ops_are_core_or_tf_text_and_match_the_committed_list(exported):
    _, paths = exported
    classified = op_check.classify_ops(
        op_check.saved_model_ops(paths[False]) | op_check.saved_model_ops(paths[True]))
    assert op_check.check_ops(classified) == []
    committed = op_check.read_op_list(OP_LIST)
    assert classified == committed, (
        f"ops changed: added {sorted(set(classified) - set(committed))}, removed "
        f"{sorted(set(committed) - set(classified))}; regenerate {OP_LIST} after review")


def test_bad_task_files_are_named(tmp_path):
    (tmp_path / "task.json").write_text('{"task": "classification", "labels": ["a"]}')
    with pytest.raises(ValueError, match="task.json: field 'labels'"):
        export_model(str(tmp_path), str(tmp_path / "out"), name="x")
    (tmp_path / "task.json").write_text('{"task": "summarise"}')
    with pytest.raises(ValueError, match="field 'task' must be one of"):
        export_model(str(tmp_path), str(tmp_path / "out"), name="x")
