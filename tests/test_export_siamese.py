"""Export of a siamese (bi-encoder) pair classifier: `text` and `text_pair` tokenized
separately in the graph, parity with the Keras model in a fresh process, the six-input
predict_ids signature, the op check, and TFLite's clear refusal."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from serving import op_check
from serving.export import export_model
from serving.preprocessing import TextPreprocessor
from spanbert_tf import SpanBertClassifier, SpanBertConfig, SpanBertEncoder
from tests.export_helpers import (BAD_INPUTS, minilm_tokenizer, real_sentences,
                                  run_fresh_process, write_task_dir)

LABELS = ["entailment", "not_entailment"]
MAX_LENGTH = 24


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(3)
    encoder = SpanBertEncoder(SpanBertConfig.preset(
        "tiny", vocab_size=minilm_tokenizer().vocab_size, hidden_size=32,
        intermediate_size=64, max_position_embeddings=64))
    model = SpanBertClassifier(encoder, num_labels=len(LABELS), pooling="mean",
                               pair_encoding="siamese")
    task_dir = write_task_dir(model, str(tmp_path_factory.mktemp("siamese")), LABELS,
                              MAX_LENGTH, pair=True)
    task_file = os.path.join(task_dir, "task.json")
    with open(task_file, encoding="utf-8") as handle:
        task = json.load(handle)
    task.update(pair_encoding="siamese", pooling="mean",
                text_columns=["sentence1", "sentence2"])
    with open(task_file, "w", encoding="utf-8") as handle:
        json.dump(task, handle)
    path = export_model(task_dir, str(tmp_path_factory.mktemp("exports")), name="siamese")
    return model, task_dir, path


def separate_features(texts, pairs) -> dict[str, np.ndarray]:
    """Each text packed on its own ([CLS] text [SEP]), the second with `_b` names."""
    preprocessor = TextPreprocessor(minilm_tokenizer(), MAX_LENGTH)
    features = {name: value.numpy() for name, value in preprocessor(tf.constant(texts)).items()}
    features.update({f"{name}_b": value.numpy()
                     for name, value in preprocessor(tf.constant(pairs)).items()})
    return features


def test_siamese_export_matches_keras_in_a_fresh_process(exported):
    model, _, path = exported
    texts = list(real_sentences(12))
    pairs = texts[6:] + texts[:6]
    bad = [BAD_INPUTS[name] for name in BAD_INPUTS]
    features = separate_features(texts, pairs)
    results, info = run_fresh_process(path, {
        "pairs": ("serving_default", {"text": texts, "text_pair": pairs}),
        "bad": ("serving_default", {"text": bad, "text_pair": bad[::-1]}),
        "ids": ("predict_ids", features),
        "tokenize": ("tokenize", {"text": texts[:2], "text_pair": pairs[:2]}),
    })
    assert info["forbidden_modules"] == []
    expected = model(features, training=False)["logits"].numpy()
    diff = np.abs(results["pairs/logits"] - expected).max()
    print(f"siamese export logits max abs diff vs Keras: {diff:.2e}")
    assert diff <= 1e-5
    assert np.abs(results["ids/logits"] - expected).max() <= 1e-5
    assert results["pairs/label_ids"].tolist() == expected.argmax(-1).tolist()
    assert [n.decode() for n in results["pairs/label_names"]] == [
        LABELS[i] for i in expected.argmax(-1)]
    assert results["bad/probabilities"].shape == (len(BAD_INPUTS), len(LABELS))
    assert np.isfinite(results["bad/probabilities"]).all()
    # tokenize shows the separate packing: both texts start with [CLS], segments all 0.
    tokenizer = minilm_tokenizer()
    for suffix in ("", "_b"):
        np.testing.assert_array_equal(results[f"tokenize/input_ids{suffix}"],
                                      features[f"input_ids{suffix}"][:2, :results[
                                          f"tokenize/input_ids{suffix}"].shape[1]])
        assert (results[f"tokenize/input_ids{suffix}"][:, 0] == tokenizer.cls_id).all()
        assert not results[f"tokenize/segment_ids{suffix}"].any()
        assert f"token_starts{suffix}" in " ".join(results)


def test_siamese_export_metadata_ops_and_tflite_refusal(exported):
    from serving.tflite import tflite_function

    _, task_dir, path = exported
    with open(os.path.join(path, "assets.extra", "export.json"), encoding="utf-8") as handle:
        metadata = json.load(handle)
    assert metadata["pair_encoding"] == "siamese" and metadata["pair"] is True
    signatures = metadata["signatures"]
    assert sorted(signatures["serving_default"]["inputs"]) == ["text", "text_pair"]
    assert sorted(signatures["serving_default"]["outputs"]) == [
        "label_ids", "label_names", "logits", "probabilities"]
    assert sorted(signatures["predict_ids"]["inputs"]) == [
        "input_ids", "input_ids_b", "input_mask", "input_mask_b", "segment_ids",
        "segment_ids_b"]
    classified = op_check.classify_ops(op_check.saved_model_ops(path))
    assert op_check.check_ops(classified) == []
    with pytest.raises(ValueError, match="TFLite conversion of siamese"):
        tflite_function(task_dir)
