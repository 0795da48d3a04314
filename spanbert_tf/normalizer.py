"""BERT text normalisation that matches Hugging Face, as a TF Text `FastBertNormalizer` model.

TF Text's `FastBertNormalizer` maps text code point by code point through a table stored
in a flatbuffer (a Darts-clone trie from UTF-8 code point to replacement string). It is
one of the few tokenizer ops with a TFLite kernel, so the tokenizer must use it. Its
built-in tables differ from the Hugging Face `BertNormalizer` (`tokenizers`,
`BertTokenizerFast`) that every BERT/SpanBERT checkpoint was trained with:

- uncased: TF applies ICU NFKC case folding, so "ß" -> "ss", "…" -> "...", "ﬁ" -> "fi",
  full-width letters -> ASCII, final "ς" -> "σ"; Hugging Face only lower-cases and strips
  accents (NFD, drop non-spacing marks);
- both: TF turns control and format characters into spaces; Hugging Face deletes them
  (and U+FFFD and private-use characters), so "a\\u200bb" is one word there and two in TF.

`build_normalizer_model` writes a model with Hugging Face's rules as the table, so the
unchanged TF Text op (TFLite- and TF-Serving-compatible) normalises exactly like
`BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=lowercase,
lowercase=lowercase)`, per code point:

1. delete U+0000, U+FFFD and every Cc (except tab, LF, CR), Cf and Co character;
2. map White_Space characters to " ";
3. uncased only: NFD, drop Mn (non-spacing marks), then lower-case each character.

Chinese-character splitting needs no table entry: TF's WordPiece pre-tokenizer already
isolates CJK ideographs. Known differences that remain (measured over every code point
in `tests/test_tokenizer.py`): private-use planes 15-16 (U+F0000-U+10FFFF) are kept,
not deleted, which keeps the table 20x smaller; and about 400 characters added in
recent Unicode versions are classified by Python's `unicodedata` and ICU, which differ
from the older tables inside `tokenizers`.

Example:
    >>> import tensorflow as tf, tensorflow_text as tf_text
    >>> model = build_normalizer_model(lowercase=True)
    >>> normalizer = tf_text.FastBertNormalizer(model_buffer=model)
    >>> normalizer.normalize(tf.constant(["Straße\\u200bCafé"])).numpy()[0].decode()
    'straßecafe'
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Iterator

import numpy as np

# The White_Space property (what Rust's `char::is_whitespace` tests).
WHITE_SPACE = frozenset(
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
     0x2028, 0x2029, 0x202F, 0x205F, 0x3000])
KEPT_CONTROLS = frozenset("\t\n\r")
DELETED_CATEGORIES = frozenset(["Cc", "Cf", "Co"])
# Planes 0-3 (assigned text, CJK extensions) and plane 14 (tags, variation selectors).
# Planes 4-13 are unassigned; planes 15-16 are private use (see module docstring).
CODE_POINT_RANGES = ((0x0, 0x40000), (0xE0000, 0xF0000))

# FastBertNormalizer data word layout (tensorflow_text/core/kernels/fast_bert_normalizer.h).
_DIFFERENT_MASK = 0x40000000
_LENGTH_BITS = 6
_MAX_MAPPED_BYTES = (1 << _LENGTH_BITS) - 1


def normalize_code_point(code_point: int, lowercase: bool) -> str:
    """Returns what Hugging Face's BertNormalizer makes of one code point."""
    char = chr(code_point)
    if code_point in (0, 0xFFFD):
        return ""
    if unicodedata.category(char) in DELETED_CATEGORIES and char not in KEPT_CONTROLS:
        return ""
    if code_point in WHITE_SPACE:
        return " "
    if lowercase:
        stripped = (c for c in unicodedata.normalize("NFD", char)
                    if unicodedata.category(c) != "Mn")
        return "".join(c.lower() for c in stripped)
    return char


def normalization_table(lowercase: bool) -> dict[int, str]:
    """Every code point whose normalised form differs from itself, with that form.

    Same rules as `normalize_code_point`, inlined with fast paths (about 0.3 s).
    """
    table = {0: "", 0xFFFD: ""}
    category, decomposition, nfd = (
        unicodedata.category, unicodedata.decomposition, unicodedata.normalize)
    for code_point in _code_points():
        char = chr(code_point)
        kind = category(char)
        if kind in DELETED_CATEGORIES and char not in KEPT_CONTROLS:
            table[code_point] = ""
        elif code_point in WHITE_SPACE:
            if char != " ":
                table[code_point] = " "
        elif lowercase:
            if kind == "Mn":
                table[code_point] = ""
                continue
            # Without a decomposition mapping NFD leaves a character alone, except
            # Hangul syllables, which decompose algorithmically.
            if decomposition(char) or 0xAC00 <= code_point <= 0xD7A3:
                mapped = "".join(c.lower() for c in nfd("NFD", char) if category(c) != "Mn")
            else:
                mapped = char.lower()
            if mapped != char:
                table[code_point] = mapped
    return table


@functools.lru_cache(maxsize=2)
def build_normalizer_model(lowercase: bool) -> bytes:
    """Returns a `FastBertNormalizer` model buffer with Hugging Face's rules (cached)."""
    pool = bytearray()
    pool_offsets: dict[bytes, int] = {}
    trie_items: dict[bytes, int] = {}
    data_for_code_point_zero = 0
    for code_point, mapped in normalization_table(lowercase).items():
        data = _DIFFERENT_MASK
        encoded = mapped.encode("utf-8")
        if encoded:
            if len(encoded) > _MAX_MAPPED_BYTES:
                raise ValueError(f"U+{code_point:04X} normalises to {len(encoded)} bytes")
            if encoded not in pool_offsets:
                pool_offsets[encoded] = len(pool)
                pool += encoded
            data |= len(encoded) | (pool_offsets[encoded] << _LENGTH_BITS)
        if code_point == 0:
            data_for_code_point_zero = data  # Darts-clone cannot store the empty key.
        else:
            trie_items[chr(code_point).encode("utf-8")] = data
    units = build_darts_trie(trie_items)
    return _model_flatbuffer(lowercase, units, data_for_code_point_zero, bytes(pool))


def build_darts_trie(items: dict[bytes, int]) -> np.ndarray:
    """Builds a Darts-clone double-array trie (uint32 units) mapping keys to values.

    Layout read by TF Text's `DartsCloneTrieWrapper`: unit = label (bits 0-7) | has_leaf
    (bit 8) | offset (bits 10-30); the child for byte `c` of the node at `p` sits at
    `p ^ offset ^ c`, and a key's value sits in a leaf unit (bit 31 set) at
    `p ^ offset`. Children of a node share one 256-unit block, so bases are searched
    block by block, in the last 16 blocks that still have room.
    """
    if not items:
        return np.zeros([1], np.uint32)
    root: dict = {}
    for key, value in items.items():
        if not key or 0 in key or not 0 <= value < (1 << 31):
            raise ValueError(f"invalid trie item {key!r}: {value}")
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[-1] = value
    layout = _BlockLayout()
    units = layout.units
    queue = [(0, root)]
    for position, node in queue:  # Breadth first; the queue grows while iterating.
        labels = [0 if key == -1 else key for key in node]
        base = layout.claim_base(labels)
        units[position] |= ((position ^ base) << 10) | (0x100 if -1 in node else 0)
        for key, child in node.items():
            if key == -1:
                units[base] = 0x80000000 | child
            else:
                units[base ^ key] = key
                queue.append((base ^ key, child))
    while len(units) > 1 and units[-1] == 0:
        units.pop()
    if len(units) >= 1 << 21:
        raise ValueError("trie too large for 21-bit offsets")
    return np.asarray(units, np.uint32)


class _BlockLayout:
    """Free-slot bookkeeping of a double array in 256-unit blocks (bit sets as ints)."""

    OPEN_BLOCKS = 16
    FULL = (1 << 256) - 1

    def __init__(self):
        self.units = [0] * 256
        self.free = [self.FULL ^ 1]  # Unit 0 is the root.
        self.used_bases = [0]
        self.open = [0]

    def claim_base(self, labels: list[int]) -> int:
        """Finds an unused base whose child slots `base ^ label` are all free, claims them."""
        for block in self.open:
            low = self._fit(block, labels)
            if low is not None:
                return self._claim(block, low, labels)
        self._new_block()
        return self._claim(len(self.free) - 1, labels[0], labels)

    def _fit(self, block: int, labels: list[int]) -> int | None:
        free, used_bases, first = self.free[block], self.used_bases[block], labels[0]
        candidates = free
        while candidates:
            bit = candidates & -candidates
            candidates ^= bit
            low = (bit.bit_length() - 1) ^ first
            if (used_bases >> low) & 1:
                continue
            if all((free >> (low ^ label)) & 1 for label in labels):
                return low
        return None

    def _claim(self, block: int, low: int, labels: list[int]) -> int:
        self.used_bases[block] |= 1 << low
        for label in labels:
            self.free[block] &= ~(1 << (low ^ label))
        if not self.free[block]:
            self.open.remove(block)
        return block * 256 + low

    def _new_block(self) -> None:
        self.free.append(self.FULL)
        self.used_bases.append(0)
        self.units.extend([0] * 256)
        self.open.append(len(self.free) - 1)
        if len(self.open) > self.OPEN_BLOCKS:
            self.open.pop(0)


def _code_points() -> Iterator[int]:
    for start, stop in CODE_POINT_RANGES:
        for code_point in range(start, stop):
            if not 0xD800 <= code_point <= 0xDFFF:
                yield code_point


def _model_flatbuffer(lowercase: bool, units: np.ndarray, data_for_code_point_zero: int,
                      pool: bytes) -> bytes:
    """Serialises `FastBertNormalizerModel` (fields: lower_case_nfd_strip_accents: bool,
    trie_array: [uint32], data_for_codepoint_zero: int32, normalized_string_pool: [ubyte])."""
    import flatbuffers  # A TensorFlow dependency.

    builder = flatbuffers.Builder(units.nbytes + len(pool) + 64)
    pool_vector = builder.CreateByteVector(pool)
    trie_vector = builder.CreateNumpyVector(units)
    builder.StartObject(4)
    builder.PrependBoolSlot(0, lowercase, False)
    builder.PrependUOffsetTRelativeSlot(1, trie_vector, 0)
    builder.PrependInt32Slot(2, data_for_code_point_zero, 0)
    builder.PrependUOffsetTRelativeSlot(3, pool_vector, 0)
    builder.Finish(builder.EndObject())
    return bytes(builder.Output())
