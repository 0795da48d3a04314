"""TFLite conversion with the tokenizer inside, run on ai_edge_litert with TF Text's
custom ops: parity with the SavedModel on real sentences, identical tokens, int8 size and
argmax agreement, bad inputs, the command.

Model: the real MiniLM encoder with a linear [CLS] head that separates Wikipedia from
Austen sentences (tests.export_helpers.minilm_classifier_dir: real weights, real text,
a ridge-regression probe rather than fine-tuning), converted to float32 and int8; the
command test converts a tiny encoder to float32 and float16.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from serving.tflite import TfliteRunner, convert_to_tflite, custom_ops
from spanbert_tf import SpanBertConfig, SpanBertEncoder
from spanbert_tf.checkpoints import save_checkpoint
from tests.corpus_helpers import minilm_vocab
from tests.export_helpers import (BAD_INPUTS, GUTENBERG, WIKITEXT, minilm_classifier_dir,
                                  minilm_classifier_export, minilm_tokenizer, real_sentences)

pytest.importorskip("ai_edge_litert.interpreter")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tflite")
    paths = {"float32": str(directory / "classifier_float32.tflite"),
             "int8": str(directory / "classifier_int8.tflite")}
    for quantize, path in paths.items():
        convert_to_tflite(minilm_classifier_dir(), path, quantize)
    return paths


@pytest.fixture(scope="module")
def saved_model():
    return tf.saved_model.load(minilm_classifier_export()).signatures


def test_only_builtins_and_tf_text_custom_ops(converted):
    # convert_to_tflite already refused models whose custom ops TF Text cannot run.
    for path in converted.values():
        assert custom_ops(path) == ["FastBertNormalize", "FastWordpieceTokenizeWithOffsets",
                                    "RaggedTensorToTensor"], path


def test_float32_matches_saved_model_on_real_sentences(converted, saved_model):
    texts = list(real_sentences(60))
    runner = TfliteRunner(converted["float32"])
    ours = runner(texts)
    expected = saved_model["serving_default"](text=tf.constant(texts))
    diffs = {name: float(np.abs(ours[name] - expected[name].numpy()).max())
             for name in ("logits", "probabilities")}
    print(f"TFLite float32 vs SavedModel on {len(texts)} sentences: max abs diff {diffs}")
    assert max(diffs.values()) <= 1e-4
    assert ours["label_names"].tolist() == expected["label_names"].numpy().tolist()
    single = runner(texts[:1])["logits"]
    assert np.abs(single - expected["logits"].numpy()[:1]).max() <= 1e-4


def test_tokens_inside_tflite_equal_the_saved_models(converted, saved_model):
    texts = list(real_sentences(60)) + [BAD_INPUTS[name].decode() for name in
                                        ("empty", "whitespace_only", "emoji_cjk",
                                         "long_50000_chars")]
    ours = TfliteRunner(converted["int8"]).tokenize(texts)
    expected = saved_model["tokenize"](text=tf.constant(texts))
    for name in ("input_ids", "input_mask", "segment_ids"):
        assert ours[name].tolist() == expected[name].numpy().tolist(), name


def test_int8_is_small_and_agrees_with_float32_on_classification(converted):
    ratio = os.path.getsize(converted["int8"]) / os.path.getsize(
        converted["float32"])
    wiki, austen = real_sentences(120, WIKITEXT)[40:], real_sentences(120, GUTENBERG)[40:]
    texts = list(wiki) + list(austen)
    float32 = TfliteRunner(converted["float32"])(texts)["label_ids"]
    int8 = TfliteRunner(converted["int8"])(texts)["label_ids"]
    agreement = float(np.mean(float32 == int8))
    truth = np.array([0] * len(wiki) + [1] * len(austen))
    print(f"int8/float32 size {ratio:.3f}; argmax agreement {agreement:.3f} on {len(texts)} "
          f"sentences; float32 accuracy {np.mean(float32 == truth):.3f}, int8 "
          f"{np.mean(int8 == truth):.3f}")
    assert ratio <= 0.35
    assert agreement >= 0.95
    assert np.mean(float32 == truth) >= 0.7  # a real classifier (held-out, chance 0.5)


def test_bad_inputs_through_tflite(converted):
    names = list(BAD_INPUTS)
    for path in converted.values():
        runner = TfliteRunner(path)
        outputs = runner([BAD_INPUTS[name] for name in names])
        assert outputs["probabilities"].shape == (len(names), 2)
        assert np.isfinite(outputs["probabilities"]).all()
        assert outputs["label_names"].shape == (len(names),)
        lengths = dict(zip(names, outputs["input_mask"].sum(axis=1).tolist()))
        assert lengths["empty"] == lengths["whitespace_only"] == 2
        assert lengths["long_50000_chars"] == 128 and lengths["emoji_cjk"] > 10
        assert lengths["invalid_utf8"] > 2  # passed through unrepaired, still tokenized
        assert runner(list(real_sentences(64)) * 4)["label_ids"].shape == (256,)
        assert runner([])["label_ids"].shape == (0,)


def test_command_writes_model_and_report(tmp_path, capsys):
    from spanbert_tf.cli import main

    config = SpanBertConfig.preset("tiny", vocab_size=minilm_tokenizer().vocab_size)
    checkpoint = str(tmp_path / "tiny")
    save_checkpoint(checkpoint, SpanBertEncoder(config), vocab_file=minilm_vocab())
    outputs = {}
    for quantize in ("float32", "float16"):
        outputs[quantize] = str(tmp_path / f"tiny_{quantize}.tflite")
        assert main(["tflite", checkpoint, outputs[quantize], "--quantize", quantize,
                     "--max-seq-length", "64", "--latency-runs", "5"]) == 0
    with open(outputs["float16"] + ".json", encoding="utf-8") as handle:
        result = json.load(handle)
    assert result["quantize"] == "float16"
    assert result["bytes"] == os.path.getsize(outputs["float16"])
    assert result["single_request"]["p50_ms"] > 0
    assert "MiB" in capsys.readouterr().out
    assert os.path.getsize(outputs["float16"]) < os.path.getsize(outputs["float32"])
    text = ["Paris is the capital of France."]
    embeddings = [TfliteRunner(path)(text)["embedding"] for path in outputs.values()]
    assert embeddings[0].shape == (1, 64)
    assert np.abs(embeddings[0] - embeddings[1]).max() < 1e-2
