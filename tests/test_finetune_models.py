"""Task models: shapes, complete get_config, .keras round trips, the fine-tuned directory."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from pipelines.finetune.trainer import (inference_copy, load_finetuned, load_pretrained,
                                        save_finetuned)
from spanbert_tf import (SpanBertClassifier, SpanBertConfig, SpanBertEncoder,
                         SpanBertTokenClassifier, SpanBertTokenizer)
from spanbert_tf.tokenizer import vocabulary_is_uncased
from tests.corpus_helpers import minilm_vocab
from tests.finetune_helpers import tiny_checkpoint

IDS = np.array([[2, 7, 9, 11, 3, 0], [2, 5, 3, 8, 12, 3]], np.int32)
INPUTS = {"input_ids": IDS, "input_mask": (IDS != 0).astype(np.int32),
          "segment_ids": np.array([[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]], np.int32)}


def encoder(vocab_size: int = 40) -> SpanBertEncoder:
    return SpanBertEncoder(SpanBertConfig.preset("tiny", vocab_size=vocab_size, hidden_size=32,
                                                 intermediate_size=48))


@pytest.mark.parametrize("make", [
    lambda: SpanBertClassifier(encoder(), num_labels=3),
    lambda: SpanBertClassifier(encoder(), num_labels=1, use_pooler=False, dropout=0.2),
    lambda: SpanBertTokenClassifier(encoder(), num_labels=5),
])
def test_keras_round_trip_keeps_config_weights_and_outputs(make, tmp_path):
    keras.utils.set_random_seed(0)
    model = make()
    logits = model(INPUTS, training=False)["logits"].numpy()
    config = model.get_config()
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model) and restored.get_config() == config
    np.testing.assert_allclose(restored(INPUTS, training=False)["logits"].numpy(), logits,
                               atol=1e-6)


def test_output_shapes_and_pooler_choice():
    classifier = SpanBertClassifier(encoder(), num_labels=4)
    assert classifier(INPUTS)["logits"].shape == (2, 4)
    assert {"pooler", "classifier"} <= {layer.name for layer in classifier.layers}
    plain = SpanBertClassifier(encoder(), num_labels=4, use_pooler=False)
    assert plain.pooler is None and len(plain.weights) == len(classifier.weights) - 2
    tagger = SpanBertTokenClassifier(encoder(), num_labels=7)
    assert tagger(INPUTS)["logits"].shape == (2, 6, 7)
    with pytest.raises(ValueError, match="num_labels"):
        SpanBertTokenClassifier(encoder(), num_labels=0)


def test_logits_depend_on_cls_only_for_classifier():
    model = SpanBertClassifier(encoder(), num_labels=2)
    base = model(INPUTS, training=False)["logits"].numpy()
    masked = dict(INPUTS, input_mask=INPUTS["input_mask"].copy())
    masked["input_mask"][0, 3] = 0  # one token hidden: [CLS] changes through attention
    assert not np.allclose(model(masked, training=False)["logits"].numpy()[0], base[0])
    np.testing.assert_allclose(model(masked, training=False)["logits"].numpy()[1], base[1],
                               atol=1e-6)


def test_mixed_precision_model_is_saved_as_float32_without_compile_state(tmp_path):
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = SpanBertClassifier(encoder(), num_labels=2)
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    model.compile(optimizer="adam", loss="mse")
    assert model.compute_dtype == "float16"
    copy = inference_copy(model)
    assert copy.compute_dtype == "float32" and copy.encoder.compute_dtype == "float32"
    assert getattr(copy, "optimizer", None) is None and not copy.compiled
    np.testing.assert_allclose(copy(INPUTS)["logits"].numpy(),
                               model(INPUTS)["logits"].numpy(), atol=5e-2)


def test_vocabulary_case_is_inferred():
    assert vocabulary_is_uncased(minilm_vocab())
    assert vocabulary_is_uncased(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]",
                                  "hello", "##ing", "ℝ"])  # no lower-case form
    assert not vocabulary_is_uncased(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Hello"])


def test_finetuned_directory_layout_round_trip(tmp_path):
    model_encoder, tokenizer = load_pretrained(tiny_checkpoint())
    assert tokenizer.lowercase  # MiniLM's vocabulary is uncased
    model = SpanBertTokenClassifier(model_encoder, num_labels=3)
    metadata = {"task": "ner", "labels": ["O", "B-x", "I-x"], "max_seq_length": 32,
                "lowercase": True}
    save_finetuned(str(tmp_path), model, tokenizer, metadata)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.keras", "task.json",
                                            "vocab.txt"]
    with open(tmp_path / "task.json") as handle:
        assert json.load(handle) == metadata
    restored, restored_tokenizer, restored_metadata = load_finetuned(str(tmp_path), task="ner")
    assert restored_metadata == metadata and restored_tokenizer.lowercase
    ids = tokenizer.tokenize(["Fine tuning"]).to_list()[0]
    inputs = {"input_ids": np.array([[tokenizer.cls_id, *ids, tokenizer.sep_id]]),
              "input_mask": np.ones((1, len(ids) + 2), np.int32),
              "segment_ids": np.zeros((1, len(ids) + 2), np.int32)}
    np.testing.assert_allclose(restored(inputs)["logits"].numpy(),
                               model(inputs)["logits"].numpy(), atol=1e-6)
    # A fine-tuned directory is also a valid starting point (its encoder is reused).
    reused, reused_tokenizer = load_pretrained(str(tmp_path))
    np.testing.assert_allclose(reused.get_weights()[0], model_encoder.get_weights()[0])
    with pytest.raises(ValueError, match="holds a 'ner' model, not 'classification'"):
        load_finetuned(str(tmp_path), task="classification")
    with pytest.raises(ValueError, match="lacks"):
        save_finetuned(str(tmp_path / "x"), model, tokenizer, {"task": "ner"})
    assert isinstance(restored_tokenizer, SpanBertTokenizer)
