"""In-graph packing (serving.preprocessing) against Hugging Face and the fine-tuning rule.

Single texts: `tokenizers` with the MiniLM checkpoint's own tokenizer.json is the
reference for [CLS]/[SEP] placement, truncation, masks and character offsets, token for
token on real sentences. Pairs: the fine-tuning features' truncation rule (what a served
model was trained on), and Hugging Face where nothing is truncated.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import tensorflow as tf
import tokenizers

from serving.preprocessing import TextPreprocessor, longest_first_lengths
from tests.export_helpers import BAD_INPUTS, minilm_source, minilm_tokenizer, real_sentences

CLS, SEP = 101, 102  # the MiniLM (BERT uncased) vocabulary


def hf_tokenizer(max_length: int) -> tokenizers.Tokenizer:
    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(minilm_source(), "tokenizer.json"))
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    tokenizer.enable_padding(pad_id=0)  # pads to the batch's longest
    return tokenizer


def truncate_pair_lengths(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """The fine-tuning features' pair truncation, token by token: pop from the longer
    sequence, from the first on a tie (pipelines/finetune/features.py truncate_pair)."""
    while n1 + n2 > budget:
        if n2 > n1:
            n2 -= 1
        else:
            n1 -= 1
    return n1, n2


def reference_pair(first: list[int], second: list[int], max_length: int):
    kept = truncate_pair_lengths(len(first), len(second), max_length - 3)
    ids = [CLS] + first[:kept[0]] + [SEP] + second[:kept[1]] + [SEP]
    return ids, [0] * (kept[0] + 2) + [1] * (kept[1] + 1)


def test_longest_first_lengths_match_the_fine_tuning_rule_exhaustively():
    cases = list(itertools.product(range(0, 14), range(0, 14), range(1, 15)))
    a, b, budget = (tf.constant(column, tf.int32) for column in zip(*cases))
    ours = longest_first_lengths(a, b, budget)
    expected = [truncate_pair_lengths(*case) for case in cases]
    assert list(zip(ours[0].numpy().tolist(), ours[1].numpy().tolist())) == expected


@pytest.mark.parametrize("max_length", [512, 16, 5])
def test_single_texts_match_hugging_face(max_length):
    texts = list(real_sentences(60)) + ["", "   ", "Zürich café naïve 🚀 北京"]
    ours = TextPreprocessor(minilm_tokenizer(), max_length)(tf.constant(texts))
    encodings = hf_tokenizer(max_length).encode_batch(texts)
    assert ours["input_ids"].numpy().tolist() == [e.ids for e in encodings]
    assert ours["input_mask"].numpy().tolist() == [e.attention_mask for e in encodings]
    assert ours["segment_ids"].numpy().tolist() == [e.type_ids for e in encodings]


@pytest.mark.parametrize("max_length", [512, 24, 11, 4])
def test_text_pairs_match_the_fine_tuning_packing(max_length):
    sentences = list(real_sentences(60))
    firsts, seconds = sentences[:30], sentences[30:]
    firsts[:3] = ["", "Short one.", sentences[5]]
    seconds[:3] = [sentences[7], "", sentences[5]]  # empty sides and an exact tie
    ours = TextPreprocessor(minilm_tokenizer(), max_length)(
        tf.constant(firsts), tf.constant(seconds))
    first_ids = minilm_tokenizer().tokenize(tf.constant(firsts)).to_list()
    second_ids = minilm_tokenizer().tokenize(tf.constant(seconds)).to_list()
    rows = [reference_pair(a, b, max_length) for a, b in zip(first_ids, second_ids)]
    width = max(len(ids) for ids, _ in rows)
    assert ours["input_ids"].numpy().tolist() == [ids + [0] * (width - len(ids))
                                                  for ids, _ in rows]
    assert ours["segment_ids"].numpy().tolist() == [seg + [0] * (width - len(seg))
                                                    for _, seg in rows]
    assert ours["input_mask"].numpy().tolist() == [[1] * len(ids) + [0] * (width - len(ids))
                                                   for ids, _ in rows]
    if max_length == 512:  # nothing truncated: Hugging Face packs pairs the same way
        encodings = hf_tokenizer(max_length).encode_batch(list(zip(firsts, seconds)))
        assert ours["input_ids"].numpy().tolist() == [e.ids for e in encodings]
        assert ours["segment_ids"].numpy().tolist() == [e.type_ids for e in encodings]


def test_offsets_match_hugging_face_on_real_sentences():
    texts = list(real_sentences(60))
    ours = TextPreprocessor(minilm_tokenizer(), 64)(tf.constant(texts), with_offsets=True)
    encodings = hf_tokenizer(64).encode_batch(texts)
    starts, ends = ours["token_starts"].numpy(), ours["token_ends"].numpy()
    for row, encoding in enumerate(encodings):
        assert list(zip(starts[row], ends[row])) == [tuple(o) for o in encoding.offsets]


def test_pair_offsets_index_their_own_text():
    first, second = "Where is the Eiffel Tower?", "The Eiffel Tower is in Paris."
    features = TextPreprocessor(minilm_tokenizer(), 64)(
        tf.constant([first]), tf.constant([second]), with_offsets=True)
    segments = features["segment_ids"].numpy()[0]
    pieces = []
    for position, (start, end) in enumerate(zip(features["token_starts"].numpy()[0],
                                                features["token_ends"].numpy()[0])):
        text = second if segments[position] else first
        pieces.append(text[start:end])
    tokens = [minilm_tokenizer().id_to_token(i).removeprefix("##")
              for i in features["input_ids"].numpy()[0]]
    assert [piece.lower() for piece in pieces] == [
        "" if token in ("[CLS]", "[SEP]") else token for token in tokens]
    assert pieces[1] == "Where" and "Paris" in pieces


def test_pad_to_max_length_gives_fixed_width():
    preprocessor = TextPreprocessor(minilm_tokenizer(), 32, pad_to_max_length=True)
    features = preprocessor(tf.constant(["a b c", ""]))
    assert features["input_ids"].shape == (2, 32)
    assert features["input_mask"].numpy().sum(axis=1).tolist() == [5, 2]


def test_bad_inputs_do_not_crash_and_give_sane_features():
    preprocessor = TextPreprocessor(minilm_tokenizer(), 128)
    names = list(BAD_INPUTS)
    features = preprocessor(tf.constant([BAD_INPUTS[name] for name in names]),
                            with_offsets=True)
    lengths = dict(zip(names, features["input_mask"].numpy().sum(axis=1).tolist()))
    assert lengths["empty"] == 2 and lengths["whitespace_only"] == 2  # [CLS] [SEP]
    assert lengths["long_50000_chars"] == 128  # truncated, not rejected
    assert lengths["emoji_cjk"] > 10
    # Invalid bytes become U+FFFD, which BERT normalisation drops: the words survive, as
    # in Hugging Face on the text decoded with errors="replace".
    row = names.index("invalid_utf8")
    expected = hf_tokenizer(128).encode(BAD_INPUTS["invalid_utf8"].decode(errors="replace"))
    assert features["input_ids"].numpy()[row][:lengths["invalid_utf8"]].tolist() == expected.ids
    assert lengths["invalid_utf8"] > 6  # caf au lait broken end survive
    assert features["token_ends"].numpy().max() <= 50000


def test_batch_of_zero_and_of_256():
    preprocessor = TextPreprocessor(minilm_tokenizer(), 128)
    empty = preprocessor(tf.constant([], tf.string), with_offsets=True)
    assert empty["input_ids"].shape[0] == 0 and empty["token_starts"].shape[0] == 0
    pairs = preprocessor(tf.constant([], tf.string), tf.constant([], tf.string))
    assert pairs["input_ids"].shape[0] == 0
    texts = list(real_sentences(60)) * 5
    big = preprocessor(tf.constant(texts[:256]))
    assert big["input_ids"].shape[0] == 256
    assert np.all(big["input_ids"].numpy()[:, 0] == minilm_tokenizer().cls_id)


def test_runs_inside_tf_function_with_dynamic_batch():
    preprocessor = TextPreprocessor(minilm_tokenizer(), 16)
    function = tf.function(lambda t, u: preprocessor(t, u, with_offsets=True),
                           input_signature=[tf.TensorSpec([None], tf.string)] * 2)
    eager = preprocessor(tf.constant(["one two", "three"]), tf.constant(["x", "y z w"]),
                         with_offsets=True)
    traced = function(tf.constant(["one two", "three"]), tf.constant(["x", "y z w"]))
    for name, value in eager.items():
        assert traced[name].numpy().tolist() == value.numpy().tolist(), name


def test_too_short_max_seq_length_is_refused():
    with pytest.raises(ValueError, match="at least 3"):
        TextPreprocessor(minilm_tokenizer(), 2)
