"""SpanBertQuestionAnswering: outputs, padding, serialisation, training with fit()."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.finetune.qa_data import Answer, QAExample
from pipelines.finetune.qa_features import QAFeatureOptions, batched_dataset, build_features
from pipelines.finetune.qa_inference import answer_questions
from spanbert_tf import SpanBertConfig, SpanBertEncoder, SpanBertQuestionAnswering
from spanbert_tf import SpanBertTokenizer
from spanbert_tf.models.question_answering import PADDING_LOGIT, span_losses

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "who", "what", "won", "lost",
         "the", "game", "?", ".", "denver", "carolina", "beat", "in", "2016", "team"]


def tiny_config(**overrides) -> SpanBertConfig:
    return SpanBertConfig.preset("tiny", vocab_size=len(VOCAB), **overrides)


def inputs(lengths, max_length):
    rng = np.random.default_rng(0)
    ids = np.zeros((len(lengths), max_length), np.int32)
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(5, len(VOCAB), length)
        ids[row, 0] = 2
        mask[row, :length] = 1
    return {"input_ids": ids, "input_mask": mask, "segment_ids": np.zeros_like(ids)}


def test_outputs_and_padding():
    keras.utils.set_random_seed(0)
    model = SpanBertQuestionAnswering(tiny_config())
    outputs = model(inputs([5, 8], 8))
    assert set(outputs) == {"start_logits", "end_logits"}
    assert outputs["start_logits"].shape == (2, 8) and outputs["end_logits"].dtype == tf.float32
    np.testing.assert_array_equal(outputs["start_logits"][0, 5:], PADDING_LOGIT)
    assert np.all(np.abs(outputs["end_logits"][1]) < 100)
    # More padding changes nothing but the padded positions (dropout off).
    wider = model(inputs([5, 8], 12))
    np.testing.assert_allclose(wider["start_logits"][:, :8], outputs["start_logits"],
                               atol=1e-5)


def test_loss_does_not_depend_on_padding():
    keras.utils.set_random_seed(0)
    model = SpanBertQuestionAnswering(tiny_config())
    losses = span_losses()
    labels = {"start_logits": np.array([2, 3]), "end_logits": np.array([3, 6])}

    def loss(max_length):
        outputs = model(inputs([5, 8], max_length))
        return float(sum(losses[key](labels[key], outputs[key]) for key in losses))

    assert loss(8) == pytest.approx(loss(24), rel=1e-5)
    logits = model(inputs([5, 8], 8))
    expected = np.mean([
        keras.losses.sparse_categorical_crossentropy(labels[k], logits[k], from_logits=True)
        for k in ("start_logits", "end_logits")])
    assert loss(8) == pytest.approx(float(expected), rel=1e-5)  # (start + end) / 2


def test_config_and_keras_file_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    model = SpanBertQuestionAnswering(tiny_config(), name="qa")
    clone = SpanBertQuestionAnswering.from_config(model.get_config())
    assert clone.config == model.config and clone.name == "qa"
    path = str(tmp_path / "qa.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, SpanBertQuestionAnswering)
    batch = inputs([6, 3], 6)
    for key in ("start_logits", "end_logits"):
        np.testing.assert_allclose(loaded(batch)[key], model(batch)[key], atol=1e-6)


def test_wraps_an_existing_encoder_and_rejects_conflicts():
    encoder = SpanBertEncoder(tiny_config())
    model = SpanBertQuestionAnswering(encoder=encoder)
    assert model.encoder is encoder
    with pytest.raises(ValueError, match="disagree"):
        SpanBertQuestionAnswering(tiny_config(num_layers=1), encoder=encoder)
    with pytest.raises(ValueError, match="needs a config or an encoder"):
        SpanBertQuestionAnswering()


def test_fit_learns_answer_spans_end_to_end():
    """Windows -> bucketed (x, y) batches -> fit -> decoding: a tiny model learns the
    answer span of four contexts (at different positions) and decodes it back to text."""
    keras.utils.set_random_seed(1)
    tokenizer = SpanBertTokenizer(VOCAB, lowercase=True)
    cases = [("Who won?", "Denver beat Carolina in 2016.", "Denver"),
             ("Who lost?", "In 2016 Carolina lost the game.", "Carolina"),
             ("What game?", "The team lost the 2016 game.", "the 2016 game"),
             ("Who won the game?", "In the game, Denver won.", "Denver")]
    examples = [QAExample(f"q{i}", question, context, i, [Answer(answer, context.index(answer))])
                for i, (question, context, answer) in enumerate(cases)]
    options = QAFeatureOptions(max_seq_length=32, max_query_length=16)
    features, _ = build_features(examples, tokenizer, options, training=True)
    model = SpanBertQuestionAnswering(tiny_config(hidden_dropout=0.0, attention_dropout=0.0))
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=span_losses())
    history = model.fit(batched_dataset(features, 4, training=True, seed=0),
                        steps_per_epoch=15, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] / 4, losses
    predictions, _ = answer_questions(model, examples, tokenizer, options)
    assert predictions.answers == {f"q{i}": case[2] for i, case in enumerate(cases)}
