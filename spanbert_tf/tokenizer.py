"""SpanBERT WordPiece tokenizer on TF Text's FastBertNormalizer + FastWordpieceTokenizer.

These two ops are the only tokenizer ops with TFLite kernels, and TF Serving links them,
so the same tokenizer runs in tf.data, in an exported SavedModel and on a phone. The
normaliser table is built by `spanbert_tf.normalizer` to reproduce Hugging Face's
`BertNormalizer`, so ids match `BertTokenizerFast` / `BertWordPieceTokenizer` on the same
vocabulary (measured in tests/test_tokenizer.py).

Offsets: `tokenize_with_offsets` returns byte offsets into the UTF-8 input by default,
like TF Text. With `offset_unit="char"` they are converted in-graph to code point offsets,
i.e. Python `str` indices: `text[start:end]` is the original text of the token (for
uncased input, the text before lower-casing and accent stripping). Spans include
characters that normalise to nothing (a control character or a stripped accent right
after the token), where Hugging Face ends the span before them. Tokens made from part
of one code point (uncased "한" -> "ᄒ", "##ᅡ", "##ᆫ") start at that code point, and
all but the last have an empty span; Hugging Face gives each the whole character.

Word starts: 1 for a token that begins a word (does not start with `##`), 0 for `##`
continuations and for [PAD], [CLS], [SEP] and [MASK]. [UNK] stands for a whole unknown
word, so it is a word start; so are [unused*] tokens (used as entity markers).

Example:
    >>> tokenizer = SpanBertTokenizer(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "span", "##bert", "is", "fun", "!"])
    >>> tokenizer.tokenize(["SpanBERT is fun!"]).to_list()  # cased: "SpanBERT" is unknown
    [[1, 7, 8, 9]]
    >>> ids = SpanBertTokenizer(tokenizer.vocabulary, lowercase=True).tokenize(["SpanBERT!"])
    >>> ids.to_list(), tokenizer.word_starts(ids).to_list()
    ([[5, 6, 9]], [[1, 0, 1]])
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from spanbert_tf.normalizer import build_normalizer_model

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
# Special tokens that are structure, not text: never a word start, dropped by detokenize.
STRUCTURAL_TOKENS = (PAD, CLS, SEP, MASK)
SUFFIX_INDICATOR = "##"


def load_vocabulary(path: str | os.PathLike) -> list[str]:
    """Reads a BERT `vocab.txt` (one token per line, line number = id) and validates it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    with open(path, "rb") as file:
        data = file.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"vocabulary file {path} is not UTF-8 text ({error})") from None
    tokens = [line.rstrip("\r") for line in text.split("\n")]
    if tokens and tokens[-1] == "":
        tokens.pop()
    validate_vocabulary(tokens, source=path)
    return tokens


def validate_vocabulary(tokens: Sequence[str], source: str = "vocabulary") -> None:
    """Raises ValueError for an empty vocabulary, empty or duplicate tokens, or missing
    special tokens."""
    if not tokens:
        raise ValueError(f"{source} is empty: expected one WordPiece token per line")
    seen: dict[str, int] = {}
    for index, token in enumerate(tokens):
        if not token.strip():
            raise ValueError(f"{source}: token {index} (line {index + 1}) is empty or blank")
        if token in seen:
            raise ValueError(f"{source}: token {token!r} appears twice (lines "
                             f"{seen[token] + 1} and {index + 1})")
        seen[token] = index
    missing = [token for token in SPECIAL_TOKENS if token not in seen]
    if missing:
        raise ValueError(f"{source} lacks the special token(s) {', '.join(missing)}; a "
                         f"BERT WordPiece vocabulary needs {', '.join(SPECIAL_TOKENS)}")


def vocabulary_is_uncased(vocabulary: str | os.PathLike | Sequence[str]) -> bool:
    """True when no token of the vocabulary contains an upper-case letter.

    An uncased BERT vocabulary was built from lower-cased text, so only its bracketed
    special tokens ([CLS], [unused0], ...) hold capitals; those are ignored. A letter
    counts as upper-case when lower-casing changes it (bert-base-uncased keeps "ℝ",
    which Unicode calls upper-case but has no lower-case form). Use it to
    pick `SpanBertTokenizer(..., lowercase=...)` for a checkpoint that does not say.

    Example:
        >>> vocabulary_is_uncased(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"])
        True
        >>> vocabulary_is_uncased(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "The"])
        False
    """
    if isinstance(vocabulary, (str, os.PathLike)):
        vocabulary = load_vocabulary(vocabulary)
    for token in vocabulary:
        if token.startswith("[") and token.endswith("]"):
            continue
        if token != token.lower():
            return False
    return True


class SpanBertTokenizer(tf.Module):
    """BERT WordPiece tokenizer (cased or uncased) for strings, batches and tf.data.

    Args:
        vocabulary: path to a `vocab.txt`, or the list of tokens (index = id). A path is
            kept as a `tf.saved_model.Asset` (`vocab_file`), so a SavedModel that tracks
            this tokenizer carries the vocabulary file.
        lowercase: uncased mode: lower-case and strip accents (BERT "uncased"). SpanBERT
            is cased (the default).
        max_bytes_per_word: a word longer than this many UTF-8 bytes becomes [UNK]
            (Hugging Face counts 100 characters; both agree on ASCII words).
        name: module name.

    All methods accept a Python string or list of strings, or a tf.string tensor of any
    rank, and run eagerly, in `tf.data.Dataset.map` and inside `tf.function`.
    """

    def __init__(
        self,
        vocabulary: str | os.PathLike | Sequence[str],
        lowercase: bool = False,
        max_bytes_per_word: int = 100,
        name: str | None = None,
    ):
        super().__init__(name=name)
        if isinstance(vocabulary, (str, os.PathLike)):
            self._vocab_path: str | None = os.fspath(vocabulary)
            tokens = load_vocabulary(self._vocab_path)
            self.vocab_file = tf.saved_model.Asset(self._vocab_path)
        else:
            self._vocab_path = None
            tokens = [str(token) for token in vocabulary]
            validate_vocabulary(tokens)
            self.vocab_file = None
        self.lowercase = bool(lowercase)
        self.max_bytes_per_word = int(max_bytes_per_word)
        # A plain holder: tf.Module would wrap a bare tuple/dict for checkpoint tracking.
        self._vocab = _Vocabulary(tokens)
        # FastBertTokenizer is exactly these two ops; holding them separately lets
        # tokenize_with_offsets map offsets with one flat gather instead of its slow
        # batched ragged gather.
        self._normalizer = tf_text.FastBertNormalizer(
            model_buffer=build_normalizer_model(self.lowercase))
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            vocab=list(tokens),
            suffix_indicator=SUFFIX_INDICATOR,
            max_bytes_per_word=self.max_bytes_per_word,
            token_out_type=tf.int32,
            unknown_token=UNK,
            support_detokenization=True,
        )
        self._word_start_table = tf.constant(self.word_start_flags(), tf.int32)
        self._structural_ids = tf.constant([self._ids[t] for t in STRUCTURAL_TOKENS], tf.int32)

    @property
    def _tokens(self) -> tuple[str, ...]:
        return self._vocab.tokens

    @property
    def _ids(self) -> dict[str, int]:
        return self._vocab.ids

    @property
    def vocabulary(self) -> list[str]:
        return list(self._tokens)

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def vocab_path(self) -> str | None:
        """The vocab.txt this tokenizer was loaded from (None for a token list)."""
        return self._vocab_path

    @property
    def special_token_ids(self) -> dict[str, int]:
        """Ids of [PAD], [UNK], [CLS], [SEP], [MASK], looked up by token string."""
        return {token: self._ids[token] for token in SPECIAL_TOKENS}

    @property
    def pad_id(self) -> int:
        return self._ids[PAD]

    @property
    def unk_id(self) -> int:
        return self._ids[UNK]

    @property
    def cls_id(self) -> int:
        return self._ids[CLS]

    @property
    def sep_id(self) -> int:
        return self._ids[SEP]

    @property
    def mask_id(self) -> int:
        return self._ids[MASK]

    def token_to_id(self, token: str) -> int:
        if token not in self._ids:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return self._ids[token]

    def id_to_token(self, token_id: int) -> str:
        return self._tokens[int(token_id)]

    def word_start_flags(self) -> np.ndarray:
        """Per vocabulary id: 1 if the token begins a word, 0 for `##` pieces and for
        [PAD]/[CLS]/[SEP]/[MASK] (int32 array of length `vocab_size`)."""
        flags = np.array([not t.startswith(SUFFIX_INDICATOR) for t in self._tokens], np.int32)
        flags[[self._ids[token] for token in STRUCTURAL_TOKENS]] = 0
        return flags

    def __call__(self, texts) -> tf.RaggedTensor:
        return self.tokenize(texts)

    def tokenize(self, texts) -> tf.RaggedTensor:
        """Token ids (int32), ragged over the last axis: [..., (tokens)]; a 1-D Tensor
        for a single string."""
        flat_texts, restore = _flatten(_as_string_tensor(texts))
        return restore(self._wordpiece.tokenize(self._normalizer.normalize(flat_texts)))

    def tokenize_with_offsets(self, texts, offset_unit: str = "byte"):
        """Returns (ids, starts, ends); `starts`/`ends` are int64 offsets of each token in
        its input string, in UTF-8 bytes (`offset_unit="byte"`) or in characters
        (`"char"`, code points: Python `str` indices)."""
        if offset_unit not in ("byte", "char"):
            raise ValueError(f"offset_unit must be 'byte' or 'char', got {offset_unit!r}")
        texts = _as_string_tensor(texts)
        flat_texts, restore = _flatten(texts)
        normalized, normalized_to_input = self._normalizer.normalize_with_offsets(flat_texts)
        ids, starts, ends = self._wordpiece.tokenize_with_offsets(normalized)
        # Offsets into the normalized text -> offsets into the input text.
        row_starts = tf.gather(normalized_to_input.row_starts(), starts.value_rowids())
        input_offsets = normalized_to_input.flat_values
        starts = starts.with_flat_values(
            tf.gather(input_offsets, starts.flat_values + row_starts))
        ends = ends.with_flat_values(tf.gather(input_offsets, ends.flat_values + row_starts))
        if offset_unit == "char":
            starts, ends = byte_to_char_offsets(flat_texts, starts, ends)
        ids, starts, ends = restore(ids), restore(starts), restore(ends)
        return ids, starts, ends

    def word_starts(self, token_ids):
        """1 where a token begins a word, else 0 (int32, same shape as `token_ids`)."""
        return tf.ragged.map_flat_values(
            lambda ids: tf.gather(self._word_start_table, tf.cast(ids, tf.int32)), token_ids)

    def detokenize(self, token_ids, skip_special_tokens: bool = True) -> tf.Tensor:
        """Joins word pieces back into space-separated words, one string per sequence.

        Not the inverse of `tokenize` (lower-casing and punctuation splitting are lost):
        "Hello, world!" comes back as "Hello , world !". [PAD]/[CLS]/[SEP]/[MASK] are
        dropped when `skip_special_tokens`; [UNK] is always kept.
        """
        single = not isinstance(token_ids, tf.RaggedTensor) and tf.convert_to_tensor(
            token_ids).shape.rank == 1
        token_ids = tf.cast(_as_ragged(token_ids), tf.int32)
        if skip_special_tokens:
            keep = tf.reduce_all(
                tf.not_equal(token_ids.flat_values[:, tf.newaxis], self._structural_ids), -1)
            token_ids = tf.ragged.boolean_mask(token_ids, token_ids.with_flat_values(keep))
        texts = self._wordpiece.detokenize(token_ids)
        return texts[0] if single else texts

    def save_vocabulary(self, path: str | os.PathLike) -> str:
        """Writes vocab.txt (one token per line) to `path` (a file or a directory)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "vocab.txt")
        with open(path, "w", encoding="utf-8", newline="\n") as file:
            file.write("\n".join(self._tokens) + "\n")
        return path

    def get_config(self) -> dict[str, Any]:
        return {
            "vocabulary": self._vocab_path if self._vocab_path else list(self._tokens),
            "lowercase": self.lowercase,
            "max_bytes_per_word": self.max_bytes_per_word,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SpanBertTokenizer":
        return cls(**config)


def byte_to_char_offsets(texts, starts, ends):
    """Converts byte offsets of tokens in `texts` (rank 0 or 1) to code point offsets.

    A character starts at every byte that is not a UTF-8 continuation byte
    (0b10xxxxxx), so a token's character offset is the number of such bytes before its
    byte offset. For valid UTF-8 this is exactly the Python `str` index.
    """
    texts = tf.convert_to_tensor(texts, tf.string)
    if texts.shape.rank == 0:
        char_starts, char_ends = byte_to_char_offsets(
            texts[tf.newaxis], _as_ragged(starts[tf.newaxis]), _as_ragged(ends[tf.newaxis]))
        return char_starts[0], char_ends[0]
    if texts.shape.rank != 1:
        raise ValueError(f"char offsets need rank-0 or rank-1 texts, got rank {texts.shape.rank}")
    # One byte stream for the whole batch: chars_before[i] = characters in bytes [0, i).
    stream = tf.io.decode_raw(tf.strings.reduce_join(texts), tf.uint8)
    is_char_start = tf.cast(tf.not_equal(tf.bitwise.bitwise_and(stream, 0xC0), 0x80), tf.int64)
    chars_before = tf.concat([[0], tf.cumsum(is_char_start)], 0)
    byte_lengths = tf.cast(tf.strings.length(texts, unit="BYTE"), tf.int64)
    row_byte_starts = tf.cumsum(byte_lengths, exclusive=True)
    row_char_starts = tf.gather(chars_before, row_byte_starts)

    def convert(byte_offsets):
        byte_offsets = _as_ragged(byte_offsets)
        rows = byte_offsets.value_rowids()
        positions = tf.cast(byte_offsets.flat_values, tf.int64) + tf.gather(row_byte_starts, rows)
        return byte_offsets.with_flat_values(
            tf.gather(chars_before, positions) - tf.gather(row_char_starts, rows))

    return convert(starts), convert(ends)


class _Vocabulary:
    """Tokens and their ids, kept out of tf.Module's attribute tracking."""

    def __init__(self, tokens: Sequence[str]):
        self.tokens = tuple(tokens)
        self.ids = {token: index for index, token in enumerate(self.tokens)}


def _flatten(texts):
    """Reshapes string texts to rank 1; returns them and a function that restores the
    outer shape on a ragged [n, (tokens)] result. (FastBertNormalizer fails on scalars,
    and rank 1 keeps offset arithmetic flat.)"""
    if texts.shape.rank is None:
        raise ValueError("texts must have a known rank")
    if texts.shape.rank == 0:
        return texts[tf.newaxis], lambda result: result[0]
    if isinstance(texts, tf.RaggedTensor):
        return texts.flat_values, texts.with_flat_values
    if texts.shape.rank == 1:
        return texts, lambda result: result
    shape = tf.shape(texts, out_type=tf.int64)

    def restore(result):
        for axis in range(texts.shape.rank - 1, 0, -1):
            result = tf.RaggedTensor.from_uniform_row_length(result, shape[axis])
        return result

    return tf.reshape(texts, [-1]), restore


def _as_string_tensor(texts):
    if isinstance(texts, (tf.Tensor, tf.RaggedTensor)):
        return texts
    return tf.convert_to_tensor(texts, tf.string)


def _as_ragged(values):
    if isinstance(values, tf.RaggedTensor):
        return values
    values = tf.convert_to_tensor(values)
    if values.shape.rank == 1:
        values = values[tf.newaxis]
    return tf.RaggedTensor.from_tensor(values)
