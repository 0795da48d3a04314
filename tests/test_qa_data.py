"""QA data: SQuAD/MRQA reading, bad input, and windows over every bundled question."""

from __future__ import annotations

import gzip
import json
import logging
import os

import numpy as np
import pytest

from pipelines.finetune.qa_data import Answer, QADataError, QAExample, read_qa_file
from pipelines.finetune.qa_features import (QAFeatureOptions, answer_token_span,
                                            batched_dataset, build_features, tokenize_texts)
from spanbert_tf import SpanBertTokenizer
from tests.corpus_helpers import minilm_vocab

DATA = os.path.join(os.path.dirname(__file__), os.pardir, "data", "squad")
SQUAD_V1 = os.path.join(DATA, "squad_v1.1_dev_subset_shared.json")
SQUAD_V2 = os.path.join(DATA, "squad_v2.0_dev_subset_shared.json")


def write_json(tmp_path, document, name="data.json") -> str:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document),
                    encoding="utf-8")
    return str(path)


def squad_document(context="Paris is the capital of France.", answer_start=0,
                   answer_text="Paris", extra_qa=None):
    qas = [{"id": "q1", "question": "What is the capital of France?",
            "answers": [{"text": answer_text, "answer_start": answer_start}]}]
    qas += extra_qa or []
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": context, "qas": qas}]}]}


@pytest.fixture(scope="module")
def tokenizer() -> SpanBertTokenizer:
    return SpanBertTokenizer(minilm_vocab(), lowercase=True)


@pytest.fixture(scope="module")
def squad_v1():
    return read_qa_file(SQUAD_V1)


def test_bundled_files_read_completely(squad_v1):
    summary = squad_v1.summary
    assert (summary.questions, summary.contexts, summary.impossible) == (4343, 796, 0)
    assert summary.misaligned_answers == summary.empty_contexts == 0
    assert not squad_v1.version_2 and squad_v1.format == "squad"
    v2 = read_qa_file(SQUAD_V2)
    assert (v2.summary.questions, v2.summary.contexts, v2.summary.impossible) == (1448, 170, 685)
    assert v2.version_2
    assert read_qa_file(SQUAD_V1, version_2=True).version_2  # explicit flag wins
    with open(SQUAD_V1, encoding="utf-8") as file:
        raw = json.load(file)["data"]
    raw_gold = {qa["id"]: [a["text"] for a in qa["answers"]]
                for article in raw for p in article["paragraphs"] for qa in p["qas"]}
    ours = {qa["id"]: [a["text"] for a in qa["answers"]]
            for qa in squad_v1.gold[0]["paragraphs"][0]["qas"]}
    assert ours == raw_gold


def test_every_bundled_question_windowed_and_labelled(squad_v1, tokenizer):
    """Short windows (seq 128, stride 64) so that many contexts are split; for every
    answerable question: all context tokens are covered, each exactly once as
    max-context, and the labels map back to the answer text."""
    examples = squad_v1.examples
    options = QAFeatureOptions(max_seq_length=128, doc_stride=64, max_query_length=32)
    features, summary = build_features(examples, tokenizer, options, training=True)
    assert summary.split_examples > 1000 and summary.unlabelled_examples == 0
    contexts = sorted({e.context_index: e.context for e in examples}.items())
    context_tokens = dict(zip([i for i, _ in contexts],
                              tokenize_texts(tokenizer, [c for _, c in contexts])))
    by_example: dict[int, list] = {}
    for feature in features:
        by_example.setdefault(feature.example_index, []).append(feature)
    assert sorted(by_example) == list(range(len(examples)))
    inexact = unlabelled = 0
    for index, example in enumerate(examples):
        windows = by_example[index]
        tokens = context_tokens[example.context_index]
        assert all(f.length <= 128 for f in windows)
        covered = np.concatenate([f.token_starts[f.max_context] for f in windows])
        np.testing.assert_array_equal(covered, tokens.starts)  # once each, in order
        labelled = [f for f in windows if f.start_position > 0]
        answer = example.answers[0]
        if not labelled:  # only when the answer is longer than the windows' overlap
            first, last = answer_token_span(tokens, answer.start, answer.end)
            query = int(np.sum(windows[0].segment_ids == 0)) - 2
            overlap = (128 - query - 3) - 64  # window size minus stride
            assert last - first + 1 > overlap, example.qid
            unlabelled += 1
        for f in labelled:
            assert f.segment_ids[f.start_position] == 1 and f.end_position >= f.start_position
            found = example.context[f.token_starts[f.start_position]:
                                    f.token_ends[f.end_position]]
            assert answer.text.strip() in found, (example.qid, answer.text, found)
            # Exact whenever the answer starts and ends on token boundaries.
            text = answer.text.strip()
            begin = answer.start + answer.text.index(text)
            aligned = begin in set(tokens.starts) and begin + len(text) in set(tokens.ends)
            if aligned:
                assert found == text, (example.qid, text, found)
            else:
                inexact += 1
        for f in windows:
            if f.start_position == 0:
                assert f.end_position == 0
    # Answers inside a word ("Broncos" of "Broncos'") are rare in SQuAD.
    assert inexact < 0.02 * len(features) and unlabelled < 0.005 * len(examples)


def test_bucketed_training_batches(squad_v1, tokenizer):
    examples = squad_v1.examples[:40]
    features, _ = build_features(examples, tokenizer, QAFeatureOptions(max_seq_length=128,
                                                                       doc_stride=64),
                                 training=True)
    x, y = next(iter(batched_dataset(features, 8, training=True, seed=1)))
    assert x["input_ids"].shape == x["segment_ids"].shape == x["input_mask"].shape
    assert x["input_ids"].shape[0] == 8 and x["input_ids"].shape[1] <= 128
    assert set(y) == {"start_logits", "end_logits"}
    lengths = np.sum(x["input_mask"].numpy(), axis=1)
    assert np.all(y["end_logits"].numpy() < lengths)


def test_mrqa_jsonl_matches_squad_reading(tmp_path, squad_v1):
    with open(SQUAD_V1, encoding="utf-8") as file:
        paragraphs = json.load(file)["data"][1]["paragraphs"][:3]
    lines = [json.dumps({"header": {"dataset": "SQuAD", "split": "dev"}})]
    for paragraph in paragraphs:
        lines.append(json.dumps({"context": paragraph["context"], "qas": [{
            "qid": qa["id"], "question": qa["question"],
            "answers": [a["text"] for a in qa["answers"]],
            "detected_answers": [{"text": a["text"].lower(), "char_spans": [
                [a["answer_start"], a["answer_start"] + len(a["text"]) - 1]]}
                for a in qa["answers"]]} for qa in paragraph["qas"]]}))
    path = tmp_path / "squad.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    mrqa = read_qa_file(str(path))
    assert mrqa.format == "mrqa" and not mrqa.version_2
    expected = {e.qid: e for e in squad_v1.examples}
    assert len(mrqa.examples) == sum(len(p["qas"]) for p in paragraphs)
    for example in mrqa.examples:
        reference = expected[example.qid]
        assert (example.question, example.context) == (reference.question, reference.context)
        assert example.answers == reference.answers  # text taken from the context
        assert example.gold_texts == reference.gold_texts


def test_malformed_json_names_file_and_position(tmp_path):
    path = write_json(tmp_path, '{"version": "1.1", "data": [\n  {"title": "T",, }]}')
    with pytest.raises(QADataError, match=r"data\.json: not valid JSON: line 2 column"):
        read_qa_file(path)
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"header": {}}\n{"context": "x", "qas": []}\n{"context": \n',
                     encoding="utf-8")
    with pytest.raises(QADataError, match=r"bad\.jsonl: line 3: not valid JSON"):
        read_qa_file(str(lines))


@pytest.mark.parametrize("remove, where", [
    ("question", r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing field 'question'"),
    ("answer_start", r"qas\[0\]\.answers\[0\]: missing field 'answer_start'"),
    ("context", r"data\[0\]\.paragraphs\[0\]: missing field 'context'"),
])
def test_missing_fields_named_with_location(tmp_path, remove, where):
    document = squad_document()
    paragraph = document["data"][0]["paragraphs"][0]
    for record in (paragraph, paragraph["qas"][0], paragraph["qas"][0]["answers"][0]):
        record.pop(remove, None)
    with pytest.raises(QADataError, match=where):
        read_qa_file(write_json(tmp_path, document))


def test_wrong_types_and_missing_mrqa_fields(tmp_path):
    document = squad_document()
    document["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = "0"
    with pytest.raises(QADataError, match="'answer_start' should be int, got str"):
        read_qa_file(write_json(tmp_path, document))
    with pytest.raises(QADataError, match="top level: missing field 'data'"):
        read_qa_file(write_json(tmp_path, {"version": "1.1"}))
    lines = tmp_path / "m.jsonl"
    lines.write_text('{"context": "abc", "qas": [{"qid": "a", "question": "q?", '
                     '"answers": ["abc"]}]}\n', encoding="utf-8")
    with pytest.raises(QADataError, match="line 1: qas\\[0\\]: missing field 'detected_answers'"):
        read_qa_file(str(lines))


def test_misaligned_answer_warned_counted_and_skipped(tmp_path, caplog, tokenizer):
    good = {"id": "q2", "question": "Of what country?",
            "answers": [{"text": "France", "answer_start": 24}]}
    document = squad_document(answer_start=1, extra_qa=[good])  # "aris " is not "Paris"
    with caplog.at_level(logging.WARNING):
        data = read_qa_file(write_json(tmp_path, document))
    assert "data[0].paragraphs[0].qas[0].answers[0]" in caplog.text and "'Paris'" in caplog.text
    assert data.summary.misaligned_answers == 1 and data.summary.unlabelled_questions == 1
    assert [e.trainable for e in data.examples] == [False, True]
    assert data.examples[0].gold_texts == ["Paris"]  # still evaluated against its gold
    features, summary = build_features(data.examples, tokenizer, training=True)
    assert summary.unlabelled_examples == 1 and {f.example_index for f in features} == {1}
    features, _ = build_features(data.examples, tokenizer, training=False)
    assert {f.example_index for f in features} == {0, 1}  # prediction covers both
    assert "1 misaligned answers skipped" in data.summary.describe()


def test_empty_context_skipped_and_counted(tmp_path):
    document = squad_document()
    document["data"][0]["paragraphs"].append(
        {"context": "  ", "qas": [{"id": "e1", "question": "Anything?",
                                   "answers": [{"text": "x", "answer_start": 0}]}]})
    data = read_qa_file(write_json(tmp_path, document))
    assert (data.summary.empty_contexts, data.summary.skipped_questions) == (1, 1)
    assert [e.qid for e in data.examples] == ["q1"]
    assert "1 empty contexts skipped" in data.summary.describe()


def test_duplicate_ids_and_answerless_questions_rejected(tmp_path):
    duplicate = squad_document(extra_qa=[{"id": "q1", "question": "Again?",
                                          "answers": [{"text": "Paris", "answer_start": 0}]}])
    with pytest.raises(QADataError, match="not unique: \\['q1'\\]"):
        read_qa_file(write_json(tmp_path, duplicate))
    answerless = squad_document(extra_qa=[{"id": "q2", "question": "?", "answers": []}])
    with pytest.raises(QADataError, match=r"qas\[1\]: an answerable question needs"):
        read_qa_file(write_json(tmp_path, answerless))


def test_window_options_validated_and_long_questions_cut(tokenizer):
    with pytest.raises(ValueError, match="max_seq_length must be at least 5"):
        QAFeatureOptions(max_seq_length=4)
    with pytest.raises(ValueError, match="doc_stride must be positive"):
        QAFeatureOptions(doc_stride=0)
    example = QAExample("q", " ".join(["why"] * 20), "Because it rained.", 0,
                        [Answer("it rained", 8)])
    options = QAFeatureOptions(max_seq_length=12, doc_stride=2, max_query_length=64)
    features, summary = build_features([example], tokenizer, options, training=True)
    assert summary.truncated_questions == 1 and all(f.length <= 12 for f in features)
    # 8 question tokens, 1 context token per window: every context token still read.
    assert [int(np.sum(f.segment_ids == 1)) for f in features] == [2, 2, 2, 2]  # 4 tokens
