"""Fine-tuning inputs: reading files (and their errors), packing, word-piece labels,
long-document chunks, entity markers, and the tf.data batches."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from pipelines.finetune import classification, ner, tacred
from pipelines.finetune.features import (IGNORED_LABEL, EncodedExamples, pack_sequences,
                                         prediction_batches, read_json_lines, read_table,
                                         training_batches)
from spanbert_tf import SpanBertTokenizer
from tests.finetune_helpers import (CONLL_JSON, MRPC, RTE_DEV, TACRED_DEV, TACRED_TRAIN,
                                    WNUT_DEV, tiny_tokenizer)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]", "[unused2]",
         "new", "york", "is", "big", "##gest", "big", "city", ".", "the"]


def word_tokenizer() -> SpanBertTokenizer:
    vocabulary = list(dict.fromkeys(VOCAB))
    return SpanBertTokenizer(vocabulary, lowercase=True)


# ---------------------------------------------------------------- packing

def test_pairs_get_segment_ids_and_truncation_cuts_the_longer_text_first():
    ids, segments, truncated = pack_sequences(2, 3, [10, 11, 12, 13, 14], [20, 21], 8)
    assert ids == [2, 10, 11, 12, 3, 20, 21, 3] and truncated
    assert segments == [0, 0, 0, 0, 0, 1, 1, 1]
    ids, _, truncated = pack_sequences(2, 3, [10], [20, 21, 22, 23, 24, 25], 7)
    assert ids == [2, 10, 3, 20, 21, 22, 3] and truncated
    ids, segments, truncated = pack_sequences(2, 3, [10, 11], None, 8)
    assert ids == [2, 10, 11, 3] and segments == [0] * 4 and not truncated


def test_real_rte_pairs_are_packed_with_both_segments():
    data = classification.read_examples(RTE_DEV)
    assert data.text_columns == ("sentence1", "sentence2") and len(data.examples) == 139
    tokenizer = tiny_tokenizer()
    targets = np.zeros(len(data.examples), np.int32)
    encoding = classification.encode_examples(data.examples[:20], tokenizer, 64, targets[:20])
    for ids, segments in zip(encoding.encoded.input_ids, encoding.encoded.segment_ids):
        assert len(ids) <= 64 and ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id
        boundary = int(np.argmax(segments))
        assert boundary > 1 and ids[boundary - 1] == tokenizer.sep_id
        assert set(segments[:boundary]) == {0} and set(segments[boundary:]) == {1}
    assert encoding.truncated > 0  # RTE premises are long


def test_mrpc_fixture_with_explicit_columns_and_bom():
    data = classification.read_examples(MRPC, ("#1 String", "#2 String"), "Quality")
    assert len(data.examples) == 6 and data.examples[0].label == "1"
    assert classification.label_vocabulary([e.label for e in data.examples]) == ["0", "1"]


# ---------------------------------------------------------------- NER features

def test_labels_sit_on_the_first_sub_token_of_each_word():
    tokenizer = word_tokenizer()
    sentence = ner.Sentence(["New", "York", "is", "biggest", "city"],
                            ["B-LOC", "I-LOC", "O", "O", "O"], 1)
    tags = {"O": 0, "B-LOC": 1, "I-LOC": 2}
    encoding = ner.encode_sentences([sentence], tokenizer, 16, tags)
    ids = encoding.encoded.input_ids[0].tolist()
    labels = encoding.encoded.labels[0].tolist()
    pieces = [tokenizer.id_to_token(i) for i in ids]
    assert pieces == ["[CLS]", "new", "york", "is", "big", "##gest", "city", "[SEP]"]
    assert labels == [IGNORED_LABEL, 1, 2, 0, 0, IGNORED_LABEL, 0, IGNORED_LABEL]
    assert encoding.word_positions[0].tolist() == [1, 2, 3, 4, 6]


def test_long_sentences_are_split_between_words_and_every_word_is_predicted():
    tokenizer = word_tokenizer()
    words = ["biggest"] * 7  # 2 pieces each, 14 tokens
    sentence = ner.Sentence(words, ["O"] * 7, 1)
    encoding = ner.encode_sentences([sentence], tokenizer, 7, {"O": 0})  # 5 tokens per row
    assert [len(ids) for ids in encoding.encoded.input_ids] == [6, 6, 6, 4]
    assert encoding.first_word == [0, 2, 4, 6] and encoding.split_sentences == 1
    logits = [np.tile([0.0, 1.0], (len(ids), 1)) for ids in encoding.encoded.input_ids]
    tags = ner.predicted_tags(encoding, logits, [sentence], ["O", "B-X"])
    assert tags == [["B-X"] * 7]


def test_conll_and_json_readers_on_real_files():
    wnut = ner.read_sentences(WNUT_DEV)
    assert len(wnut) == 1009 and sum(len(s.words) for s in wnut) == 15733
    conll = ner.read_sentences(CONLL_JSON)
    assert len(conll) == 10 and conll[1].words == ["CHICAGO", "AT", "ATLANTA"]
    assert ner.tag_vocabulary(conll)[0] == "O"
    labels = ner.tag_vocabulary(wnut)
    assert labels[:3] == ["O", "B-corporation", "I-corporation"] and len(labels) == 13


# ---------------------------------------------------------------- long documents

def test_a_document_three_windows_long_is_read_in_overlapping_chunks():
    tokenizer = word_tokenizer()
    window = 16  # 14 text tokens per chunk
    text = " ".join(["the city is big ."] * 8 + ["new york"])  # 42 tokens = 3 windows
    example = classification.Example((text,), "1", 1)
    assert len(tokenizer.tokenize([text]).to_list()[0]) == 42
    encoding = classification.encode_examples([example], tokenizer, window,
                                              np.array([1], np.int32), long_document=True,
                                              chunk_overlap=4)
    # chunks start at 0, 10, 20, 30 (stride 14 - 4): 4 chunks cover all 42 tokens
    assert encoding.chunks.tolist() == [4] and len(encoding.encoded) == 4
    text_tokens = [ids[1:-1].tolist() for ids in encoding.encoded.input_ids]
    full = tokenizer.tokenize([text]).to_list()[0]
    assert text_tokens[0] == full[0:14] and text_tokens[-1] == full[30:42]
    assert all(len(ids) <= window for ids in encoding.encoded.input_ids)
    assert classification.chunk_starts(42, 14, 4) == [0, 10, 20, 30]
    assert classification.chunk_starts(0, 14, 4) == [0]
    short = classification.encode_examples([example], tokenizer, window,
                                           np.array([1], np.int32))
    assert len(short.encoded) == 1 and short.truncated == 1


def test_chunk_logits_are_averaged_per_document():
    logits = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 6.0], [5.0, 5.0]], np.float32)
    mean = classification.aggregate_chunks(logits, np.array([0, 0, 0, 1]), 2)
    np.testing.assert_allclose(mean, [[4 / 3, 8 / 3], [5.0, 5.0]])


# ---------------------------------------------------------------- entity markers

def test_entity_marker_mapping_is_independent_of_file_order():
    examples = tacred.read_examples(TACRED_TRAIN)
    vocabulary = tiny_tokenizer().vocabulary
    mapping = tacred.entity_marker_mapping(examples, vocabulary)
    shuffled = list(examples)
    random.Random(3).shuffle(shuffled)
    assert tacred.entity_marker_mapping(shuffled, vocabulary) == mapping
    assert tacred.entity_marker_mapping(list(reversed(examples)), vocabulary) == mapping
    assert list(mapping) == sorted(mapping)
    assert list(mapping.values()) == [f"[unused{i}]" for i in range(len(mapping))]
    assert mapping["[OBJ-CITY]"] == "[unused1]" and "[SUBJ-PERSON]" in mapping
    extra = dict(vars(examples[0]), obj_type="ZZZ_NEW")
    with_extra = tacred.entity_marker_mapping([tacred.RelationExample(**extra)], vocabulary)
    assert "[OBJ-ZZZ_NEW]" in with_extra and len(with_extra) == len(mapping) + 2


def test_subject_and_object_become_single_marker_tokens():
    tokenizer = word_tokenizer()
    example = tacred.RelationExample(
        id="x", tokens=["-LRB-", "New", "York", "-RRB-", "is", "the", "biggest", "city"],
        subj=(1, 2), obj=(7, 7), subj_type="CITY", obj_type="MISC", relation="r", where="t")
    mapping = {"[SUBJ-CITY]": "[unused0]", "[OBJ-MISC]": "[unused2]"}
    encoding = tacred.encode_examples([example], tokenizer, 32, mapping, {"r": 0})
    pieces = [tokenizer.id_to_token(i) for i in encoding.encoded.input_ids[0]]
    assert pieces == ["[CLS]", "[UNK]", "[unused0]", "[UNK]", "is", "the", "big", "##gest",
                      "[unused2]", "[SEP]"]
    unknown = tacred.encode_examples([example], tokenizer, 32, {}, None)
    assert unknown.unknown_types == {"[SUBJ-CITY]": 1, "[OBJ-MISC]": 1}
    assert tacred.marked_words(example)[0][0] == "("


def test_truncation_keeps_both_markers_when_they_fit():
    assert tacred.marker_window(100, [60, 70], 20) == (51, False)
    assert tacred.marker_window(100, [5, 12], 20) == (0, False)
    assert tacred.marker_window(100, [10, 80], 20) == (10, True)
    assert tacred.marker_window(10, [1, 8], 20) == (0, False)


# ---------------------------------------------------------------- batches

def test_batches_pad_ids_masks_and_token_labels():
    encoded = EncodedExamples(
        [np.array([2, 8, 3]), np.array([2, 8, 9, 10, 3])],
        [np.zeros(3, np.int32), np.zeros(5, np.int32)],
        [np.array([-1, 1, -1]), np.array([-1, 0, 1, 1, -1])])
    batch = next(iter(prediction_batches(encoded, batch_size=2, max_seq_length=8, pad_id=0)))
    order = batch["row"].numpy().tolist()
    assert sorted(order) == [0, 1]
    first = order.index(0)
    assert batch["input_ids"].numpy()[first].tolist() == [2, 8, 3, 0, 0]
    assert batch["input_mask"].numpy()[first].tolist() == [1, 1, 1, 0, 0]
    assert batch["labels"].numpy()[first].tolist() == [-1, 1, -1, -1, -1]
    x, y = next(iter(training_batches(encoded, 2, 8)))
    assert sorted(x) == ["input_ids", "input_mask", "segment_ids"] and y.shape[0] == 2


# ---------------------------------------------------------------- bad input

def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"words": ["a"], "ner": ["O"]}\n{"words": ["b"], "ner": \n')
    with pytest.raises(ValueError, match=rf"{path}:2: not valid JSON"):
        list(read_json_lines(str(path)))
    bad_array = tmp_path / "bad.json"
    bad_array.write_text('[\n {"token": ["a"]},\n {"token": \n')
    with pytest.raises(ValueError, match=rf"{bad_array}:\d+: not valid JSON"):
        tacred.read_examples(str(bad_array))


def test_malformed_tsv_rows_and_missing_columns_name_the_place(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("sentence\tlabel\ngood movie\t1\nno label here\n")
    with pytest.raises(ValueError, match=rf"{path}:3: expected 2 fields"):
        list(read_table(str(path)))
    path.write_text("text_a\tlabel\ngood\t1\n")
    with pytest.raises(ValueError, match=r"cannot tell the text column.*--text-columns"):
        classification.read_examples(str(path))
    with pytest.raises(ValueError, match=r"no column\(s\) 'review'"):
        classification.read_examples(str(path), ("review",))
    with pytest.raises(ValueError, match=r"no label column 'score'"):
        classification.read_examples(str(path), ("text_a",), "score")
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"text": "fine", "label": "a"}\n{"label": "b"}\n')
    with pytest.raises(ValueError, match=rf"{jsonl}:2: missing field\(s\) 'text'"):
        classification.read_examples(str(jsonl))


def test_empty_texts_are_skipped_and_counted(tmp_path):
    path = tmp_path / "rows.tsv"
    path.write_text("sentence\tlabel\ngood\t1\n \t0\nbad\t0\n\t1\n")
    data = classification.read_examples(str(path))
    assert [e.texts[0] for e in data.examples] == ["good", "bad"]
    assert data.skipped() == {"skipped_empty_text": 2, "skipped_empty_text_lines": [3, 5]}


def test_ner_and_tacred_field_errors(tmp_path):
    conll = tmp_path / "bad.conll"
    conll.write_text("Paris\tB-LOC\nis\tO\n\nnice\tB_ADJ\n")
    with pytest.raises(ValueError, match=rf"{conll}:4: tag 'B_ADJ' is not BIO"):
        ner.read_sentences(str(conll))
    conll.write_text("Paris\tB-LOC\nis\n")
    with pytest.raises(ValueError, match=rf"{conll}:2: expected 'token<TAB>tag'"):
        ner.read_sentences(str(conll))
    with pytest.raises(ValueError, match=rf"{conll}:1: some tokens of this sentence have a tag"):
        ner.read_sentences(str(conll), require_tags=False)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps({"words": ["a", "b"], "ner": ["O"]}) + "\n")
    with pytest.raises(ValueError, match=rf"{jsonl}:1: 2 words but 1 tags"):
        ner.read_sentences(str(jsonl))
    with open(TACRED_DEV) as handle:
        record = json.load(handle)[0]
    broken = tmp_path / "tacred.json"
    broken.write_text(json.dumps([record, {k: v for k, v in record.items() if k != "obj_type"}]))
    with pytest.raises(ValueError, match=rf"{broken} example 1: missing field\(s\) 'obj_type'"):
        tacred.read_examples(str(broken))
    broken.write_text(json.dumps([dict(record, subj_end=len(record["token"]))]))
    with pytest.raises(ValueError, match="example 0: subj_start/subj_end"):
        tacred.read_examples(str(broken))


def test_long_document_prediction_is_the_mean_of_all_its_chunks(tmp_path):
    from spanbert_tf import SpanBertClassifier, SpanBertConfig, SpanBertEncoder

    tokenizer = word_tokenizer()
    encoder = SpanBertEncoder(SpanBertConfig.preset("tiny", vocab_size=tokenizer.vocab_size,
                                                    hidden_size=16, intermediate_size=32))
    model = SpanBertClassifier(encoder, num_labels=2)
    document = " ".join(["the city is big ."] * 8 + ["new york"])  # 42 tokens: 3 windows
    path = tmp_path / "docs.tsv"
    path.write_text(f"text\tlabel\n{document}\t1\nnew york is big\t0\n")
    metadata = {"text_columns": ["text"], "label_column": "label", "regression": False,
                "labels": ["0", "1"], "majority_label": "1", "max_seq_length": 16,
                "long_document": True, "chunk_overlap": 4}
    metrics, predictions = classification.evaluate_file(model, tokenizer, metadata, str(path),
                                                        batch_size=3, progress=False)
    assert metrics["chunks"] == 5 and predictions[0]["chunks"] == 4
    assert "chunks" not in predictions[1]
    # the same chunks, each through the model on its own
    rows = classification.encode_examples(
        classification.read_examples(str(path)).examples, tokenizer, 16, None,
        long_document=True, chunk_overlap=4).encoded
    chunk_logits = [model({"input_ids": ids[None], "input_mask": np.ones((1, len(ids))),
                           "segment_ids": np.zeros((1, len(ids)))},
                          training=False)["logits"].numpy()[0]
                    for ids, source in zip(rows.input_ids, rows.source) if source == 0]
    assert len(chunk_logits) == 4
    expected = np.mean(chunk_logits, axis=0)
    probabilities = np.exp(expected) / np.exp(expected).sum()
    assert [predictions[0]["probabilities"][label] for label in ("0", "1")] == pytest.approx(
        probabilities.tolist(), abs=1e-5)
