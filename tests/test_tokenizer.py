"""SpanBertTokenizer: parity with Hugging Face tokenizers, offsets, graph use, errors."""

from __future__ import annotations

import os
import unicodedata

import numpy as np
import pytest
import tensorflow as tf

from corpus_helpers import bundled_cased_vocab, bundled_lines, minilm_vocab
from spanbert_tf.normalizer import CODE_POINT_RANGES, normalize_code_point
from spanbert_tf.tokenizer import SpanBertTokenizer, byte_to_char_offsets

hf_tokenizers = pytest.importorskip("tokenizers")

HANDWRITTEN = [
    "Café naïve résumé Ångström Zoë façade",  # accents
    "Ça coûte 3,50 € — «très» cher… ¿Qué? ¡Sí!",  # punctuation, symbols
    "“Curly quotes”, ‘single’, (brackets) [and] {braces}; semi: colon/slash\\back",
    "日本語の文章です。中文句子！한국어 문장입니다.",  # CJK, Hangul
    "emoji 😀👍🏽 test😀 🇫🇷 👨‍👩‍👧 ❤️ ✈︎",  # emoji, ZWJ sequences, variation selectors
    "ctrl\x00a\x07b\u200bc\u200dd\tq\re\x0bf\x1fg\x7fh\x85i",  # control/format chars
    "ﬁ ligature ＦＵＬＬ width Ⅻ ½ ² ℃ ™",  # compatibility characters
    "Straße İstanbul ǅ ΟΔΥΣΣΕΥΣ σπόνδυλος",  # special casing, final sigma
    "a\u0301 e\u0300 o\u0308 combining marks",
    "\ufeffbyte order mark and \ufffd replacement character and \ue000 private use",
    "\u00a0no-break\u2003em space\u3000ideographic space\u2028line separator",
    "https://example.com/a?b=c&d=e#f user@example.org $1,234.56 3.14 -7 +8 100%",
    "x" * 150 + " supercalifragilisticexpialidocious " + "é" * 40,
    "Привет, мир! Γειά σου Κόσμε! שלום עולם! مرحبا بالعالم! नमस्ते दुनिया! สวัสดีชาวโลก",
    "tab\there  double  spaces   and trailing   ",
    "",
    "   ",
]


def _hf(vocab_path: str, lowercase: bool):
    return hf_tokenizers.BertWordPieceTokenizer(
        vocab_path, lowercase=lowercase, strip_accents=lowercase, clean_text=True,
        handle_chinese_chars=True)


def _ours(tokenizer: SpanBertTokenizer, lines, batch: int = 4096) -> list[list[int]]:
    out = []
    for begin in range(0, len(lines), batch):
        ids = tokenizer.tokenize(list(lines[begin:begin + batch]))
        flat, splits = ids.flat_values.numpy(), ids.row_splits.numpy()
        out.extend(flat[a:b].tolist() for a, b in zip(splits[:-1], splits[1:]))
    return out


def _mismatches(vocab_path: str, lowercase: bool, lines) -> list[int]:
    ours = _ours(SpanBertTokenizer(vocab_path, lowercase=lowercase), lines)
    theirs = [e.ids for e in _hf(vocab_path, lowercase).encode_batch(
        list(lines), add_special_tokens=False)]
    return [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]


VOCABS = {
    "minilm-uncased": (minilm_vocab, True),
    "bundled-cased": (lambda: bundled_cased_vocab()[0], False),
}


@pytest.mark.parametrize("vocab_name", sorted(VOCABS))
def test_ids_match_hugging_face_on_every_bundled_corpus_line(vocab_name):
    get_path, lowercase = VOCABS[vocab_name]
    lines = bundled_lines()
    bad = _mismatches(get_path(), lowercase, lines)
    print(f"\n{vocab_name}: {len(lines)} lines compared, {len(bad)} mismatches")
    assert len(lines) > 60000
    assert bad == [], [lines[i][:80] for i in bad[:5]]


@pytest.mark.parametrize("vocab_name", sorted(VOCABS))
def test_ids_match_hugging_face_on_handwritten_lines(vocab_name):
    get_path, lowercase = VOCABS[vocab_name]
    bad = _mismatches(get_path(), lowercase, HANDWRITTEN)
    assert bad == [], [HANDWRITTEN[i] for i in bad]


@pytest.mark.parametrize("lowercase", [False, True])
def test_every_code_point_matches_hugging_face_except_recent_unicode(lowercase):
    """"a<c>a" for every assigned code point. The only differences are characters that
    Hugging Face's older Unicode tables classify differently (recent additions); none
    in the scripts, punctuation, CJK, Hangul and emoji blocks that text uses."""
    code_points = [cp for start, stop in CODE_POINT_RANGES for cp in range(start, stop)
                   if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) != "Cn"]
    texts = [f"a{chr(cp)}a" for cp in code_points]
    bad = [code_points[i] for i in _mismatches(minilm_vocab(), lowercase, texts)]
    common = [(0x0, 0x590), (0x2000, 0x2070), (0x3000, 0xA000), (0xAC00, 0xD7B0),
              (0xFF00, 0xFFF0), (0x1F000, 0x1FB00)]
    print(f"\n{len(code_points)} code points, {len(bad)} differ (lowercase={lowercase})")
    assert [hex(cp) for cp in bad if any(a <= cp < b for a, b in common)] == []
    assert len(bad) < 1000


@pytest.mark.parametrize("vocab_name", sorted(VOCABS))
def test_char_offsets_map_back_to_the_original_characters(vocab_name):
    get_path, lowercase = VOCABS[vocab_name]
    tokenizer = SpanBertTokenizer(get_path(), lowercase=lowercase)
    lines = list(bundled_lines()[::7]) + HANDWRITTEN
    encodings = _hf(get_path(), lowercase).encode_batch(lines, add_special_tokens=False)
    ids, starts, ends = tokenizer.tokenize_with_offsets(lines, offset_unit="char")
    checked = exact = same_as_hf = 0
    for line, row_ids, row_starts, row_ends, hf in zip(
            lines, ids.to_list(), starts.to_list(), ends.to_list(), encodings):
        assert row_ids == hf.ids
        for token_id, start, end, (hf_start, hf_end) in zip(row_ids, row_starts, row_ends,
                                                             hf.offsets):
            token = tokenizer.id_to_token(token_id).removeprefix("##")
            # A piece of one code point that normalises to several characters (a Hangul
            # syllable -> jamo) starts at that code point and may end there too.
            text = _normalize(line[start:max(end, start + 1)], lowercase).strip()
            assert token == "[UNK]" or token in text, (line, start, end, token)
            exact += token == text
            # Hugging Face leaves characters that normalise to nothing (controls,
            # stripped accents) out of the span; ours ends before the next kept one.
            assert start == hf_start
            assert end == start or (end >= hf_end and not _normalize(
                line[hf_end:end], lowercase).strip())
            checked += 1
            same_as_hf += (start, end) == (hf_start, hf_end)
    print(f"\n{checked} token offsets checked: {exact} spell their token exactly, "
          f"{same_as_hf} identical to Hugging Face")
    assert exact > 0.999 * checked
    assert same_as_hf > 0.999 * checked


def _normalize(text: str, lowercase: bool) -> str:
    return "".join(normalize_code_point(ord(c), lowercase) for c in text)


def test_byte_offsets_and_char_offsets_agree_on_multibyte_text():
    tokenizer = SpanBertTokenizer(bundled_cased_vocab()[0])
    text = "Zoë ate 日本 😀 food."
    _, byte_starts, byte_ends = tokenizer.tokenize_with_offsets(text)
    _, char_starts, char_ends = tokenizer.tokenize_with_offsets(text, offset_unit="char")
    encoded = text.encode("utf-8")
    for bs, be, cs, ce in zip(byte_starts.numpy(), byte_ends.numpy(), char_starts.numpy(),
                              char_ends.numpy()):
        assert encoded[bs:be].decode("utf-8") == text[cs:ce]
    starts, ends = byte_to_char_offsets(tf.constant(["é a"]), tf.ragged.constant([[0, 3]]),
                                        tf.ragged.constant([[2, 4]]))
    assert starts.to_list() == [[0, 2]] and ends.to_list() == [[1, 3]]


def _toy_tokenizer(**kwargs) -> SpanBertTokenizer:
    tokens = ["[MASK]", "[CLS]", "hello", "[PAD]", "##s", "world", "[SEP]", "[UNK]", ",",
              "!", "[unused0]", "span", "##bert"]
    return SpanBertTokenizer(tokens, **kwargs)


def test_special_token_ids_are_looked_up_by_string():
    tokenizer = _toy_tokenizer()
    assert tokenizer.special_token_ids == {
        "[PAD]": 3, "[UNK]": 7, "[CLS]": 1, "[SEP]": 6, "[MASK]": 0}
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id,
            tokenizer.mask_id) == (3, 7, 1, 6, 0)
    assert tokenizer.vocab_size == 13 and tokenizer.token_to_id("world") == 5


def test_word_starts_mark_word_beginnings_only():
    tokenizer = _toy_tokenizer(lowercase=True)
    ids = tokenizer.tokenize(["Hellos, SpanBERT world!", "zzz"])
    assert [[tokenizer.id_to_token(i) for i in row] for row in ids.to_list()] == [
        ["hello", "##s", ",", "span", "##bert", "world", "!"], ["[UNK]"]]
    assert tokenizer.word_starts(ids).to_list() == [[1, 0, 1, 1, 0, 1, 1], [1]]
    specials = tf.constant([1, 6, 3, 0, 7, 10, 4])  # CLS SEP PAD MASK UNK unused0 ##s
    assert tokenizer.word_starts(specials).numpy().tolist() == [0, 0, 0, 0, 1, 1, 0]


def test_detokenize_joins_word_pieces_and_drops_structural_tokens():
    tokenizer = _toy_tokenizer(lowercase=True)
    ids = tokenizer.tokenize(["Hellos, SpanBERT world!"])
    with_specials = tf.concat([[[tokenizer.cls_id]], ids, [[tokenizer.sep_id]]], axis=1)
    assert tokenizer.detokenize(with_specials).numpy().tolist() == [
        b"hellos , spanbert world !"]
    assert tokenizer.detokenize([1, 2, 0, 5, 6, 3, 3]).numpy() == b"hello world"
    kept = tokenizer.detokenize([[1, 2, 6]], skip_special_tokens=False).numpy()
    assert kept.tolist() == [b"[CLS] hello [SEP]"]


def test_inputs_of_any_rank():
    tokenizer = _toy_tokenizer(lowercase=True)
    scalar = tokenizer.tokenize("hello world")
    assert scalar.numpy().tolist() == [2, 5]
    matrix = tokenizer.tokenize(tf.constant([["hello", "world !"], ["hellos", ""]]))
    assert matrix.to_list() == [[[2], [5, 9]], [[2, 4], []]]
    ids, starts, ends = tokenizer.tokenize_with_offsets(tf.constant([["hello", "x world"]]))
    assert ids.to_list() == [[[2], [7, 5]]]
    assert starts.to_list() == [[[0], [0, 2]]] and ends.to_list() == [[[5], [1, 7]]]
    ids, starts, ends = tokenizer.tokenize_with_offsets("é world", offset_unit="char")
    assert starts.numpy().tolist() == [0, 2] and ends.numpy().tolist() == [1, 7]


def test_runs_in_tf_data_tf_function_and_a_reloaded_saved_model(tmp_path):
    vocab_path, _ = bundled_cased_vocab()
    tokenizer = SpanBertTokenizer(vocab_path)
    texts = ["It is a truth universally acknowledged.", "Call me Ishmael.", ""]
    expected = tokenizer.tokenize(texts).to_list()

    dataset = tf.data.Dataset.from_tensor_slices(texts).map(
        lambda text: {"ids": tokenizer.tokenize(text),
                      "starts": tokenizer.word_starts(tokenizer.tokenize(text))})
    assert [e["ids"].tolist() for e in dataset.as_numpy_iterator()] == expected

    batched = tf.data.Dataset.from_tensor_slices(texts).batch(3).map(tokenizer.tokenize)
    assert next(iter(batched)).to_list() == expected

    module = tf.Module()
    module.tokenizer = tokenizer
    module.serve = tf.function(
        lambda text: tokenizer.tokenize(text).to_tensor(),
        input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path / "model"))
    assert os.listdir(tmp_path / "model" / "assets") == ["vocab.txt"]
    reloaded = tf.saved_model.load(str(tmp_path / "model"))
    dense = reloaded.serve(tf.constant(texts)).numpy()
    assert [row[:len(e)].tolist() for row, e in zip(dense, expected)] == expected
    assert reloaded.tokenizer.vocab_file.asset_path.numpy().decode().endswith("vocab.txt")


def test_config_round_trip_and_token_list_vocabulary(tmp_path):
    tokenizer = _toy_tokenizer(lowercase=True)
    clone = SpanBertTokenizer.from_config(tokenizer.get_config())
    assert clone.vocabulary == tokenizer.vocabulary and clone.lowercase
    saved = tokenizer.save_vocabulary(tmp_path)
    from_file = SpanBertTokenizer(saved, lowercase=True)
    assert from_file.get_config()["vocabulary"] == saved
    assert from_file.tokenize("hellos world").numpy().tolist() == [2, 4, 5]


def test_words_longer_than_100_bytes_become_unk():
    tokenizer = SpanBertTokenizer(minilm_vocab(), lowercase=True)
    ids = tokenizer.tokenize("a " + "x" * 101 + " b")
    assert [tokenizer.id_to_token(i) for i in ids.numpy()] == ["a", "[UNK]", "b"]


def test_missing_vocabulary_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "vocab.txt"
    with pytest.raises(FileNotFoundError, match="vocabulary file not found: .*nope"):
        SpanBertTokenizer(missing)


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("hello\nworld\n", r"lacks the special token\(s\) \[PAD\], \[UNK\], \[CLS\], \[SEP\]"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n\nworld\n", r"\(line 7\) is empty"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nhello\n", "'hello' appears twice"),
])
def test_bad_vocabulary_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        SpanBertTokenizer(path)
    assert str(path) in str(error.value)


def test_non_utf8_vocabulary_is_rejected(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"[PAD]\n\xff\xfe\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        SpanBertTokenizer(path)


def test_word_start_table_matches_vocabulary():
    tokenizer = SpanBertTokenizer(minilm_vocab(), lowercase=True)
    flags = tokenizer.word_start_flags()
    vocab = tokenizer.vocabulary
    continuation = np.array([t.startswith("##") for t in vocab])
    assert not flags[continuation].any()
    assert flags[[tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id,
                  tokenizer.mask_id]].tolist() == [0, 0, 0, 0]
    assert flags[tokenizer.unk_id] == 1
    assert flags.sum() == len(vocab) - continuation.sum() - 4


def test_runs_in_tflite_with_the_custom_normalizer_model(tmp_path):
    """Only builtins plus the TF Text custom ops, in ai_edge_litert: same ids as TF."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    import tensorflow_text as tf_text

    tokenizer = SpanBertTokenizer(minilm_vocab(), lowercase=True)

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.tokenizer = tokenizer

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, texts):
            ids = self.tokenizer.tokenize(texts)
            return {"ids": ids.flat_values, "row_splits": ids.row_splits,
                    "word_starts": self.tokenizer.word_starts(ids).flat_values}

    module = Serving()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = True
    interpreter = litert.InterpreterWithCustomOps(
        custom_op_registerers=tf_text.tflite_registrar.SELECT_TFTEXT_OPS,
        model_content=converter.convert())
    texts = HANDWRITTEN[:9] + ["Hello, world!"]
    outputs = interpreter.get_signature_runner()(texts=np.array(texts))
    expected = module.serve(tf.constant(texts))
    for name, value in expected.items():
        assert outputs[name].tolist() == value.numpy().tolist(), name
