"""Encoder export of the real MiniLM checkpoint: layout, fresh-process parity, op list,
bad inputs, CLI.

The export is loaded and run in a new Python process that imports only `tensorflow` and
`tensorflow_text`; its outputs on raw strings must equal the Keras encoder's on the
same text (max abs diff 1e-5), and every op must be core TensorFlow or TF Text.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from serving import op_check
from serving.export import export_model, next_version
from spanbert_tf.tokenizer import vocabulary_is_uncased
from spanbert_tf import SpanBertConfig, SpanBertEncoder
from spanbert_tf.checkpoints import save_checkpoint
from spanbert_tf.tokenizer import load_vocabulary
from tests.corpus_helpers import minilm_vocab
from tests.export_helpers import (BAD_INPUTS, minilm_encoder, minilm_export, minilm_tokenizer,
                                  real_sentences, reference_features, run_fresh_process)

TOLERANCE = 1e-5
OP_LIST = os.path.join(op_check.OPS_DIR, "encoder_ops.txt")


def keras_outputs(texts, max_seq_length=512) -> dict:
    features = reference_features(minilm_tokenizer(), texts, max_seq_length)
    sequence = minilm_encoder()(features)["sequence_output"].numpy()
    mask = features["input_mask"][:, :, None].astype(np.float32)
    return {"embedding": (sequence * mask).sum(1) / mask.sum(1), "cls_embedding": sequence[:, 0],
            "features": features}


@pytest.fixture(scope="module")
def fresh_results():
    texts = list(real_sentences(20))
    bad = [BAD_INPUTS[name] for name in BAD_INPUTS]
    reference = keras_outputs(texts)
    calls = {
        "one": ("serving_default", {"text": texts[:1]}),
        "batch": ("serving_default", {"text": texts}),
        "tokenize": ("tokenize", {"text": texts}),
        "ids": ("encode_ids", dict(reference["features"])),
        "bad": ("serving_default", {"text": bad}),
        "bad_tokenize": ("tokenize", {"text": bad}),
        "zero": ("serving_default", {"text": []}),
        "many": ("serving_default", {"text": (texts * 13)[:256]}),
    }
    results, info = run_fresh_process(minilm_export(), calls)
    return texts, reference, results, info


def test_layout_assets_and_metadata():
    path = minilm_export()
    assert os.path.basename(path) == "1" and os.path.basename(os.path.dirname(path)) == "minilm"
    assert sorted(os.listdir(os.path.dirname(path))) == ["1"]  # no staging leftovers
    with open(os.path.join(path, "assets", "vocab.txt"), encoding="utf-8") as handle:
        assert handle.read().split("\n")[:5] == load_vocabulary(minilm_vocab())[:5]
    with open(os.path.join(path, "assets.extra", "export.json"), encoding="utf-8") as handle:
        metadata = json.load(handle)
    assert metadata["task"] == "encoder" and metadata["lowercase"] is True
    assert metadata["max_seq_length"] == 512
    assert sorted(metadata["signatures"]) == ["encode_ids", "serving_default", "tokenize"]
    assert metadata["signatures"]["serving_default"]["inputs"] == {"text": ["string", [None]]}
    assert metadata["signatures"]["serving_default"]["outputs"] == {
        "embedding": ["float32", [None, 384]], "cls_embedding": ["float32", [None, 384]]}


def test_fresh_process_imports_only_tensorflow(fresh_results):
    assert fresh_results[3]["forbidden_modules"] == []


def test_raw_text_outputs_equal_keras_encoder(fresh_results):
    texts, reference, results, _ = fresh_results
    for name in ("embedding", "cls_embedding"):
        diff = np.abs(results[f"batch/{name}"] - reference[name]).max()
        print(f"{name}: max abs diff SavedModel (fresh process) vs Keras = {diff:.2e}")
        assert diff <= TOLERANCE
        single = keras_outputs(texts[:1])[name]
        assert np.abs(results[f"one/{name}"] - single).max() <= TOLERANCE
        assert np.abs(results[f"ids/{name}"] - reference[name]).max() <= TOLERANCE


def test_tokenize_signature_gives_the_model_features_and_offsets(fresh_results):
    texts, reference, results, _ = fresh_results
    for name in ("input_ids", "input_mask", "segment_ids"):
        assert results[f"tokenize/{name}"].tolist() == reference["features"][name].tolist()
    starts, ends = results["tokenize/token_starts"], results["tokenize/token_ends"]
    row = texts[0]
    words = [row[s:e].lower() for s, e in zip(starts[0], ends[0]) if e > s]
    tokens = [minilm_tokenizer().id_to_token(i).removeprefix("##")
              for i, m in zip(results["tokenize/input_ids"][0], results["tokenize/input_mask"][0])
              if m][1:-1]
    assert words == tokens


def test_bad_inputs_through_the_saved_model(fresh_results):
    _, _, results, _ = fresh_results
    names = list(BAD_INPUTS)
    embeddings = results["bad/embedding"]
    assert embeddings.shape == (len(names), 384) and np.isfinite(embeddings).all()
    lengths = dict(zip(names, results["bad_tokenize/input_mask"].sum(axis=1).tolist()))
    assert lengths["empty"] == lengths["whitespace_only"] == 2
    assert lengths["long_50000_chars"] == 512  # truncated to max_seq_length, not rejected
    assert lengths["invalid_utf8"] > 2 and lengths["emoji_cjk"] > 10
    # Empty and whitespace-only texts are both just [CLS] [SEP]: the same embedding.
    assert np.allclose(embeddings[names.index("empty")], embeddings[names.index("whitespace_only")])
    reference = keras_outputs([BAD_INPUTS["long_50000_chars"].decode()])["embedding"]
    assert np.abs(embeddings[names.index("long_50000_chars")] - reference[0]).max() <= TOLERANCE


def test_batches_of_zero_and_256(fresh_results):
    texts, reference, results, _ = fresh_results
    assert results["zero/embedding"].shape == (0, 384)
    assert results["many/embedding"].shape == (256, 384)
    assert np.abs(results["many/embedding"][:20] - reference["embedding"]).max() <= TOLERANCE


def test_every_op_is_core_tensorflow_or_tf_text_and_matches_the_committed_list():
    classified = op_check.classify_ops(op_check.saved_model_ops(minilm_export()))
    assert op_check.check_ops(classified) == []
    assert not any("RoundRobin" in op for op in classified)
    assert {"FastBertNormalize", "FastWordpieceTokenizeWithOffsets"} <= set(classified)
    committed = op_check.read_op_list(OP_LIST)
    assert classified == committed, (
        f"ops changed: added {sorted(set(classified) - set(committed))}, removed "
        f"{sorted(set(committed) - set(classified))}; review, then regenerate with "
        f"`python -m serving.op_check EXPORT_DIR --write {OP_LIST}`")


def test_lowercase_is_inferred_from_the_vocabulary():
    assert vocabulary_is_uncased(load_vocabulary(minilm_vocab())) is True
    assert vocabulary_is_uncased(["[PAD]", "[UNK]", "the", "The", "##s"]) is False


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    config = SpanBertConfig.preset("tiny", vocab_size=len(load_vocabulary(minilm_vocab())))
    directory = str(tmp_path_factory.mktemp("tiny_checkpoint"))
    save_checkpoint(directory, SpanBertEncoder(config), vocab_file=minilm_vocab())
    return directory


def test_command_writes_next_version_with_sequence_output(tiny_checkpoint, tmp_path, capsys):
    from spanbert_tf.cli import main

    base = str(tmp_path / "exports")
    assert main(["export", tiny_checkpoint, base, "--name", "tiny", "--version", "4",
                 "--max-seq-length", "32"]) == 0
    assert next_version(base, "tiny") == 5
    assert main(["export", tiny_checkpoint, base, "--name", "tiny", "--sequence-output",
                 "--max-seq-length", "32"]) == 0
    printed = capsys.readouterr().out
    assert "sequence_output" in printed and os.path.join("tiny", "5") in printed
    served = tf.saved_model.load(os.path.join(base, "tiny", "5")).signatures["serving_default"]
    results = served(text=tf.constant(["a short text", "x " * 100]))
    assert results["sequence_output"].shape == (2, 32, 64)
    assert results["input_mask"].numpy().sum(axis=1).tolist() == [5, 32]
    with pytest.raises(ValueError, match="already exists"):
        export_model(tiny_checkpoint, base, name="tiny", version=5)
    assert main(["export", tiny_checkpoint, base, "--name", "bad name"]) == 1


def test_missing_model_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        export_model(str(tmp_path / "nope"), str(tmp_path), name="x")
    with pytest.raises(FileNotFoundError, match="neither a fine-tuned"):
        export_model(str(tmp_path), str(tmp_path / "out"), name="x")
