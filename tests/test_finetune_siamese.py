"""Siamese (bi-encoder) sentence-pair classification and mean pooling: the model against
a numpy computation, its options and round trip, and the CLI finetune -> evaluate path."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from pipelines.finetune.classification import Example, encode_examples
from pipelines.finetune.features import prediction_batches, training_batches
from spanbert_tf import SpanBertClassifier, SpanBertConfig, SpanBertEncoder, cli  # noqa: F401
from tests.finetune_helpers import RTE_DEV, tiny_checkpoint, tiny_tokenizer

IDS_A = np.array([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0]], np.int32)
IDS_B = np.array([[2, 8, 3, 0], [2, 6, 12, 3]], np.int32)


def pair_inputs(ids_a: np.ndarray, ids_b: np.ndarray) -> dict[str, np.ndarray]:
    return {"input_ids": ids_a, "input_mask": (ids_a != 0).astype(np.int32),
            "segment_ids": np.zeros_like(ids_a),
            "input_ids_b": ids_b, "input_mask_b": (ids_b != 0).astype(np.int32),
            "segment_ids_b": np.zeros_like(ids_b)}


def encoder() -> SpanBertEncoder:
    return SpanBertEncoder(SpanBertConfig.preset("tiny", vocab_size=40, hidden_size=32,
                                                 intermediate_size=48))


def numpy_mean(sequence: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Mean over the real tokens of each row, with an explicit Python loop."""
    return np.stack([sequence[row, :int(np.sum(ids[row] != 0))].mean(axis=0)
                     for row in range(len(ids))])


def test_siamese_logits_equal_numpy_head_on_mean_pooled_texts():
    keras.utils.set_random_seed(0)
    model = SpanBertClassifier(encoder(), num_labels=3, pooling="mean",
                               pair_encoding="siamese")
    logits = model(pair_inputs(IDS_A, IDS_B), training=False)["logits"].numpy()
    assert logits.shape == (2, 3)

    def sequence(ids):
        return model.encoder({"input_ids": ids, "input_mask": (ids != 0).astype(np.int32),
                              "segment_ids": np.zeros_like(ids)})["sequence_output"].numpy()

    u, v = numpy_mean(sequence(IDS_A), IDS_A), numpy_mean(sequence(IDS_B), IDS_B)
    kernel, bias = model.classifier.get_weights()
    expected = np.concatenate([u, v, np.abs(u - v)], axis=-1) @ kernel + bias
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    # Padding never counts: more [PAD] columns on either text leave the logits as they are.
    padded = model(pair_inputs(np.pad(IDS_A, [(0, 0), (0, 3)]), np.pad(IDS_B, [(0, 0), (0, 2)])),
                   training=False)["logits"].numpy()
    np.testing.assert_allclose(padded, logits, atol=1e-5)


def test_siamese_uses_one_shared_encoder_and_a_3h_head():
    shared = encoder()
    siamese = SpanBertClassifier(shared, num_labels=2, pooling="mean", pair_encoding="siamese")
    cross = SpanBertClassifier(encoder(), num_labels=2, pooling="mean")
    assert siamese.encoder is shared and siamese.pooler is None
    assert siamese.classifier.kernel.shape == (3 * 32, 2)
    # Same weight count as a cross model with mean pooling: the encoder is not duplicated.
    assert len(siamese.weights) == len(cross.weights) == len(shared.weights) + 2
    # Swapping the texts swaps u and v: the [u, v] blocks of the head see each other's.
    inputs = pair_inputs(IDS_A[:1, :4], IDS_B[:1])
    swapped = pair_inputs(IDS_B[:1], IDS_A[:1, :4])
    kernel = siamese.classifier.kernel
    u_rows, v_rows = kernel[:32].numpy(), kernel[32:64].numpy()
    siamese.classifier.kernel.assign(np.concatenate([u_rows, u_rows, kernel[64:].numpy()]))
    np.testing.assert_allclose(siamese(inputs)["logits"].numpy(),
                               siamese(swapped)["logits"].numpy(), atol=1e-5)
    siamese.classifier.kernel.assign(np.concatenate([u_rows, v_rows, kernel[64:].numpy()]))
    assert not np.allclose(siamese(inputs)["logits"].numpy(), siamese(swapped)["logits"].numpy())


def test_default_is_unchanged_and_bad_options_are_rejected():
    default = SpanBertClassifier(encoder(), num_labels=2)
    config = default.get_config()
    assert (config["pooling"], config["pair_encoding"], config["use_pooler"]) == (
        "cls", "cross", True)
    assert default.classifier.kernel.shape == (32, 2)
    assert SpanBertClassifier(encoder(), num_labels=2, pooling="mean").use_pooler is False
    with pytest.raises(ValueError, match="pooling must be one of 'cls', 'mean', got 'max'"):
        SpanBertClassifier(encoder(), num_labels=2, pooling="max")
    with pytest.raises(ValueError, match="pair_encoding must be one of"):
        SpanBertClassifier(encoder(), num_labels=2, pair_encoding="bi")
    with pytest.raises(ValueError, match="use_pooler=True needs pooling='cls'"):
        SpanBertClassifier(encoder(), num_labels=2, pooling="mean", use_pooler=True)
    siamese = SpanBertClassifier(encoder(), num_labels=2, pooling="mean",
                                 pair_encoding="siamese")
    inputs = pair_inputs(IDS_A, IDS_B)
    with pytest.raises(ValueError, match="input_ids_b, input_mask_b, segment_ids_b"):
        siamese({name: inputs[name] for name in ("input_ids", "input_mask", "segment_ids")})


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_siamese_keras_round_trip(pooling, tmp_path):
    keras.utils.set_random_seed(1)
    model = SpanBertClassifier(encoder(), num_labels=2, pooling=pooling,
                               pair_encoding="siamese")
    inputs = pair_inputs(IDS_A, IDS_B)
    logits = model(inputs, training=False)["logits"].numpy()
    config = model.get_config()
    assert SpanBertClassifier.from_config(config).get_config() == config
    path = str(tmp_path / "siamese.keras")
    model.save(path)
    restored = keras.saving.load_model(path, compile=False)
    assert restored.get_config() == config and restored.use_pooler is (pooling == "cls")
    np.testing.assert_allclose(restored(inputs, training=False)["logits"].numpy(), logits,
                               atol=1e-6)


def test_siamese_features_pack_each_text_alone_and_bucket_by_the_longer():
    examples = [Example(("A man plays a guitar on the stage tonight.", "A man plays."), "1", 2),
                Example(("Rain.", "It is raining heavily in the north of the country."), "0", 3)]
    tokenizer = tiny_tokenizer()
    encoding = encode_examples(examples, tokenizer, 8, np.array([1, 0], np.int32),
                               pair_encoding="siamese")
    first, second = encoding.encoded, encoding.encoded.second
    assert encoding.truncated == 2  # the long first text of one pair, the long second of the other
    for rows in (first.input_ids, second.input_ids):
        assert all(row[0] == tokenizer.cls_id and row[-1] == tokenizer.sep_id for row in rows)
    assert all(not row.any() for row in first.segment_ids + second.segment_ids)
    assert first.lengths.tolist() == [8, 8]
    batch = next(iter(prediction_batches(encoding.encoded, 4, 8, tokenizer.pad_id)))
    assert batch["input_ids_b"].shape[0] == 2 and batch["input_mask_b"].dtype == batch[
        "input_mask"].dtype
    x, y = next(iter(training_batches(encoding.encoded, 2, 8, tokenizer.pad_id)))
    assert sorted(x) == ["input_ids", "input_ids_b", "input_mask", "input_mask_b",
                         "segment_ids", "segment_ids_b"]
    np.testing.assert_array_equal(x["input_mask_b"].numpy(),
                                  (x["input_ids_b"].numpy() != tokenizer.pad_id).astype(int))
    with pytest.raises(ValueError, match="--long-document"):
        encode_examples(examples, tokenizer, 8, None, long_document=True,
                        pair_encoding="siamese")
    with pytest.raises(ValueError, match="needs sentence pairs"):
        encode_examples([Example(("one text",), "1", 2)], tokenizer, 8, None,
                        pair_encoding="siamese")


def run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_cli_siamese_finetune_then_evaluate_rebuilds_the_same_model(tmp_path, capsys):
    with open(RTE_DEV, encoding="utf-8") as handle:
        lines = handle.read().splitlines()[:25]  # header + 24 pairs
    data = tmp_path / "pairs.tsv"
    data.write_text("\n".join(lines) + "\n")
    model_dir = tmp_path / "siamese"
    code, output = run(capsys, "finetune", "classification", "--init-checkpoint",
                       tiny_checkpoint(), "--output-dir", str(model_dir), "--train-file",
                       str(data), "--dev-file", str(data), "--pair-encoding", "siamese",
                       "--max-steps", "2", "--batch-size", "8",
                       "--max-seq-length", "32", "--no-progress")
    assert code == 0, output
    task = json.loads((model_dir / "task.json").read_text())
    assert (task["pair_encoding"], task["pooling"], task["use_pooler"]) == (
        "siamese", "mean", False)
    dev = json.loads((model_dir / "metrics.json").read_text())["dev"]
    assert dev["examples"] == 24 and dev["truncated"] > 0
    model = keras.saving.load_model(str(model_dir / "model.keras"), compile=False)
    assert model.pair_encoding == "siamese" and model.pooling == "mean"

    code, output = run(capsys, "evaluate", "classification", "--model-dir", str(model_dir),
                       "--eval-file", str(data), "--output-dir", str(tmp_path / "eval"),
                       "--no-progress")
    assert code == 0, output
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["eval"]
    assert evaluated["accuracy"] == pytest.approx(dev["accuracy"])
    before = [json.loads(line) for line in (model_dir / "predictions.jsonl").open()]
    after = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").open()]
    for old, new in zip(before, after):
        assert new["probabilities"] == pytest.approx(old["probabilities"], abs=1e-5)

    code, output = run(capsys, "finetune", "classification", "--init-checkpoint",
                       tiny_checkpoint(), "--output-dir", str(tmp_path / "bad"),
                       "--train-file", str(data), "--pair-encoding", "siamese",
                       "--long-document", "--max-steps", "1", "--no-progress")
    assert code != 0 and "cannot be combined with --pair-encoding siamese" in output


def test_cosine_pair_features_classify_the_cosine_of_u_and_v():
    keras.utils.set_random_seed(1)
    model = SpanBertClassifier(encoder(), num_labels=2, pooling="mean", pair_encoding="siamese",
                               pair_features="cosine")
    assert model.classifier.kernel.shape == (1, 2)
    logits = model(pair_inputs(IDS_A, IDS_B), training=False)["logits"].numpy()

    def pooled(ids):
        sequence = model.encoder({"input_ids": ids, "input_mask": (ids != 0).astype(np.int32),
                                  "segment_ids": np.zeros_like(ids)})["sequence_output"].numpy()
        return numpy_mean(sequence, ids)

    u, v = pooled(IDS_A), pooled(IDS_B)
    cosine = (u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
    kernel, bias = model.classifier.get_weights()
    np.testing.assert_allclose(logits, cosine[:, None] @ kernel + bias, atol=1e-5)
    assert SpanBertClassifier.from_config(model.get_config()).pair_features == "cosine"
    with pytest.raises(ValueError, match="needs pair_encoding='siamese'"):
        SpanBertClassifier(encoder(), num_labels=2, pair_features="cosine")
    with pytest.raises(ValueError, match="pair_features must be one of"):
        SpanBertClassifier(encoder(), num_labels=2, pair_encoding="siamese", pooling="mean",
                           pair_features="dot")


def test_head_learning_rate_reaches_only_the_head():
    from pipelines.finetune.trainer import TrainingSettings, head_multipliers

    shared = encoder()
    model = SpanBertClassifier(shared, num_labels=2, pooling="mean", pair_encoding="siamese",
                               pair_features="cosine")
    settings = TrainingSettings(init_checkpoint="x", output_dir="y", train_file="z",
                                learning_rate=2e-5, head_learning_rate=1e-2)
    multipliers = head_multipliers(model, shared, settings)
    assert sorted(multipliers) == sorted(v.path for v in model.classifier.trainable_variables)
    assert list(multipliers.values()) == pytest.approx([500.0, 500.0])
    default = TrainingSettings(init_checkpoint="x", output_dir="y", train_file="z")
    assert head_multipliers(model, shared, default) == {}
    with pytest.raises(ValueError, match="--head-learning-rate must be > 0"):
        TrainingSettings(init_checkpoint="x", output_dir="y", train_file="z",
                         head_learning_rate=0.0)
