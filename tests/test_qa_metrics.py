"""Our EM/F1 and null-threshold search against tf-models-official's SQuAD evaluation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from official.nlp.tools import squad_evaluate_v1_1, squad_evaluate_v2_0

from pipelines.finetune.qa_baseline import first_sentence, first_sentence_predictions
from pipelines.finetune.qa_data import read_qa_file
from pipelines.finetune.qa_metrics import (normalize_answer, question_scores,
                                           score_predictions_file, squad_scores,
                                           tune_null_threshold)

DATA = os.path.join(os.path.dirname(__file__), os.pardir, "data", "squad")
SQUAD_V1 = os.path.join(DATA, "squad_v1.1_dev_subset_shared.json")
SQUAD_V2 = os.path.join(DATA, "squad_v2.0_dev_subset_shared.json")


def raw_articles(path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)["data"]


def varied_predictions(path, seed=0):
    """A predictions dict with every kind of answer: exact, partial, padded with extra
    words, wrong, empty, and missing questions."""
    rng = np.random.default_rng(seed)
    predictions = {}
    for article in raw_articles(path):
        for paragraph in article["paragraphs"]:
            words = paragraph["context"].split()
            for qa in paragraph["qas"]:
                gold = [a["text"] for a in qa["answers"]] or [""]
                kind = rng.integers(7)
                text = gold[rng.integers(len(gold))]
                if kind == 0:
                    continue  # no prediction
                if kind == 2:
                    text = " ".join(text.split()[:1])
                elif kind == 3:
                    text = "The " + text + " " + words[rng.integers(len(words))] + "."
                elif kind == 4:
                    text = " ".join(words[:3])
                elif kind == 5:
                    text = ""
                predictions[qa["id"]] = text
    return predictions


def write(tmp_path, name, value) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(value), encoding="utf-8")
    return str(path)


def test_v1_scores_equal_official(tmp_path):
    predictions = varied_predictions(SQUAD_V1)
    path = write(tmp_path, "predictions.json", predictions)
    ours = score_predictions_file(SQUAD_V1, path)
    official = squad_evaluate_v1_1.evaluate(raw_articles(SQUAD_V1), predictions)
    assert ours["total"] == 4343
    assert ours["exact_match"] == pytest.approx(100 * official["exact_match"], abs=1e-9)
    assert ours["f1"] == pytest.approx(100 * official["final_f1"], abs=1e-9)
    assert 20 < ours["exact_match"] < ours["f1"] < 80  # the mix is neither trivial nor perfect


def test_v2_scores_and_per_question_scores_equal_official(tmp_path):
    predictions = varied_predictions(SQUAD_V2, seed=1)
    rng = np.random.default_rng(2)
    na_probs = {qid: float(rng.normal()) for qid in predictions}
    ours = score_predictions_file(SQUAD_V2, write(tmp_path, "p.json", predictions),
                                  write(tmp_path, "na.json", na_probs))
    official = squad_evaluate_v2_0.evaluate(raw_articles(SQUAD_V2), predictions)
    with_na = squad_evaluate_v2_0.evaluate(raw_articles(SQUAD_V2), predictions, na_probs)
    for key, reference in (("exact_match", "exact"), ("f1", "f1"), ("total", "total"),
                           ("HasAns_f1", "HasAns_f1"), ("NoAns_exact", "NoAns_exact")):
        assert ours[key] == pytest.approx(official[reference], abs=1e-9), key
    for key, reference in (("best_f1", "final_f1"), ("best_f1_thresh", "final_f1_thresh"),
                           ("best_exact", "final_exact")):
        assert ours[key] == pytest.approx(with_na[reference], abs=1e-9), key
    per_question = question_scores(read_qa_file(SQUAD_V2).gold, predictions)
    assert len(per_question) == official["total"]
    mean_exact = 100 * np.mean([s[0] for s in per_question.values()])
    mean_f1 = 100 * np.mean([s[1] for s in per_question.values()])
    assert mean_exact == pytest.approx(official["exact"], abs=1e-9)
    assert mean_f1 == pytest.approx(official["f1"], abs=1e-9)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_tuned_null_threshold_equals_official_best(seed):
    """Predictions are best non-null spans; the official search over na_probs and ours
    over score differences pick the same threshold, and applying it reproduces it."""
    gold = read_qa_file(SQUAD_V2).gold
    # Texts that normalise to "" hit a quirk of the official search (see
    # tune_null_threshold); best non-null spans are real text anyway.
    predictions = {qid: text if normalize_answer(text) else "Normandy"
                   for qid, text in varied_predictions(SQUAD_V2, seed).items()}
    rng = np.random.default_rng(seed)
    has_answer = {qa["id"]: bool(qa["answers"]) for qa in gold[0]["paragraphs"][0]["qas"]}
    # Informative but noisy differences: lower for answerable questions.
    diffs = {qid: float(rng.normal(-1.0 if has_answer[qid] else 1.0, 1.5))
             for qid in predictions}
    tuned = tune_null_threshold(gold, predictions, diffs)
    official = squad_evaluate_v2_0.evaluate(raw_articles(SQUAD_V2), predictions, diffs)
    assert tuned["best_f1"] == pytest.approx(official["final_f1"], abs=1e-9)
    # Official: the last answered difference; ours: midway to the next one. Both make
    # the same decisions.
    assert all((d > tuned["best_f1_threshold"]) == (d > official["final_f1_thresh"])
               for d in diffs.values())
    assert tuned["best_f1_threshold"] > official["final_f1_thresh"]
    assert tuned["best_exact"] == pytest.approx(official["final_exact"], abs=1e-9)
    thresholded = {qid: "" if diffs[qid] > tuned["best_f1_threshold"] else text
                   for qid, text in predictions.items()}
    assert squad_scores(gold, thresholded, version_2=True)["f1"] == pytest.approx(
        tuned["best_f1"], abs=1e-9)
    # Better than both extremes: answering everything and answering nothing.
    assert tuned["best_f1"] > squad_scores(gold, predictions, version_2=True)["f1"]
    assert tuned["best_f1"] > squad_scores(gold, dict.fromkeys(predictions, ""), True)["f1"]


def test_threshold_when_answering_nothing_is_best():
    gold = [{"paragraphs": [{"qas": [{"id": "a", "answers": []},
                                     {"id": "b", "answers": [{"text": "x y"}]}]}]}]
    tuned = tune_null_threshold(gold, {"a": "wrong", "b": "wrong"}, {"a": 0.5, "b": 2.0})
    assert tuned["best_f1"] == 50.0 and tuned["best_f1_threshold"] == -0.5
    # The official search reports 0.0 here, a threshold that answers "a" (F1 0 there).
    assert squad_evaluate_v2_0.evaluate(gold, {"a": "wrong", "b": "wrong"},
                                        {"a": 0.5, "b": 2.0})["final_f1_thresh"] == 0.0


def test_first_sentence_baseline():
    assert first_sentence(' "Yes." He said so. Then left.') == '"Yes."'
    assert first_sentence("It cost $3.5 million. Later more.") == "It cost $3.5 million."
    data = read_qa_file(SQUAD_V1)
    predictions = first_sentence_predictions(data.examples)
    assert len(predictions) == 4343
    assert all(p and e.context.strip().startswith(p) for p, e in
               zip(predictions.values(), data.examples))
    scores = squad_scores(data.gold, predictions)
    assert 0 < scores["exact_match"] < 5 and 0 < scores["f1"] < 30
