"""Task metrics against hand-computed cases: seqeval entity F1, TACRED micro-F1 without
no_relation, classification/regression scores, unseen labels, entity offsets."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.finetune import classification, ner, tacred
from pipelines.finetune.losses import (MaskedSparseCategoricalAccuracy,
                                       MaskedSparseCategoricalCrossentropy)


def test_entity_f1_counts_whole_entities():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    # gold PER, LOC, ORG; predicted PER, ORG, LOC(wrong place): 2 of 3 each way
    scores = ner.entity_metrics(gold, predicted)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["word_accuracy"] == pytest.approx(4 / 6)
    assert scores["gold_entities"] == 3 and scores["predicted_entities"] == 3
    assert scores["per_type"]["LOC"]["f1-score"] == 0.0
    # a partial span is a miss, not half a hit
    partial = ner.entity_metrics([["B-PER", "I-PER"]], [["B-PER", "O"]])
    assert partial["precision"] == 0.0 and partial["recall"] == 0.0
    outside = ner.entity_metrics(gold, [["O"] * 4, ["O"] * 2])
    assert outside["f1"] == 0.0 and outside["word_accuracy"] == pytest.approx(2 / 6)


def test_entity_spans_have_character_offsets_in_the_space_joined_sentence():
    words = ["I", "love", "New", "York", "and", "Ada", "Lovelace"]
    spans = ner.entity_spans(words, ["O", "O", "B-LOC", "I-LOC", "O", "B-PER", "I-PER"])
    text = " ".join(words)
    assert [(s["type"], s["start"], s["end"]) for s in spans] == [("LOC", 7, 15),
                                                                  ("PER", 20, 32)]
    assert [text[s["start"]:s["end"]] for s in spans] == ["New York", "Ada Lovelace"]
    assert spans[1]["word_start"] == 5 and spans[1]["word_end"] == 7


def test_tacred_micro_f1_leaves_out_no_relation():
    gold = ["per:title", "per:title", "no_relation", "no_relation", "org:founded",
            "per:spouse", "no_relation"]
    predicted = ["per:title", "no_relation", "per:title", "no_relation", "org:founded_by",
                 "per:spouse", "org:founded"]
    scores = tacred.tacred_scores(gold, predicted)
    # guessed = 5 non-no_relation predictions; gold = 4 non-no_relation; correct = 2
    assert (scores["correct"], scores["guessed"], scores["gold"]) == (2, 5, 4)
    assert scores["precision"] == pytest.approx(0.4)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert scores["accuracy"] == pytest.approx(3 / 7)  # the two no_relation hits count here
    nothing = tacred.tacred_scores(gold, ["no_relation"] * len(gold))
    assert nothing["f1"] == 0.0 and nothing["guessed"] == 0
    with pytest.raises(ValueError, match="7 gold relations but 1 predictions"):
        tacred.tacred_scores(gold, ["x"])


def test_classification_metrics_by_hand():
    scores = classification.classification_metrics([0, 1, 1, 0, 1], [0, 1, 0, 0, 1],
                                                   ["neg", "pos"])
    assert scores["accuracy"] == pytest.approx(0.8)
    assert scores["f1"] == pytest.approx(0.8) and scores["f1_positive_label"] == "pos"
    assert scores["matthews_corr"] == pytest.approx(4 / 6)
    three = classification.classification_metrics([0, 1, 2], [0, 1, 1], ["a", "b", "c"])
    assert "f1" not in three and three["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    regression = classification.regression_metrics(np.array([1.0, 2.0, 3.0]),
                                                   np.array([2.0, 4.0, 7.0]))
    assert regression["pearson"] == pytest.approx(np.corrcoef([1, 2, 3], [2, 4, 7])[0, 1])
    assert regression["spearman"] == pytest.approx(1.0)
    assert regression["mse"] == pytest.approx((1 + 4 + 16) / 3)


def test_labels_unseen_in_training_are_counted_not_fatal():
    examples = [classification.Example(("t",), label, line)
                for line, label in enumerate(["a", "b", "c", "a", None, "c"], start=2)]
    logits = np.array([[2, 0], [0, 2], [2, 0], [0, 2], [1, 0], [0, 1]], np.float32)
    metadata = {"regression": False, "labels": ["a", "b"], "majority_label": "a"}
    scores = classification.score(examples, logits, metadata)
    assert scores["scored"] == 3 and scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["unseen_labels"] == {"c": 2} and scores["examples_with_unseen_labels"] == 2
    assert scores["examples_without_label"] == 1
    assert scores["baseline"]["accuracy"] == pytest.approx(2 / 3)


def test_masked_token_loss_and_accuracy_ignore_unlabelled_positions():
    labels = np.array([[-1, 1, 0, -1, -1]])
    logits = np.zeros((1, 5, 2), np.float32)
    logits[0, 1] = [0.0, 3.0]
    logits[0, 2] = [0.0, 3.0]
    logits[0, 3:] = [50.0, -50.0]  # padding: would dominate if counted
    loss = float(MaskedSparseCategoricalCrossentropy()(labels, logits))
    expected = (np.log1p(np.exp(-3.0)) + np.log1p(np.exp(3.0))) / 2
    assert loss == pytest.approx(expected, rel=1e-5)
    accuracy = MaskedSparseCategoricalAccuracy()
    accuracy.update_state(labels, logits)
    assert float(accuracy.result()) == pytest.approx(0.5)
