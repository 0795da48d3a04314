"""QA decoding from hand-built logits: chosen span, windows, max length, SQuAD 2.0 null."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.finetune.qa_data import Answer, QAExample
from pipelines.finetune.qa_features import QAFeatureOptions, build_features
from pipelines.finetune.qa_postprocess import apply_null_threshold, postprocess
from spanbert_tf import SpanBertTokenizer

NUM_WORDS = 40
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# "t0 t1 ... t39": one token per word, so token i is word i.
CONTEXT = " ".join(f"t{i}" for i in range(NUM_WORDS))
# Question "q ?" is 2 tokens: 20 - 2 - 3 = 15 context tokens per window, stride 8:
# windows start at tokens 0, 8, 16, 24, 32.
OPTIONS = QAFeatureOptions(max_seq_length=20, doc_stride=8, max_query_length=8)


@pytest.fixture(scope="module")
def tokenizer() -> SpanBertTokenizer:
    return SpanBertTokenizer(SPECIALS + ["q", "?"] + [f"t{i}" for i in range(NUM_WORDS)])


def word_offset(index: int) -> int:
    return CONTEXT.index(f"t{index} ") if index < NUM_WORDS - 1 else CONTEXT.rindex("t")


def windows(tokenizer, question="q ?"):
    example = QAExample("q1", question, CONTEXT, 0, [Answer("t12 t13", word_offset(12))])
    features, _ = build_features([example], tokenizer, OPTIONS)
    return example, features


def flat_logits(features, value=0.0):
    return [(np.full(f.length, value), np.full(f.length, value)) for f in features]


def position_of(feature, word: int) -> int:
    """Position of context word `word` in the feature's input ids."""
    return int(np.nonzero(feature.token_starts == word_offset(word))[0][0])


def test_windows_as_expected(tokenizer):
    _, features = windows(tokenizer)
    assert [f.window_index for f in features] == [0, 1, 2, 3, 4]
    firsts = [CONTEXT[f.token_starts[4]:f.token_ends[4]] for f in features]  # after [CLS] q ? [SEP]
    assert firsts == ["t0", "t8", "t16", "t24", "t32"]
    # Token 12 is in windows 0 (12 left, 2 right) and 1 (4 left, 10 right): max-context
    # in window 1, the second window.
    assert not features[0].max_context[position_of(features[0], 12)]
    assert features[1].max_context[position_of(features[1], 12)]


def test_answer_in_second_window_maps_to_characters(tokenizer):
    example, features = windows(tokenizer)
    rng = np.random.default_rng(0)
    logits = [(rng.uniform(-1, 1, f.length), rng.uniform(-1, 1, f.length)) for f in features]
    second = features[1]
    logits[1][0][position_of(second, 12)] = 5.0
    logits[1][1][position_of(second, 13)] = 5.0
    # A higher score for the same span in window 0, where token 12 is not max-context:
    # it must not be used.
    first = features[0]
    logits[0][0][position_of(first, 12)] = 8.0
    logits[0][1][position_of(first, 13)] = 8.0
    result = postprocess([example], features, logits)
    best = result.nbest["q1"][0]
    assert result.answers["q1"] == "t12 t13"
    assert (best["start"], best["end"]) == (word_offset(12), word_offset(13) + 3)
    assert best["score"] == 10.0
    assert CONTEXT[best["start"]:best["end"]] == best["text"]


def test_question_tokens_and_reversed_spans_never_chosen(tokenizer):
    example, features = windows(tokenizer)
    logits = flat_logits(features)
    for start, end in logits:
        start[1] = end[1] = 50.0  # the question token "q"
        start[0] = end[0] = 40.0  # [CLS]: only the null answer (SQuAD 2.0)
    second = features[1]
    logits[1][0][position_of(second, 14)] = 9.0
    logits[1][1][position_of(second, 11)] = 9.0  # end before start
    logits[1][1][position_of(second, 15)] = 3.0
    result = postprocess([example], features, logits)
    assert result.answers["q1"] == "t14 t15"
    for candidate in result.nbest["q1"]:
        assert candidate["text"] and candidate["text"] in CONTEXT


def test_max_answer_length_respected(tokenizer):
    example, features = windows(tokenizer)
    logits = flat_logits(features)
    second = features[1]
    # Window 1 is the max-context window of tokens 12-19.
    logits[1][0][position_of(second, 12)] = 6.0
    logits[1][1][position_of(second, 19)] = 6.0   # 8-token span, score 12
    logits[1][1][position_of(second, 14)] = 2.0   # 3-token span, score 8
    long_ok = postprocess([example], features, logits, max_answer_length=8)
    assert long_ok.answers["q1"] == "t12 t13 t14 t15 t16 t17 t18 t19"
    short = postprocess([example], features, logits, max_answer_length=5)
    assert short.answers["q1"] == "t12 t13 t14"
    for candidate in short.nbest["q1"]:
        assert len(candidate["text"].split()) <= 5


def test_nbest_ranked_deduplicated_and_normalised(tokenizer):
    example, features = windows(tokenizer)
    rng = np.random.default_rng(1)
    logits = [(rng.normal(size=f.length), rng.normal(size=f.length)) for f in features]
    result = postprocess([example], features, logits, n_best=7)
    nbest = result.nbest["q1"]
    assert len(nbest) == 7
    scores = [c["score"] for c in nbest]
    assert scores == sorted(scores, reverse=True)
    assert len({c["text"] for c in nbest}) == 7
    assert sum(c["probability"] for c in nbest) == pytest.approx(1.0)
    assert result.answers["q1"] == nbest[0]["text"]


def test_version_2_null_threshold(tokenizer):
    example, features = windows(tokenizer)
    logits = flat_logits(features, -1.0)
    for index, (start, end) in enumerate(logits):
        start[0] = end[0] = 3.0 if index else 1.0  # null score: min over windows = 2.0
    second = features[1]
    logits[1][0][position_of(second, 12)] = 2.5
    logits[1][1][position_of(second, 13)] = 2.0  # best span 4.5: diff = 2.0 - 4.5 = -2.5
    result = postprocess([example], features, logits, version_2=True)
    assert result.score_diff["q1"] == pytest.approx(-2.5)
    assert result.answers["q1"] == "t12 t13"  # -2.5 <= 0: answer
    nulls = [c for c in result.nbest["q1"] if c["text"] == ""]
    assert len(nulls) == 1 and nulls[0]["score"] == pytest.approx(2.0)
    strict = postprocess([example], features, logits, version_2=True, null_threshold=-3.0)
    assert strict.answers["q1"] == ""  # -2.5 > -3.0: no answer
    assert strict.best_non_null["q1"] == "t12 t13"
    assert apply_null_threshold(result, -3.0) == {"q1": ""}
    assert apply_null_threshold(result, -2.5) == {"q1": "t12 t13"}
    # Raising the null score above the span flips the default decision.
    for start, end in logits:
        start[0] = end[0] = 3.0
    assert postprocess([example], features, logits, version_2=True).answers["q1"] == ""
    # Version 1 never answers "".
    assert postprocess([example], features, logits).answers["q1"] == "t12 t13"


def test_version_2_without_any_span_is_null(tokenizer):
    example, features = windows(tokenizer)
    for feature in features:
        feature.token_starts[:] = -1  # no context token anywhere
    result = postprocess([example], features, flat_logits(features), version_2=True)
    assert result.answers["q1"] == "" and result.score_diff["q1"] == float("inf")


def test_logits_count_must_match_features(tokenizer):
    example, features = windows(tokenizer)
    with pytest.raises(ValueError, match="5 features but 4 logit pairs"):
        postprocess([example], features, flat_logits(features)[:4])
