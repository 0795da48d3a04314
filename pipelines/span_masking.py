"""SpanBERT span masking as a TensorFlow graph, vectorised over a batch.

`SpanMasker` turns token ids plus word-start flags into the pretraining example of
DESIGN.md section 4 (MLM targets, SBO span boundaries and targets). It reproduces the
official `PairWithSpanMaskingScheme` of facebookresearch/SpanBERT
(`pretraining/fairseq/data/masking.py`) in distribution, without Python or numpy:

- The text of a segment is everything between [CLS] and [SEP]; n is its length and the
  budget is ceil(mask_rate * n) subword tokens (capped at `num_predictions`).
- Repeat until the budget is reached: draw a span length l in words from a geometric
  distribution truncated to [min_span_length, max_span_length] and renormalised, and an
  anchor token uniformly over the text. An anchor that is already masked is skipped
  (both draws are discarded). Otherwise mask the word containing the anchor and the
  next l - 1 words (stopping at [SEP]), token by token; words already masked are passed
  over without counting. The budget can run out inside a word: the official code stops
  there, and so do we, so the last span of a segment may end inside a word.
- Spans that overlap or touch are merged (the official `merge_intervals`), so a merged
  span is a maximal run of masked tokens. Replacement is decided once per merged span:
  `mask_token_rate` all [MASK], `random_token_rate` all random tokens, else unchanged.
- SBO: every merged span gets up to `max_sbo_targets` targets (its first tokens) and the
  boundaries (start - 1, end + 1), except a span that touches [CLS] or [SEP]: the
  official code (`endpoints='external'`) gives those no SBO targets, and neither do we.

How it runs without a Python loop: a skipped anchor is redrawn together with its span
length, so the accepted anchors are simply uniform over the tokens not yet masked.
Candidates (anchor, length) are drawn in rounds of K per segment and resolved at once:
candidate k is accepted unless an earlier accepted candidate's words contain its anchor
(a fixed point over a [K, K] relation that settles in two or three iterations), each
word is owned by the first accepted candidate that covers it, a cumulative token count
finds the candidate that reaches the budget, and that candidate keeps only its first
missing tokens. A second round runs only for the rare segment whose K candidates did not
fill the budget. The result matches the official per-example loop in distribution
(tests/test_span_masking.py compares both on the same real segments).

Randomness: every row is example `first_example + row` of a stream, and its draws are
counter-based (Philox) streams keyed by the seed and indexed by that example number
(`_ExampleStreams`), so a segment's mask depends only on (seed, example index, tokens):
not on the batch size, its place in the batch or the other segments. The input
pipeline relies on this to resume a run exactly and to keep masks independent of the
replica count.

Random replacement tokens are drawn uniformly from the vocabulary without the special
and reserved ids (`SpecialTokenIds.random_token_ids`). BERT draws uniformly from the
whole vocabulary; the fairseq SpanBERT code draws from the corpus token stream (unigram
frequencies). Excluding [CLS]/[SEP]/[PAD]/[MASK]/[UNK] and the [unused*] slots keeps
structural tokens out of running text and leaves the [unused*] embeddings untouched for
the fine-tuning markers (TACRED) that use them.

`token_masking=True` is the BERT ablation: the budget is spent on single word pieces
chosen uniformly without replacement (word boundaries ignored, the official
`BertRandomMaskingScheme`), and replacement is decided per token. SBO targets are still
produced for the runs of adjacent masked tokens; set the SBO loss weight to 0 for pure
BERT masking.

Example:
    >>> import tensorflow as tf
    >>> from pipelines.span_masking import SpanMaskingConfig, SpanMasker, SpecialTokenIds
    >>> special = SpecialTokenIds(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=50)
    >>> masker = SpanMasker(SpanMaskingConfig(max_seq_length=16), special)
    >>> ids = tf.ragged.constant([[1, 10, 11, 12, 13, 14, 15, 16, 2]])
    >>> starts = tf.ragged.constant([[0, 1, 1, 0, 1, 1, 1, 1, 0]])
    >>> example = masker(ids, starts, seed=tf.constant([1, 2]))
    >>> example["input_ids"].shape, example["masked_lm_positions"].shape
    (TensorShape([1, 16]), TensorShape([1, 3]))
    >>> example["span_target_ids"].shape
    TensorShape([1, 3, 15])
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import tensorflow as tf

NO_CANDIDATE = tf.int32.max  # "no candidate covers this word / token"

# Decisions, in the order of the replacement rates.
REPLACE_WITH_MASK, REPLACE_WITH_RANDOM, KEEP_ORIGINAL = 0, 1, 2

# Random stream uses (see _ExampleStreams): round r of candidate spans uses stream r.
REPLACEMENT_STREAM = 1 << 20
TOKEN_KEYS_STREAM = (1 << 20) + 1


@dataclasses.dataclass(frozen=True)
class SpanMaskingConfig:
    """Every knob of span masking, with the official SpanBERT values as defaults.

    Attributes:
        max_seq_length: static length L of the examples (records may be shorter).
        mask_rate: fraction of the text tokens to mask (the budget, rounded up).
        geometric_p: p of the geometric span-length distribution (in words).
        min_span_length: shortest span, in words.
        max_span_length: longest span, in words (the distribution is truncated and
            renormalised to [min_span_length, max_span_length]).
        mask_token_rate: probability that a span's tokens all become [MASK].
        random_token_rate: probability that a span's tokens all become random tokens;
            the rest of the spans keep their tokens.
        max_sbo_targets: SBO targets per span, T (longer spans keep their first T).
        max_predictions: MLM slots per example, P; None means ceil(mask_rate * L). The
            budget is capped at P.
        max_spans: SBO span slots per example, S; None means P, which can never
            overflow (every span holds at least one masked token). With a smaller S,
            spans beyond the first S keep their MLM targets but get no SBO targets.
        token_masking: BERT-style ablation: single word pieces, word boundaries ignored,
            replacement decided per token.

    Example:
        >>> config = SpanMaskingConfig()
        >>> config.num_predictions, config.num_spans, round(config.mean_span_length, 2)
        (77, 77, 3.8)
        >>> SpanMaskingConfig.from_json(config.to_json()) == config
        True
    """

    max_seq_length: int = 512
    mask_rate: float = 0.15
    geometric_p: float = 0.2
    min_span_length: int = 1
    max_span_length: int = 10
    mask_token_rate: float = 0.8
    random_token_rate: float = 0.1
    max_sbo_targets: int = 15
    max_predictions: int | None = None
    max_spans: int | None = None
    token_masking: bool = False

    def __post_init__(self) -> None:
        for name in ("max_seq_length", "min_span_length", "max_span_length", "max_sbo_targets"):
            _check_positive_int(name, getattr(self, name))
        for name in ("max_predictions", "max_spans"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if self.max_seq_length < 3:
            raise ValueError("SpanMaskingConfig.max_seq_length must be >= 3 ([CLS] text [SEP])")
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(
                f"SpanMaskingConfig.mask_rate must be in (0, 1), got {self.mask_rate!r}")
        if not 0.0 < self.geometric_p <= 1.0:
            raise ValueError(
                f"SpanMaskingConfig.geometric_p must be in (0, 1], got {self.geometric_p!r}")
        if self.min_span_length > self.max_span_length:
            raise ValueError(
                f"SpanMaskingConfig.min_span_length ({self.min_span_length}) must not exceed "
                f"max_span_length ({self.max_span_length})")
        for name in ("mask_token_rate", "random_token_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SpanMaskingConfig.{name} must be in [0, 1], "
                                 f"got {getattr(self, name)!r}")
        if self.mask_token_rate + self.random_token_rate > 1.0 + 1e-9:
            raise ValueError(
                "SpanMaskingConfig.mask_token_rate + random_token_rate must be <= 1, got "
                f"{self.mask_token_rate} + {self.random_token_rate}")
        if self.num_predictions > self.max_seq_length:
            raise ValueError(
                f"SpanMaskingConfig.max_predictions ({self.num_predictions}) must not exceed "
                f"max_seq_length ({self.max_seq_length})")
        if not isinstance(self.token_masking, bool):
            raise ValueError(
                f"SpanMaskingConfig.token_masking must be a bool, got {self.token_masking!r}")

    @property
    def num_predictions(self) -> int:
        """P: MLM slots per example."""
        if self.max_predictions is not None:
            return self.max_predictions
        return math.ceil(self.mask_rate * self.max_seq_length)

    @property
    def num_spans(self) -> int:
        """S: SBO span slots per example."""
        return self.max_spans if self.max_spans is not None else self.num_predictions

    @property
    def span_length_probabilities(self) -> tuple[float, ...]:
        """P(span = min_span_length + i words) for i = 0, 1, ..."""
        lengths = range(self.min_span_length, self.max_span_length + 1)
        weights = [self.geometric_p * (1 - self.geometric_p) ** (n - self.min_span_length)
                   for n in lengths]
        total = sum(weights)
        return tuple(w / total for w in weights)

    @property
    def mean_span_length(self) -> float:
        """Expected span length in words, as sampled (3.80 for the defaults)."""
        return sum((self.min_span_length + i) * p
                   for i, p in enumerate(self.span_length_probabilities))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SpanMaskingConfig":
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown SpanMaskingConfig field(s) {unknown}; "
                             f"known fields are {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "SpanMaskingConfig":
        return self.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_json(cls, text: str) -> "SpanMaskingConfig":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"SpanMaskingConfig JSON is not valid: {error}") from None
        if not isinstance(values, dict):
            raise ValueError("SpanMaskingConfig JSON must be an object")
        return cls.from_dict(values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SpanMaskingConfig":
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such span-masking config file")
        with open(path, encoding="utf-8") as handle:
            try:
                return cls.from_json(handle.read())
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json() + "\n")


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"SpanMaskingConfig.{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SpecialTokenIds:
    """The vocabulary facts span masking needs.

    Attributes:
        pad_id, cls_id, sep_id, mask_id: ids of [PAD], [CLS], [SEP], [MASK].
        vocab_size: number of ids.
        reserved_ids: further ids never drawn as random replacements ([UNK], [unused*]).

    Example:
        >>> special = SpecialTokenIds.from_vocab(
        ...     ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "##s"])
        >>> special.cls_id, special.mask_id, special.random_token_ids()
        (3, 5, [6, 7])
    """

    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    vocab_size: int
    reserved_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("pad_id", "cls_id", "sep_id", "mask_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"SpecialTokenIds.{name} ({value!r}) must be an id in "
                                 f"[0, vocab_size={self.vocab_size})")
        if len({self.pad_id, self.cls_id, self.sep_id, self.mask_id}) != 4:
            raise ValueError("SpecialTokenIds: [PAD], [CLS], [SEP] and [MASK] need distinct ids")
        if not self.random_token_ids():
            raise ValueError("SpecialTokenIds: no id is left to draw random replacements from")

    @property
    def structural_ids(self) -> tuple[int, int, int, int]:
        """Ids that never belong to the text of a segment."""
        return (self.pad_id, self.cls_id, self.sep_id, self.mask_id)

    def random_token_ids(self) -> list[int]:
        """Ids that random replacement draws from, uniformly."""
        excluded = set(self.structural_ids) | set(self.reserved_ids)
        return [i for i in range(self.vocab_size) if i not in excluded]

    @classmethod
    def from_vocab(cls, vocab: str | os.PathLike | Sequence[str]) -> "SpecialTokenIds":
        """Reads the ids from a WordPiece `vocab.txt` (path) or its list of tokens.

        Every bracketed token other than [PAD]/[CLS]/[SEP]/[MASK] ([UNK], [unused*],
        [SUBJ-*]...) is reserved: never a random replacement.
        """
        if isinstance(vocab, (str, os.PathLike)):
            path = os.fspath(vocab)
            if not tf.io.gfile.exists(path):
                raise FileNotFoundError(f"{path}: vocabulary file not found")
            with tf.io.gfile.GFile(path) as handle:
                tokens = [line.rstrip("\n").rstrip("\r") for line in handle]
            where = path
        else:
            tokens, where = list(vocab), "vocabulary"
        index = {token: i for i, token in enumerate(tokens)}
        missing = [t for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]") if t not in index]
        if missing:
            raise ValueError(f"{where}: missing special token(s) {missing}")
        structural = {"[PAD]", "[CLS]", "[SEP]", "[MASK]"}
        reserved = tuple(i for i, t in enumerate(tokens)
                         if t.startswith("[") and t.endswith("]") and len(t) > 2
                         and t not in structural)
        return cls(pad_id=index["[PAD]"], cls_id=index["[CLS]"], sep_id=index["[SEP]"],
                   mask_id=index["[MASK]"], vocab_size=len(tokens), reserved_ids=reserved)


class SpanMasker:
    """Masks segments of token ids into SpanBERT pretraining examples.

    Call with `input_ids` and `word_starts` (1 where a token begins a word, 0 for `##`
    continuations and special tokens) as RaggedTensors [B, (len)], dense [B, L'] padded
    with [PAD] (L' <= L), or a single unbatched segment; each row is
    `[CLS] text [SEP]`. `seed` is a stateless seed (int tensor of shape [2]) and the
    rows are examples `first_example`, `first_example + 1`, ... of a stream: each row's
    mask is a deterministic function of (seed, its example index, its tokens) alone,
    whatever the batch size or the other rows.

    Returns a dict of int32 tensors (float32 weights) with static shapes:
    input_ids, input_mask, segment_ids [B, L]; masked_lm_positions, masked_lm_ids,
    masked_lm_weights [B, P]; span_boundaries [B, S, 2]; span_target_positions,
    span_target_ids, span_target_weights [B, S, T]. Padding slots are 0 with weight 0.
    For every valid SBO slot, span_target_positions[s, t] == start of span s + t, and
    the valid SBO targets of an example are a subset of its masked positions (<= P).

    Performance: on CPU, TensorFlow's Cumsum, GatherV2 and TopKV2 kernels cost about
    10-30 ns per element, and every op costs a few microseconds, so the masked set is
    built on word arrays and then kept as a sorted list of flat positions (row * L +
    position) that is scattered or packed into the fixed-shape outputs.
    """

    def __init__(self, config: SpanMaskingConfig, special_ids: SpecialTokenIds):
        self.config = config
        self.special_ids = special_ids
        excluded = sorted(set(special_ids.structural_ids) | set(special_ids.reserved_ids))
        self._num_random_ids = special_ids.vocab_size - len(excluded)
        self._excluded_runs = _rank_shifts(excluded)
        cumulative, total = [], 0.0
        for probability in config.span_length_probabilities[:-1]:
            total += probability
            cumulative.append(total)
        self._length_cdf = cumulative
        budget_cap = min(
            math.ceil(config.mask_rate * (config.max_seq_length - 2)), config.num_predictions)
        # Candidates per round: ~1.5x the spans a full-length segment needs, so that one
        # round nearly always fills the budget (more rounds run when it does not).
        spans_needed = budget_cap / config.mean_span_length
        self._candidates = max(8, min(math.ceil(1.5 * spans_needed) + 8, budget_cap + 8))

    def __call__(self, input_ids, word_starts, seed, first_example=0) -> dict[str, tf.Tensor]:
        unbatched = _rank(input_ids) == 1
        if unbatched:
            input_ids, word_starts = _as_row(input_ids), _as_row(word_starts)
        ids, starts, lengths = self._dense(input_ids, word_starts)
        streams = _ExampleStreams(seed, first_example)
        example = self._mask_batch(ids, starts, lengths, streams)
        if unbatched:
            example = {name: value[0] for name, value in example.items()}
        return example

    # ---- input layout -------------------------------------------------------------

    def _dense(self, input_ids, word_starts):
        """Pads to [B, L] int32 and returns (ids, word_starts, lengths)."""
        length = self.config.max_seq_length
        batch = input_ids.shape[0]
        if isinstance(input_ids, tf.RaggedTensor):
            lengths = tf.cast(input_ids.row_lengths(), tf.int32)
            checks = [
                tf.debugging.assert_less_equal(
                    lengths, length,
                    message=f"a segment is longer than max_seq_length={length}"),
                tf.debugging.assert_equal(
                    lengths, tf.cast(word_starts.row_lengths(), tf.int32),
                    message="input_ids and word_starts have different lengths"),
            ]
            with tf.control_dependencies(checks):
                ids = tf.cast(input_ids, tf.int32).to_tensor(
                    self.special_ids.pad_id, shape=[batch, length])
                starts = tf.cast(word_starts, tf.int32).to_tensor(0, shape=[batch, length])
            return ids, starts, lengths
        ids, starts = tf.convert_to_tensor(input_ids), tf.convert_to_tensor(word_starts)
        if ids.shape[1] is not None and ids.shape[1] > length:
            raise ValueError(f"input_ids has {ids.shape[1]} positions, more than "
                             f"max_seq_length={length}")
        check = tf.debugging.assert_less_equal(
            tf.shape(ids)[1], length, message=f"input_ids is wider than max_seq_length={length}")
        with tf.control_dependencies([check]):
            padding = [[0, 0], [0, length - tf.shape(ids)[1]]]
        ids = tf.ensure_shape(tf.pad(tf.cast(ids, tf.int32), padding,
                                     constant_values=self.special_ids.pad_id), [batch, length])
        starts = tf.ensure_shape(tf.pad(tf.cast(starts, tf.int32), padding), [batch, length])
        lengths = tf.reduce_sum(tf.cast(tf.not_equal(ids, self.special_ids.pad_id), tf.int32),
                                axis=1)
        return ids, starts, lengths

    def _text_and_word_starts(self, ids, starts, lengths):
        """[B, L] flags: which positions are text, and which text tokens begin a word."""
        positions = tf.range(self.config.max_seq_length)
        is_text = (positions >= 1) & (positions <= lengths[:, tf.newaxis] - 2)
        # One comparison per special id: broadcasting ids against the list of special
        # ids ([B, L, 1] vs [4]) is ~20x slower on CPU (a small innermost dimension).
        special = tf.zeros_like(is_text)
        for special_id in self.special_ids.structural_ids:
            special |= tf.equal(ids, special_id)
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(is_text & special)),
            ["a segment has [PAD]/[CLS]/[SEP]/[MASK] inside its text: records must be "
             "[CLS] text [SEP] (see prepare-pretraining)"])
        with tf.control_dependencies([check]):
            # The first text token always starts a word, as in the official
            # get_word_start, which stops at the beginning of the text.
            begins_word = is_text & ((starts > 0) | tf.equal(positions, 1))
        return is_text, begins_word

    def _mask_batch(self, ids, starts, lengths, streams):
        batch = _batch_size(ids)
        with tf.name_scope("layout"):
            is_text, begins_word = self._text_and_word_starts(ids, starts, lengths)
        num_text = tf.maximum(lengths - 2, 0)
        budget = tf.cast(tf.math.ceil(tf.cast(num_text, tf.float64) * self.config.mask_rate),
                         tf.int32)
        budget = tf.minimum(budget, self.config.num_predictions)
        with tf.name_scope("choose"):
            if self.config.token_masking:
                flat_positions = self._token_positions(is_text, budget, batch, streams)
            else:
                flat_positions = self._span_positions(
                    begins_word, lengths, num_text, budget, batch, streams)
        with tf.name_scope("example"):
            masked = _MaskedTokens(flat_positions, budget, ids, batch,
                                   self.config.max_seq_length)
            return self._example(ids, lengths, masked, batch, streams)

    # ---- the masked set -------------------------------------------------------------

    def _token_positions(self, is_text, budget, batch, streams):
        """BERT: `budget` text tokens chosen uniformly without replacement.

        Returns the flat positions (row * L + position) of the masked tokens, sorted.
        """
        length, predictions = self.config.max_seq_length, self.config.num_predictions
        keys = tf.where(is_text, streams.uniform(TOKEN_KEYS_STREAM, batch, length), 2.0)
        chosen = tf.math.top_k(-keys, k=predictions, sorted=True).indices
        keep = tf.range(predictions) < budget[:, tf.newaxis]
        chosen = tf.sort(tf.where(keep, chosen, length), axis=1)  # kept ones first, sorted
        coordinates = tf.cast(tf.where(keep), tf.int32)
        return coordinates[:, 0] * length + tf.gather_nd(chosen, coordinates)

    def _span_positions(self, begins_word, lengths, num_text, budget, batch, streams):
        """Runs rounds of candidate spans until every budget is spent.

        Returns the flat positions (row * L + position) of the masked tokens, sorted.
        """
        length = self.config.max_seq_length
        words = _Words(begins_word, lengths, batch, length)
        grid = _CandidateGrid(batch, self._candidates, self.config.max_span_length, length)
        state = (tf.zeros([batch, length], tf.bool),  # words fully masked
                 tf.zeros([batch], tf.int32),          # tokens masked
                 tf.zeros([batch, length], tf.bool),  # new words of the last candidate
                 tf.zeros([batch], tf.int32),          # its first word
                 tf.zeros([batch], tf.int32))          # the tokens it may still mask

        def unfinished(round_index, *state):
            return tf.reduce_any(state[1] < budget)

        def one_round(round_index, *state):
            draws = streams.uniform(round_index, batch, 2 * self._candidates)
            return (round_index + 1,
                    *self._round(words, grid, num_text, budget, state, draws))

        # The first round almost always fills every budget, so it runs outside the loop
        # (loop iterations cost extra ops); the loop finishes the rare rest. A round
        # adds at least one token to every unfinished segment unless all of its K
        # anchors were already masked, so L rounds are more than ever needed.
        _, word_masked, _, last_words, last_first, need = tf.while_loop(
            unfinished, one_round, one_round(tf.constant(0, tf.int64), *state),
            maximum_iterations=length)
        masked_per_word = self._finish_last_candidate(
            words, grid, word_masked, last_words, last_first, need)
        return words.token_positions(masked_per_word)

    def _draw_candidates(self, words, num_text, grid, draws):
        """K (first word, end word) intervals per segment, [B, K] each, from [B, 2K] draws."""
        num_text = num_text[:, tf.newaxis]
        anchor = 1 + tf.minimum(
            tf.cast(draws[:, :grid.k] * tf.cast(num_text, tf.float32), tf.int32),
            tf.maximum(num_text - 1, 0))
        span_words = self.config.min_span_length + tf.searchsorted(
            tf.broadcast_to(tf.constant(self._length_cdf, tf.float32),
                            [grid.batch, len(self._length_cdf)]),
            draws[:, grid.k:], side="right")
        first = words.word_of(anchor)
        return first, tf.minimum(first + span_words, words.count[:, tf.newaxis])

    def _round(self, words, grid, num_text, budget, state, draws):
        """Applies K candidate spans per segment, in order, exactly as the official loop.

        A candidate is (anchor token, span length in words). It is skipped when its
        anchor is already masked; otherwise it masks its words in order, counting only
        the tokens not masked before, until the budget runs out. The candidate that
        reaches the budget is recorded and finished by `_finish_last_candidate`.
        """
        word_masked, count, last_words, last_first, need = state
        active = count < budget
        first, end = self._draw_candidates(words, num_text, grid, draws)
        usable = (active[:, tf.newaxis]
                  & tf.logical_not(tf.gather(word_masked, first, batch_dims=1)))
        accepted = _accept_candidates(first, end, usable)
        owner = grid.first_owner(first, end, accepted, word_masked)
        new_tokens = grid.sum_by_candidate(words.size, owner)
        before = count[:, tf.newaxis] + tf.cumsum(new_tokens, axis=1, exclusive=True)
        reached = before + new_tokens >= budget[:, tf.newaxis]
        finishing = active & tf.reduce_any(reached, axis=1)
        last = tf.where(finishing, tf.argmax(tf.cast(reached, tf.int32), axis=1,
                                             output_type=tf.int32), grid.k)
        last_column = last[:, tf.newaxis]
        word_masked |= owner < last_column
        last_index = tf.minimum(last_column, grid.k - 1)
        finishing_column = finishing[:, tf.newaxis]
        last_words = tf.where(finishing_column, tf.equal(owner, last_column), last_words)
        last_first = tf.where(finishing, tf.gather(first, last_index, batch_dims=1)[:, 0],
                              last_first)
        need = tf.where(finishing, budget - tf.gather(before, last_index, batch_dims=1)[:, 0],
                        need)
        count = tf.where(finishing, budget, count + tf.reduce_sum(new_tokens, axis=1))
        return word_masked, count, last_words, last_first, need

    def _finish_last_candidate(self, words, grid, word_masked, last_words, last_first, need):
        """Tokens masked per word [B, L], given the candidate that reached the budget.

        That candidate keeps its new words, left to right, while they fit, and then the
        first tokens of the next one: the budget can run out inside a word.
        """
        length = self.config.max_seq_length
        slot_word = tf.minimum(last_first[:, tf.newaxis] + grid.offsets, length - 1)
        owned = tf.gather(last_words, slot_word, batch_dims=1)
        size = tf.where(owned, tf.gather(words.size, slot_word, batch_dims=1), 0)
        take = tf.clip_by_value(
            need[:, tf.newaxis] - tf.cumsum(size, axis=1, exclusive=True), 0, size)
        whole = (take > 0) & tf.equal(take, size)
        partial = (take > 0) & (take < size)
        first_not_whole = tf.reduce_min(
            tf.where(owned & tf.logical_not(whole), slot_word, length), axis=1)
        word_masked |= last_words & (tf.range(length) < first_not_whole[:, tf.newaxis])
        cut_word = tf.reduce_max(tf.where(partial, slot_word, -1), axis=1)
        cut_size = tf.reduce_max(tf.where(partial, take, 0), axis=1)
        return (tf.where(word_masked, words.size, 0)
                + tf.where(tf.equal(tf.range(length), cut_word[:, tf.newaxis]),
                           cut_size[:, tf.newaxis], 0))

    # ---- the example --------------------------------------------------------------

    def _example(self, ids, lengths, masked, batch, streams):
        """Builds the output dict from the masked tokens."""
        config, special = self.config, self.special_ids
        length, predictions = config.max_seq_length, config.num_predictions
        # One draw per replacement unit (span, or token for token masking) and one per
        # masked token for its random replacement, indexed by rank so that a segment's
        # draws do not depend on the other segments of the batch.
        draws = tf.reshape(streams.uniform(REPLACEMENT_STREAM, batch, 2 * predictions), [-1])
        unit = masked.rank_in_row if config.token_masking else masked.span_in_row
        decision = _replacement_decision(
            tf.gather(draws, masked.row * (2 * predictions) + unit),
            config.mask_token_rate, config.random_token_rate)
        random_ids = self._random_token_ids(
            tf.gather(draws, masked.row * (2 * predictions) + predictions + masked.rank_in_row))
        replacement = tf.where(
            tf.equal(decision, REPLACE_WITH_MASK), special.mask_id,
            tf.where(tf.equal(decision, REPLACE_WITH_RANDOM), random_ids, masked.original))
        masked_ids = tf.tensor_scatter_nd_update(
            tf.reshape(ids, [-1]), masked.flat_position[:, tf.newaxis], replacement)

        example = {
            "input_ids": tf.reshape(masked_ids, [batch, length]),
            "input_mask": tf.cast(tf.range(length) < lengths[:, tf.newaxis], tf.int32),
            "segment_ids": tf.zeros([batch, length], tf.int32),
            "masked_lm_positions": _pack_rows(masked.position, masked.row, batch, predictions),
            "masked_lm_ids": _pack_rows(masked.original, masked.row, batch, predictions),
            "masked_lm_weights": tf.cast(
                tf.range(predictions) < masked.count[:, tf.newaxis], tf.float32),
        }
        with tf.name_scope("span_targets"):
            example.update(self._span_targets(masked, lengths, batch))
        return example

    def _random_token_ids(self, draws):
        """Uniform draws in [0, 1) -> ids drawn uniformly from the non-reserved vocabulary.

        The r-th allowed id is r plus the sizes of the runs of excluded ids before it.
        BERT vocabularies exclude one or two runs ([PAD], [unused*], [UNK], [CLS],
        [SEP], [MASK] are contiguous), so a comparison per run beats a table gather.
        """
        rank = tf.minimum(tf.cast(draws * self._num_random_ids, tf.int32),
                          self._num_random_ids - 1)
        if len(self._excluded_runs) > 8:
            thresholds, sizes = zip(*self._excluded_runs)
            cumulative = [sum(sizes[:i + 1]) for i in range(len(sizes))]
            index = tf.searchsorted(tf.constant(thresholds, tf.int32), rank, side="right")
            return rank + tf.gather(tf.constant([0] + cumulative, tf.int32), index)
        ids = rank
        for threshold, size in self._excluded_runs:
            ids += tf.where(rank >= threshold, size, 0)
        return ids

    def _span_targets(self, masked, lengths, batch):
        """SBO boundaries and targets of the first S merged spans.

        Every SBO target is a masked token, in (row, span, offset) order, so the targets
        are the masked tokens of the first S spans with a pair, at offsets < T, packed
        into [B * S, T] rows.
        """
        num_spans, num_targets = self.config.num_spans, self.config.max_sbo_targets
        # Official endpoints='external': no SBO pair for a span touching [CLS] or [SEP].
        has_pair = ((masked.span_rank_in_row < num_spans) & (masked.span_first >= 2)
                    & (masked.span_last <= tf.gather(lengths, masked.span_row) - 3))
        boundaries = tf.where(has_pair[:, tf.newaxis],
                              tf.stack([masked.span_first - 1, masked.span_last + 1], axis=1),
                              0)
        is_target = ((masked.offset_in_span < num_targets)
                     & tf.gather(has_pair, masked.span_index))
        keep = tf.cast(tf.where(is_target)[:, 0], tf.int32)
        target_row = tf.gather(masked.row * num_spans + masked.span_in_row, keep)

        def pack(values):
            rows = _pack_rows(values, target_row, batch * num_spans, num_targets)
            return tf.reshape(rows, [batch, num_spans, num_targets])

        return {
            "span_boundaries": _pack_rows(boundaries, masked.span_row, batch, num_spans),
            "span_target_positions": pack(tf.gather(masked.position, keep)),
            "span_target_ids": pack(tf.gather(masked.original, keep)),
            "span_target_weights": pack(tf.ones_like(keep, tf.float32)),
        }


class _Words:
    """Word layout of a batch: start position and size of every word of the text.

    `start` is [B, L + 1]: start[b, w] for the W_b words of row b, then the [SEP]
    position (the end of the text) as padding, so that start[b, w + n] is where a
    span of n words from word w ends. `size` is [B, L] tokens per word (0 as padding).
    """

    def __init__(self, begins_word, lengths, batch, length: int):
        coordinates = tf.cast(tf.where(begins_word), tf.int32)
        self.length = length
        self.count = tf.reduce_sum(tf.cast(begins_word, tf.int32), axis=1)
        start = _pack_rows(coordinates[:, 1], coordinates[:, 0], batch, length + 1,
                           default=length)
        self.start = tf.minimum(start, lengths[:, tf.newaxis] - 1)
        self.size = self.start[:, 1:] - self.start[:, :-1]

    def word_of(self, positions):
        """Index of the word containing each text position ([B, n] -> [B, n]).

        Clipped to [0, L) so that rows without text (whose budget is 0) stay in range.
        """
        return tf.clip_by_value(tf.searchsorted(self.start, positions, side="right") - 1,
                                0, self.length - 1)

    def token_positions(self, tokens_per_word):
        """Flat positions (row * L + position) of the first tokens_per_word[b, w] tokens
        of every word, sorted."""
        coordinates = tf.cast(tf.where(tokens_per_word > 0), tf.int32)
        first = coordinates[:, 0] * self.length + tf.gather_nd(self.start, coordinates)
        limit = first + tf.gather_nd(tokens_per_word, coordinates)
        return tf.raw_ops.RaggedRange(starts=first, limits=limit, deltas=1).rt_dense_values


class _CandidateGrid:
    """Index arithmetic for K candidates of up to M words in a batch of B rows of L words.

    Slot (m, k) is the m-th word of candidate k. Slots are laid out [B, M, K] with the
    longer K innermost: CPU broadcasting is slow when the innermost dimension is small.
    """

    def __init__(self, batch, candidates: int, max_words: int, length: int):
        self.batch, self.k, self.length = batch, candidates, length
        self.offsets = tf.range(max_words)[tf.newaxis]                        # [1, M]
        self.slot_offsets = tf.constant([[[m] * candidates for m in range(max_words)]])
        self.word_row_base = tf.range(batch)[:, tf.newaxis] * length          # [B, 1]
        self.candidate_row_base = tf.range(batch)[:, tf.newaxis] * candidates
        self.candidate = tf.broadcast_to(tf.range(candidates),
                                         [batch, max_words, candidates])

    def first_owner(self, first, end, accepted, word_masked):
        """[B, L] per word: the first accepted candidate covering it, if not masked before.

        Words no candidate newly covers get NO_CANDIDATE.
        """
        first = first + self.word_row_base
        words = first[:, tf.newaxis] + self.slot_offsets
        covers = (words < (end + self.word_row_base)[:, tf.newaxis]) & accepted[:, tf.newaxis]
        segments = tf.where(covers, words, self.batch * self.length)
        owner = tf.math.unsorted_segment_min(self.candidate, segments,
                                             self.batch * self.length + 1)
        owner = tf.reshape(owner[:-1], [self.batch, self.length])
        return tf.where(word_masked, NO_CANDIDATE, owner)

    def sum_by_candidate(self, values, owner):
        """Sums [B, L] values by owner (a candidate index < K, else ignored) -> [B, K]."""
        segments = tf.where(owner < self.k, self.candidate_row_base + owner,
                            self.batch * self.k)
        totals = tf.math.unsorted_segment_sum(values, segments, self.batch * self.k + 1)
        return tf.reshape(totals[:-1], [self.batch, self.k])


class _MaskedTokens:
    """The masked tokens of a batch as flat vectors, row-major with positions ascending.

    Merged spans are the maximal runs of consecutive masked positions in a row, as the
    official `merge_intervals` makes them ([CLS]/[SEP] are never masked, so a run
    never crosses rows).

    Per masked token: `flat_position` (row * L + position), `row`, `position`,
    `original` id, `rank_in_row`, `span_index` (over the batch), `span_in_row` and
    `offset_in_span`. Per merged span: `span_row`, `span_first`, `span_last` and
    `span_rank_in_row`.
    """

    def __init__(self, flat_position, count, ids, batch, length: int):
        self.flat_position = flat_position
        self.count = count
        self.row = flat_position // length
        self.position = flat_position - self.row * length
        self.original = tf.gather(tf.reshape(ids, [-1]), flat_position)
        index = tf.range(tf.shape(flat_position)[0])
        self.rank_in_row = index - tf.gather(tf.cumsum(count, exclusive=True), self.row)

        previous = tf.concat([[-2], flat_position[:-1]], axis=0)
        following = tf.concat([flat_position[1:], [-2]], axis=0)
        begins = tf.not_equal(flat_position, previous + 1)
        ends = tf.not_equal(flat_position, following - 1)
        self.span_index = tf.cumsum(tf.cast(begins, tf.int32)) - 1
        first_token = tf.cast(tf.where(begins)[:, 0], tf.int32)
        self.span_row = tf.gather(self.row, first_token)
        self.span_first = tf.gather(self.position, first_token)
        self.span_last = tf.boolean_mask(self.position, ends)
        spans_per_row = tf.math.unsorted_segment_sum(
            tf.ones_like(self.span_row), self.span_row, batch)
        self.span_rank_in_row = tf.range(tf.shape(first_token)[0]) - tf.gather(
            tf.cumsum(spans_per_row, exclusive=True), self.span_row)
        self.span_in_row = tf.gather(self.span_rank_in_row, self.span_index)
        self.offset_in_span = self.position - tf.gather(self.span_first, self.span_index)


class _ExampleStreams:
    """Counter-based random streams, one per (use, example), for a batch of examples.

    Row b of a batch is example `first_example + b` of the input stream. Its n draws for
    a use are the Philox outputs at counters (first_example + b) * n / 4 onwards (Philox
    yields 4 values per counter) under a key derived from (seed, use). One op draws
    the whole batch, yet a row's draws depend only on the seed, the use and its example
    index: not on the batch size, its place in the batch or the other rows.
    """

    def __init__(self, seed, first_example):
        self.seed = tf.cast(seed, tf.int64)
        self.first_example = tf.cast(first_example, tf.uint64)

    def uniform(self, use, batch, count: int) -> tf.Tensor:
        """[batch, count] float32 draws in [0, 1)."""
        width = -(-count // 4) * 4
        key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(
            seed=tf.random.experimental.stateless_fold_in(self.seed, tf.cast(use, tf.int64)))
        counter = tf.stack([self.first_example * (width // 4), counter[1]])
        draws = tf.raw_ops.StatelessRandomUniformV2(
            shape=tf.stack([batch, width]), key=key, counter=counter,
            alg=tf.random.Algorithm.PHILOX.value, dtype=tf.float32)
        return draws[:, :count] if width != count else draws


def _pack_rows(values, row_ids, num_rows, width, default=0):
    """Packs values grouped by ascending row id into [num_rows, width], padded.

    A row's values fill it left to right; values beyond `width` are dropped. This is
    RaggedTensor.to_tensor on a value_rowids partition, without building row splits.
    """
    shape = tf.concat([tf.stack([num_rows, width]), tf.shape(values)[1:]], axis=0)
    return tf.raw_ops.RaggedTensorToTensor(
        shape=shape, values=values,
        default_value=tf.constant(default, values.dtype),
        row_partition_tensors=[tf.convert_to_tensor(num_rows, tf.int32), row_ids],
        row_partition_types=["FIRST_DIM_SIZE", "VALUE_ROWIDS"])


def _accept_candidates(first, end, usable):
    """Candidate k is accepted iff no earlier accepted candidate's words hold its anchor.

    The relation only looks backwards, so iterating it from "all usable" reaches the
    sequential answer; the iterations needed are the longest chain of candidates whose
    acceptance hinges on one another (usually 2 or 3). Candidates are [B, K] word
    intervals [first, end).
    """
    k = first.shape[1]
    words_covered = tf.where(usable, end - first, 0)
    # [b, k, j] = w_k - w_j. Tiling and broadcasting one side is about twice as fast on
    # CPU as broadcasting both sides.
    distance = tf.tile(first[:, :, tf.newaxis], [1, 1, k]) - first[:, tf.newaxis, :]
    # w_j <= w_k < w_j + n_j, with one unsigned comparison.
    inside = (tf.cast(distance, tf.uint32)
              < tf.cast(words_covered, tf.uint32)[:, tf.newaxis, :])
    earlier = tf.range(k)[tf.newaxis, :] < tf.range(k)[:, tf.newaxis]  # [k, j]: j < k
    blocks = tf.cast(inside & earlier, tf.float32)

    def unsettled(accepted, changed):
        return changed

    def settle(accepted, changed):
        blocked = tf.linalg.matvec(blocks, tf.cast(accepted, tf.float32)) > 0.5
        updated = usable & tf.logical_not(blocked)
        return updated, tf.reduce_any(tf.not_equal(updated, accepted))

    # Two iterations settle most rounds; the loop only checks (and rarely continues).
    accepted, _ = tf.while_loop(unsettled, settle, settle(*settle(usable, True)),
                                maximum_iterations=k + 1)
    return accepted


def _rank_shifts(excluded: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive excluded ids as (allowed ids before the run, run size)."""
    runs: list[tuple[int, int]] = []
    for position, token_id in enumerate(excluded):
        allowed_before = token_id - position
        if runs and runs[-1][0] == allowed_before:
            runs[-1] = (allowed_before, runs[-1][1] + 1)
        else:
            runs.append((allowed_before, 1))
    return runs


def _replacement_decision(draws, mask_token_rate, random_token_rate):
    return tf.where(draws < mask_token_rate, REPLACE_WITH_MASK,
                    tf.where(draws < mask_token_rate + random_token_rate,
                             REPLACE_WITH_RANDOM, KEEP_ORIGINAL))


def _batch_size(tensor):
    """The static batch size if known (lets shapes fold into constants), else a tensor."""
    return tensor.shape[0] if tensor.shape[0] is not None else tf.shape(tensor)[0]


def _as_row(tensor):
    """One unbatched segment -> a batch of one (ragged, so its length is the row length)."""
    if isinstance(tensor, tf.RaggedTensor):
        return tensor[tf.newaxis]
    return tf.RaggedTensor.from_tensor(tf.convert_to_tensor(tensor)[tf.newaxis])


def _rank(tensor) -> int:
    if isinstance(tensor, tf.RaggedTensor):
        return tensor.shape.rank
    return tf.convert_to_tensor(tensor).shape.rank
