"""SQuAD EM/F1 with the official evaluation, and the SQuAD 2.0 null-threshold search.

The scores come from tf-models-official's copies of the official scripts
(`official.nlp.tools.squad_evaluate_v1_1` and `squad_evaluate_v2_0`): plain Python
(absl logging only), no Keras, so they are called directly. Both return percentages
here (the v1.1 module returns fractions).

`tune_null_threshold` needs each question's score, which the official modules only
compute inside `evaluate`; `question_scores` recomputes them with the official
normalisation (lower-case, drop punctuation and articles, collapse whitespace) and the
SQuAD 2.0 rules for empty answers, and tests check its totals against the official
`evaluate` and its best threshold against the official `best_f1_thresh`.

Example:
    >>> gold = [{"paragraphs": [{"qas": [
    ...     {"id": "a", "answers": [{"text": "Denver Broncos"}]},
    ...     {"id": "b", "answers": []}]}]}]
    >>> scores = squad_scores(gold, {"a": "the Broncos", "b": ""}, version_2=True)
    >>> round(scores["exact_match"], 1), round(scores["f1"], 1)
    (50.0, 83.3)
    >>> tuned = tune_null_threshold(gold, {"a": "Broncos", "b": "Denver"},
    ...                             {"a": -1.0, "b": 2.0})
    >>> round(tuned["best_f1"], 1), tuned["best_f1_threshold"]  # answer a, not b
    (83.3, 0.5)
    >>> tuned["best_exact"], tuned["best_exact_threshold"]  # answering a gains no EM
    (50.0, -2.0)
"""

from __future__ import annotations

import collections
import json
import logging
import math
import re
import string
from typing import Any

from official.nlp.tools import squad_evaluate_v1_1, squad_evaluate_v2_0

from pipelines.finetune.qa_data import read_qa_file

logger = logging.getLogger(__name__)
_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def squad_scores(gold: list[dict[str, Any]], predictions: dict[str, str],
                 version_2: bool = False,
                 na_probs: dict[str, float] | None = None) -> dict[str, float]:
    """Official EM/F1 (in %) of `predictions` ({qid: text}) against `gold` (SQuAD
    "data" layout). v1.1: `exact_match`, `f1`, `total`. v2.0 adds `HasAns_*`, `NoAns_*`
    and, given `na_probs` (e.g. null score differences), the official best-threshold
    figures `best_exact`, `best_f1`, `best_f1_thresh`. Questions without a prediction
    are logged; the official v1.1 script scores them 0, the v2.0 script leaves them out."""
    qids = [qa["id"] for article in gold for p in article["paragraphs"] for qa in p["qas"]]
    total = len(qids)
    if not total:
        raise ValueError("no questions to evaluate")
    missing = sum(qid not in predictions for qid in qids)
    if missing:
        logger.warning("%d of %d questions have no prediction and score 0", missing, total)
    if not version_2:
        with _quiet_absl():
            result = squad_evaluate_v1_1.evaluate(gold, predictions)
        return {"exact_match": 100.0 * result["exact_match"],
                "f1": 100.0 * result["final_f1"], "total": total}
    # Without na_probs: given them, the official script also applies its default
    # na_prob threshold of 1.0 to the main scores, which is not our decision rule.
    with _quiet_absl():
        result = dict(squad_evaluate_v2_0.evaluate(gold, predictions))
    scores = {"exact_match": result.pop("exact"), "f1": result.pop("f1"),
              "total": result.pop("total")}
    for key, value in result.items():
        if key.startswith(("HasAns_", "NoAns_")):
            scores[key] = value
    if na_probs is not None:
        with _quiet_absl():
            best = squad_evaluate_v2_0.evaluate(gold, predictions, na_probs)
        scores.update(best_exact=best["final_exact"], best_exact_thresh=best[
            "final_exact_thresh"], best_f1=best["final_f1"],
            best_f1_thresh=best["final_f1_thresh"])
    return scores


def normalize_answer(text: str) -> str:
    """The official SQuAD answer normalisation."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_and_f1(gold_text: str, predicted: str) -> tuple[float, float]:
    """EM and F1 of one prediction against one gold answer (SQuAD 2.0 rules: an empty
    answer only matches an empty answer)."""
    gold_tokens = normalize_answer(gold_text).split()
    predicted_tokens = normalize_answer(predicted).split()
    exact = float(gold_tokens == predicted_tokens)
    if not gold_tokens or not predicted_tokens:
        return exact, exact
    common = sum((collections.Counter(gold_tokens)
                  & collections.Counter(predicted_tokens)).values())
    if not common:
        return exact, 0.0
    precision, recall = common / len(predicted_tokens), common / len(gold_tokens)
    return exact, 2 * precision * recall / (precision + recall)


def gold_answers(gold: list[dict[str, Any]]) -> dict[str, list[str]]:
    """{qid: gold texts}; [""] for a question without (non-empty) answers."""
    answers = {}
    for article in gold:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                texts = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])]
                answers[qa["id"]] = texts or [""]
    return answers


def question_scores(gold: list[dict[str, Any]], predictions: dict[str, str]
                    ) -> dict[str, tuple[float, float]]:
    """{qid: (EM, F1)} of each predicted question, the maximum over its gold answers."""
    scores = {}
    for qid, texts in gold_answers(gold).items():
        if qid in predictions:
            pairs = [exact_and_f1(text, predictions[qid]) for text in texts]
            scores[qid] = (max(p[0] for p in pairs), max(p[1] for p in pairs))
    return scores


def tune_null_threshold(gold: list[dict[str, Any]], best_non_null: dict[str, str],
                        score_diffs: dict[str, float]) -> dict[str, float]:
    """The SQuAD 2.0 null threshold that maximises EM and F1 on `gold`.

    A question is answered with its best span when `score_diffs[qid]` (null score minus
    best span score) is <= the threshold, and with "" otherwise. Returns the best
    scores (%) over all thresholds and the thresholds reaching them; applying a
    returned threshold reproduces its score. A threshold lies midway between the last
    answered question's difference and the next one (the official search returns the
    former, where float noise can flip that question); when answering nothing is best,
    it is 1.0 below the smallest difference.

    Same search as the official `best_f1_thresh`, except two quirks of the official
    one: it scores a no-answer question answered with text that normalises to ""
    ("the", ".") as wrong although its evaluation counts it right, and it reports a
    threshold of 0.0 when answering nothing is best.
    """
    # As the official script: a question has an answer when its gold list is not empty.
    has_answer = {qa["id"]: bool(qa["answers"]) for article in gold
                  for paragraph in article["paragraphs"] for qa in paragraph["qas"]}
    scores = question_scores(gold, best_non_null)
    qids = sorted((q for q in scores if q in score_diffs), key=lambda q: score_diffs[q])
    if not qids:
        raise ValueError("no question has both a prediction and a null score difference")
    result = {}
    for name, column in (("exact", 0), ("f1", 1)):
        # Threshold below every difference: all questions get "", right for no-answers.
        current = best = float(sum(not has_answer[q] for q in qids))
        threshold = score_diffs[qids[0]] - 1.0
        for position, qid in enumerate(qids):
            current += scores[qid][column] - (not has_answer[qid])
            last_of_tie = (position + 1 == len(qids)
                           or score_diffs[qids[position + 1]] != score_diffs[qid])
            if last_of_tie and current > best:
                # Midway to the next difference: the same decisions on this data, and
                # robust to float noise in a reloaded model's logits.
                following = (score_diffs[qids[position + 1]] if position + 1 < len(qids)
                             else score_diffs[qid] + 2.0)
                best, threshold = current, (score_diffs[qid] + following) / 2
        result[f"best_{name}"] = 100.0 * best / len(qids)
        # Only when every difference is infinite (no spans at all): any finite value.
        result[f"best_{name}_threshold"] = float(threshold) if math.isfinite(threshold) else 0.0
    return result


class _quiet_absl:
    """Silences the official scripts' per-question absl errors for missing answers
    (one line per question); the count is logged once instead."""

    def __enter__(self):
        self._logger = logging.getLogger("absl")
        self._level = self._logger.level
        self._logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)


def score_predictions_file(data_path: str, predictions_path: str,
                           na_probs_path: str | None = None,
                           version_2: bool | None = None) -> dict[str, float]:
    """`squad_scores` of a predictions JSON ({qid: text}) against a SQuAD/MRQA file
    (read with `pipelines.finetune.qa_data.read_qa_file`); `na_probs_path`: optional
    JSON {qid: no-answer score} for the SQuAD 2.0 threshold figures."""
    data = read_qa_file(data_path, version_2=version_2)
    predictions = read_json_mapping(predictions_path, str)
    na_probs = read_json_mapping(na_probs_path, (int, float)) if na_probs_path else None
    return squad_scores(data.gold, predictions, data.version_2, na_probs)


def read_json_mapping(path: str, value_type: type | tuple) -> dict[str, Any]:
    """A JSON object {qid: value}, with an error naming the file and key when not."""
    try:
        with open(path, encoding="utf-8") as file:
            mapping = json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: line {error.lineno} column "
                         f"{error.colno}: {error.msg}") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"{path}: expected a JSON object {{question id: value}}")
    for key, value in mapping.items():
        if not isinstance(value, value_type) or isinstance(value, bool):
            raise ValueError(f"{path}: value of {key!r} has the wrong type "
                             f"({type(value).__name__})")
    return mapping
