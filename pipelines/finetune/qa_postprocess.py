"""From start/end logits to answer text: n-best decoding across windows, SQuAD 2.0 nulls.

For each question, every window (`QAFeature`) proposes spans (s, e) with score
`start_logits[s] + end_logits[e]` where
- s and e are context tokens (not question, [CLS], [SEP] or padding),
- s is a max-context token of the window (each token is judged in the window where it
  has the most context on both sides; see `pipelines.finetune.qa_features`),
- s <= e and the span has at most `max_answer_length` tokens.
The official code takes the `n_best` highest start and end positions and then drops
invalid pairs; here the `n_best` highest VALID starts and ends are paired, a superset of
the official candidates, so a question always gets an answer when its context has a
token. Spans from all windows are ranked together; duplicates by text are dropped (as
in the official code); the answer text is `context[token_starts[s]:token_ends[e]]`,
the original characters of the context.

SQuAD 2.0: the null score of a question is the smallest `start_logits[0] +
end_logits[0]` ([CLS]) over its windows. With `score_diff = null_score - best span
score`, the answer is "" when `score_diff > null_threshold` (the official rule);
`pipelines.finetune.qa_metrics.tune_null_threshold` picks the threshold that maximises
F1 on a dev set.

Example:
    >>> import numpy as np
    >>> from pipelines.finetune.qa_data import QAExample
    >>> from pipelines.finetune.qa_features import QAFeature
    >>> context = "Denver beat Carolina"
    >>> feature = QAFeature(
    ...     example_index=0, window_index=0, input_ids=np.array([2, 9, 3, 5, 6, 7, 3]),
    ...     segment_ids=np.array([0, 0, 0, 1, 1, 1, 1]),
    ...     token_starts=np.array([-1, -1, -1, 0, 7, 12, -1]),
    ...     token_ends=np.array([-1, -1, -1, 6, 11, 20, -1]),
    ...     max_context=np.array([0, 0, 0, 1, 1, 1, 0], bool))
    >>> start = np.array([0.0, 9.0, 0.0, 3.0, 1.0, 0.0, 0.0])  # 9.0: a question token
    >>> end = np.array([0.0, 0.0, 0.0, 2.0, 0.0, 0.5, 0.0])
    >>> example = QAExample("q", "Who won?", context, 0, [])
    >>> result = postprocess([example], [feature], [(start, end)])
    >>> result.answers, result.nbest["q"][0]["score"]
    ({'q': 'Denver'}, 5.0)
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Sequence

import numpy as np

from pipelines.finetune.qa_data import QAExample
from pipelines.finetune.qa_features import QAFeature

DEFAULT_N_BEST = 20
DEFAULT_MAX_ANSWER_LENGTH = 30


@dataclasses.dataclass
class QAPredictions:
    """Decoded answers of a set of questions (all dicts are keyed by question id).

    Attributes:
        answers: the prediction ("" = no answer, SQuAD 2.0 only).
        best_non_null: the best span's text, whatever the null score.
        score_diff: null score minus best span score (SQuAD 2.0; +inf without a span).
        nbest: up to n_best candidates, best first: text, char start/end, logits,
            score and probability (softmax over the candidates' scores).
        null_threshold: the threshold `answers` were made with (SQuAD 2.0).
    """

    answers: dict[str, str]
    best_non_null: dict[str, str]
    score_diff: dict[str, float]
    nbest: dict[str, list[dict]]
    null_threshold: float | None = None


def window_candidates(feature: QAFeature, start_logits: np.ndarray, end_logits: np.ndarray,
                      context: str, n_best: int = DEFAULT_N_BEST,
                      max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH) -> list[dict]:
    """Valid spans of one window, unsorted (see the module docstring for "valid")."""
    length = feature.length
    start_logits = np.asarray(start_logits, np.float64)[:length]
    end_logits = np.asarray(end_logits, np.float64)[:length]
    in_context = feature.token_starts >= 0
    starts = np.nonzero(in_context & feature.max_context)[0]
    ends = np.nonzero(in_context)[0]
    starts = starts[np.argsort(-start_logits[starts], kind="stable")[:n_best]]
    ends = ends[np.argsort(-end_logits[ends], kind="stable")[:n_best]]
    candidates = []
    for s in starts:
        for e in ends:
            if e < s or e - s + 1 > max_answer_length:
                continue
            char_start, char_end = int(feature.token_starts[s]), int(feature.token_ends[e])
            if char_end <= char_start:
                continue  # only tokens without characters (pieces of one code point)
            candidates.append({
                "text": context[char_start:char_end], "start": char_start, "end": char_end,
                "start_logit": float(start_logits[s]), "end_logit": float(end_logits[e]),
                "score": float(start_logits[s] + end_logits[e]),
            })
    return candidates


def decode_example(example: QAExample, features: Sequence[QAFeature],
                   logits: Sequence[tuple[np.ndarray, np.ndarray]],
                   n_best: int = DEFAULT_N_BEST,
                   max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
                   version_2: bool = False) -> tuple[list[dict], float]:
    """(n-best candidates best first, null score) of one question over its windows.

    With `version_2` the n-best list includes the null candidate (text "").
    """
    candidates: list[dict] = []
    null_score = math.inf
    for feature, (start_logits, end_logits) in zip(features, logits):
        candidates += window_candidates(feature, start_logits, end_logits, example.context,
                                        n_best, max_answer_length)
        null_score = min(null_score, float(start_logits[0] + end_logits[0]))
    candidates.sort(key=lambda c: -c["score"])
    nbest, seen = [], set()
    for candidate in candidates:
        if candidate["text"] not in seen:
            seen.add(candidate["text"])
            nbest.append(candidate)
        if len(nbest) == n_best:
            break
    if version_2 and features:
        # The null candidate's score is the smallest [CLS] score over the windows.
        nbest.append({"text": "", "start": -1, "end": -1, "start_logit": None,
                      "end_logit": None, "score": null_score})
        nbest.sort(key=lambda c: -c["score"])
        nbest = nbest[:max(n_best, 1)]
    scores = np.array([c["score"] for c in nbest])
    if len(scores):
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        for candidate, probability in zip(nbest, probabilities):
            candidate["probability"] = float(probability)
    return nbest, null_score


def postprocess(examples: Sequence[QAExample], features: Sequence[QAFeature],
                logits: Sequence[tuple[np.ndarray, np.ndarray]],
                n_best: int = DEFAULT_N_BEST,
                max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
                version_2: bool = False, null_threshold: float = 0.0) -> QAPredictions:
    """Answers of all `examples` from the logits of their `features` (same order as
    `features`; arrays may be longer than the feature, e.g. padded)."""
    if len(features) != len(logits):
        raise ValueError(f"{len(features)} features but {len(logits)} logit pairs")
    by_example: dict[int, list[int]] = collections.defaultdict(list)
    for index, feature in enumerate(features):
        by_example[feature.example_index].append(index)
    result = QAPredictions({}, {}, {}, {}, null_threshold if version_2 else None)
    for example_index, example in enumerate(examples):
        indices = by_example.get(example_index, [])
        nbest, null_score = decode_example(
            example, [features[i] for i in indices], [logits[i] for i in indices],
            n_best, max_answer_length, version_2)
        spans = [c for c in nbest if c["text"]]
        best = spans[0] if spans else None
        result.best_non_null[example.qid] = best["text"] if best else ""
        result.nbest[example.qid] = nbest
        if version_2:
            diff = null_score - best["score"] if best else math.inf
            result.score_diff[example.qid] = diff
            result.answers[example.qid] = "" if diff > null_threshold else best["text"]
        else:
            result.answers[example.qid] = result.best_non_null[example.qid]
    return result


def apply_null_threshold(predictions: QAPredictions, threshold: float) -> dict[str, str]:
    """SQuAD 2.0 answers for another threshold: "" where score_diff > threshold."""
    if not predictions.score_diff:
        raise ValueError("these predictions have no null scores (not SQuAD 2.0 decoding)")
    return {qid: "" if predictions.score_diff[qid] > threshold else text
            for qid, text in predictions.best_non_null.items()}
