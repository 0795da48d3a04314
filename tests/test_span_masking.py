"""Span masking: config, special ids, the example contract, and faithfulness on real text.

The statistical tests mask more than 20,000 segments of the bundled corpus at length
512 (about 2,000 segments, several epochs of masks) with fixed seeds, and compare with
the official-style per-example reference (`benchmarks/official_masking.py`) on the
same segments.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from benchmarks.official_masking import fixed_shape_example, official_style_mask
from pipelines.pretraining_dataset import make_pretraining_dataset
from pipelines.span_masking import SpanMasker, SpanMaskingConfig, SpecialTokenIds
from tests.corpus_helpers import minilm_vocab
from tests.masking_data import continuation_flags, real_segments, shard_pattern
from tests.masking_stats import MaskingStatistics

SPECIAL = SpecialTokenIds(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=100,
                          reserved_ids=(4, 5))
SEED = tf.constant([7, 11], tf.int64)
STATISTICAL_SEGMENTS = 20_000


# ---------------------------------------------------------------- config

def test_config_defaults_are_the_official_recipe():
    config = SpanMaskingConfig()
    assert config.num_predictions == 77 == math.ceil(0.15 * 512)
    assert config.num_spans == 77 and config.max_sbo_targets == 15
    probabilities = config.span_length_probabilities
    assert len(probabilities) == 10 and sum(probabilities) == pytest.approx(1.0)
    assert probabilities[1] / probabilities[0] == pytest.approx(0.8)
    assert config.mean_span_length == pytest.approx(3.797, abs=1e-3)


def test_config_json_round_trip_and_file(tmp_path):
    config = SpanMaskingConfig(max_seq_length=128, geometric_p=0.3, max_predictions=20,
                               max_spans=12, token_masking=True)
    assert SpanMaskingConfig.from_json(config.to_json()) == config
    path = tmp_path / "masking.json"
    config.save(path)
    assert SpanMaskingConfig.load(path) == config
    assert config.replace(mask_rate=0.2).mask_rate == 0.2


@pytest.mark.parametrize("changes, message", [
    (dict(mask_rate=0.0), "mask_rate"),
    (dict(geometric_p=1.5), "geometric_p"),
    (dict(min_span_length=4, max_span_length=3), "min_span_length"),
    (dict(mask_token_rate=0.8, random_token_rate=0.3), "<= 1"),
    (dict(max_sbo_targets=0), "max_sbo_targets"),
    (dict(max_seq_length=64, max_predictions=65), "must not exceed"),
    (dict(token_masking=1), "bool"),
])
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        SpanMaskingConfig(**changes)


def test_config_rejects_unknown_fields_and_bad_json(tmp_path):
    with pytest.raises(ValueError, match="Unknown SpanMaskingConfig field"):
        SpanMaskingConfig.from_dict({"mask_ratio": 0.15})
    with pytest.raises(ValueError, match="not valid"):
        SpanMaskingConfig.from_json("{")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        SpanMaskingConfig.load(tmp_path / "missing.json")


# ---------------------------------------------------------------- special ids

def test_special_ids_from_the_real_vocab():
    special = SpecialTokenIds.from_vocab(minilm_vocab())
    assert (special.pad_id, special.cls_id, special.sep_id, special.mask_id) == (0, 101, 102, 103)
    assert special.vocab_size == 30522
    random_ids = special.random_token_ids()
    assert 100 not in random_ids and 1 not in random_ids  # [UNK], [unused0]
    assert random_ids[0] == 999 and len(random_ids) == 30522 - 999


def test_special_ids_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        SpecialTokenIds.from_vocab(tmp_path / "nowhere.txt")
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        SpecialTokenIds.from_vocab(["[PAD]", "[CLS]", "[SEP]", "a"])
    with pytest.raises(ValueError, match="distinct"):
        SpecialTokenIds(pad_id=0, cls_id=0, sep_id=2, mask_id=3, vocab_size=10)


@pytest.mark.parametrize("reserved", [(4, 5), tuple(range(6, 60, 2))])  # 1 run, 27 runs
def test_random_replacements_are_uniform_over_allowed_ids(reserved):
    special = SpecialTokenIds(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=100,
                              reserved_ids=reserved)
    masker = SpanMasker(SpanMaskingConfig(max_seq_length=16), special)
    allowed = np.array(special.random_token_ids())
    draws = (np.arange(len(allowed)) + 0.5) / len(allowed)
    ids = masker._random_token_ids(tf.constant(draws, tf.float32)).numpy()
    np.testing.assert_array_equal(ids, allowed)


# ---------------------------------------------------------------- the example contract

def toy_batch(lengths=(16, 9, 3, 2), length=16, seed=0):
    """Ragged [CLS] text [SEP] rows with words of 1-3 pieces (ids >= 6)."""
    rng = np.random.default_rng(seed)
    ids, starts = [], []
    for n in lengths:
        text = rng.integers(6, 100, max(n - 2, 0)).tolist()
        begins = [1] + [int(rng.random() < 0.6) for _ in text[1:]] if text else []
        ids.append([SPECIAL.cls_id] + text + [SPECIAL.sep_id] if n >= 2 else [])
        starts.append([0] + begins + [0] if n >= 2 else [])
    return (tf.ragged.constant(ids, dtype=tf.int32, row_splits_dtype=tf.int64),
            tf.ragged.constant(starts, dtype=tf.int32, row_splits_dtype=tf.int64))


def check_contract(example, ids, starts, config):
    """The invariants every example must satisfy (DESIGN.md section 4 + pretrainer)."""
    ids, starts = ids.to_list(), starts.to_list()
    for row, (tokens, begins) in enumerate(zip(ids, starts)):
        n = len(tokens)
        weights = example["masked_lm_weights"][row].numpy() > 0
        positions = example["masked_lm_positions"][row].numpy()[weights]
        budget = min(math.ceil(config.mask_rate * max(n - 2, 0)), config.num_predictions)
        assert len(positions) == budget
        assert np.all(np.diff(positions) > 0) and np.all((positions >= 1) & (positions <= n - 2))
        np.testing.assert_array_equal(example["masked_lm_ids"][row].numpy()[weights],
                                      np.array(tokens)[positions].reshape(-1))
        assert np.all(example["masked_lm_positions"][row].numpy()[~weights] == 0)
        unmasked = np.setdiff1d(np.arange(n), positions)
        np.testing.assert_array_equal(example["input_ids"][row].numpy()[unmasked],
                                      np.array(tokens)[unmasked].reshape(-1))
        np.testing.assert_array_equal(example["input_mask"][row].numpy(),
                                      np.arange(config.max_seq_length) < n)
        target_weights = example["span_target_weights"][row].numpy() > 0
        assert target_weights.sum() <= weights.sum()
        for slot in np.nonzero(target_weights[:, 0])[0]:
            targets = example["span_target_positions"][row, slot].numpy()[target_weights[slot]]
            np.testing.assert_array_equal(targets, targets[0] + np.arange(len(targets)))
            assert set(targets) <= set(positions)
            left, right = example["span_boundaries"][row, slot].numpy()
            assert left == targets[0] - 1 and 1 <= left and right <= n - 2
            assert left not in positions and right not in positions
        assert np.all(example["span_target_weights"][row].numpy()[~target_weights] == 0)
        assert np.all(example["span_target_positions"][row].numpy()[~target_weights] == 0)


@pytest.mark.parametrize("token_masking", [False, True])
def test_example_layout_and_contract(token_masking):
    config = SpanMaskingConfig(max_seq_length=16, token_masking=token_masking)
    ids, starts = toy_batch()
    example = SpanMasker(config, SPECIAL)(ids, starts, SEED)
    shapes = {"input_ids": [4, 16], "input_mask": [4, 16], "segment_ids": [4, 16],
              "masked_lm_positions": [4, 3], "masked_lm_ids": [4, 3],
              "masked_lm_weights": [4, 3], "span_boundaries": [4, 3, 2],
              "span_target_positions": [4, 3, 15], "span_target_ids": [4, 3, 15],
              "span_target_weights": [4, 3, 15]}
    assert {name: value.shape.as_list() for name, value in example.items()} == shapes
    for name, value in example.items():
        assert value.dtype == (tf.float32 if name.endswith("weights") else tf.int32), name
    check_contract(example, ids, starts, config)


def test_a_batch_without_text_masks_nothing():
    config = SpanMaskingConfig(max_seq_length=8)
    ids = tf.ragged.constant([[1, 2], [1, 2]])
    example = SpanMasker(config, SPECIAL)(ids, tf.zeros_like(ids), SEED)
    assert example["masked_lm_weights"].numpy().sum() == 0
    assert example["span_target_weights"].numpy().sum() == 0
    np.testing.assert_array_equal(example["input_ids"].numpy()[:, :3], [[1, 2, 0], [1, 2, 0]])


def test_dense_unbatched_and_ragged_inputs_agree():
    config = SpanMaskingConfig(max_seq_length=20)
    masker = SpanMasker(config, SPECIAL)
    ids, starts = toy_batch(lengths=(16, 12), length=20)
    ragged = masker(ids, starts, SEED, first_example=5)
    dense = masker(ids.to_tensor(), starts.to_tensor(), SEED, first_example=5)
    single = masker(ids[1], starts[1], SEED, first_example=6)
    for name in ragged:
        np.testing.assert_array_equal(ragged[name].numpy(), dense[name].numpy())
        np.testing.assert_array_equal(ragged[name][1].numpy(), single[name].numpy())


def test_masks_depend_on_seed_and_example_index_only():
    config = SpanMaskingConfig(max_seq_length=16)
    masker = SpanMasker(config, SPECIAL)
    ids, starts = toy_batch(lengths=(16,) * 8, seed=3)
    batch = masker(ids, starts, SEED, first_example=40)
    again = masker(ids, starts, SEED, first_example=40)
    middle = masker(ids[2:6], starts[2:6], SEED, first_example=42)
    other_seed = masker(ids, starts, tf.constant([8, 11], tf.int64), first_example=40)
    later = masker(ids, starts, SEED, first_example=48)
    for name in batch:
        np.testing.assert_array_equal(batch[name].numpy(), again[name].numpy())
        np.testing.assert_array_equal(batch[name][2:6].numpy(), middle[name].numpy())
    positions = batch["masked_lm_positions"].numpy()
    assert not np.array_equal(positions, other_seed["masked_lm_positions"].numpy())
    assert not np.array_equal(positions, later["masked_lm_positions"].numpy())


def test_bad_segments_are_errors():
    masker = SpanMasker(SpanMaskingConfig(max_seq_length=8), SPECIAL)
    ids, starts = toy_batch(lengths=(9,), length=9)
    with pytest.raises(tf.errors.InvalidArgumentError, match="longer than max_seq_length=8"):
        masker(ids, starts, SEED)
    ids, starts = toy_batch(lengths=(8,), length=8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="different lengths"):
        masker(ids, starts[:, :-1], SEED)
    inside = tf.ragged.constant([[1, 9, 2, 9, 2]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="inside its text"):
        masker(inside, tf.ragged.constant([[0, 1, 0, 1, 0]]), SEED)
    with pytest.raises(ValueError, match="more than max_seq_length"):
        masker(tf.ones([1, 9], tf.int32), tf.ones([1, 9], tf.int32), SEED)


def test_token_masking_ignores_word_boundaries_and_replaces_per_token():
    """BERT ablation: masked pieces are uniform over the text, `##` pieces included."""
    config = SpanMaskingConfig(max_seq_length=64, token_masking=True)
    rng = np.random.default_rng(1)
    rows = 256
    ids = np.concatenate([np.full((rows, 1), 1), rng.integers(6, 100, (rows, 62)),
                          np.full((rows, 1), 2)], axis=1)
    starts = np.zeros_like(ids)
    starts[:, 1::2] = 1  # every other piece is a `##` continuation
    example = SpanMasker(config, SPECIAL)(tf.constant(ids), tf.constant(starts), SEED)
    positions = example["masked_lm_positions"].numpy()
    assert np.all(example["masked_lm_weights"].numpy().sum(axis=1) == math.ceil(0.15 * 62))
    continuation_share = np.mean(positions % 2 == 0)
    assert 0.45 < continuation_share < 0.55
    replaced = np.take_along_axis(example["input_ids"].numpy(), positions, axis=1)
    share_mask = np.mean(replaced == SPECIAL.mask_id)
    assert abs(share_mask - 0.8) < 0.02


# ---------------------------------------------------------------- real text, 512 tokens

@pytest.fixture(scope="module")
def vocab():
    return minilm_vocab()


@pytest.fixture(scope="module")
def special(vocab):
    return SpecialTokenIds.from_vocab(vocab)


@pytest.fixture(scope="module")
def continuation(vocab):
    return continuation_flags(vocab)


def statistics_of(batches, continuation, special) -> MaskingStatistics:
    statistics = MaskingStatistics()
    for batch in batches:
        statistics.add(batch, continuation, special.mask_id, list(special.structural_ids))
    return statistics


@pytest.fixture(scope="module")
def ours(continuation, special):
    """>= 20,000 masked segments of real text through the real input pipeline."""
    batch_size = 128
    dataset = make_pretraining_dataset(shard_pattern(), SpanMaskingConfig(), special,
                                       batch_size=batch_size, seed=2024, shuffle_buffer=1000)
    batches = dataset.take(math.ceil(STATISTICAL_SEGMENTS / batch_size)).as_numpy_iterator()
    return statistics_of(batches, continuation, special)


@pytest.fixture(scope="module")
def reference(continuation, special):
    """The official-style per-example masking, once over every real segment."""
    rng = np.random.RandomState(2024)
    random_ids = np.array(special.random_token_ids())
    config = SpanMaskingConfig()
    examples = []
    for ids, starts in real_segments():
        masked = official_style_mask(ids, starts, rng, special.mask_id, random_ids)
        examples.append(fixed_shape_example(masked, ids, 512, config.num_predictions,
                                            config.num_spans, config.max_sbo_targets))
    batches = [{name: np.stack([e[name] for e in examples[i:i + 256]]) for name in examples[0]}
               for i in range(0, len(examples), 256)]
    return statistics_of(batches, continuation, special)


def test_real_text_acceptance_bands(ours):
    assert ours.segments >= STATISTICAL_SEGMENTS
    assert 3.65 <= ours.mean_span_words <= 3.95
    assert 0.145 <= ours.masked_fraction <= 0.155
    assert ours.fraction(ours.replaced_with_mask) == pytest.approx(0.8, abs=0.02)
    assert ours.fraction(ours.replaced_with_random) == pytest.approx(0.1, abs=0.02)
    assert ours.fraction(ours.kept) == pytest.approx(0.1, abs=0.02)


def test_real_text_spans_follow_word_boundaries(ours):
    assert ours.starts_inside_word == 0
    assert ours.special_tokens_masked == 0
    # The official loop stops mid-word when the budget runs out: at most once per
    # segment (the last span), about 9% of segments with this vocabulary.
    assert ours.segments_with_two_cuts == 0
    assert ours.ends_inside_word / ours.segments < 0.15


def test_real_text_sbo_targets_are_consistent(ours):
    assert ours.sbo_violations == []
    assert 0.97 < ours.fraction(ours.spans_with_sbo) < 1.0


def test_real_text_matches_the_official_style_reference(ours, reference):
    """Same segments, independent draws: every statistic agrees within 4.5 standard errors."""
    for name, attribute in [("span_words", "mean_span_words"),
                            ("span_tokens", "mean_span_tokens"),
                            ("spans_per_segment", "mean_spans_per_segment")]:
        error = math.hypot(ours.standard_error(name), reference.standard_error(name))
        assert abs(getattr(ours, attribute) - getattr(reference, attribute)) < 4.5 * error, name
    for count in ("spans_with_sbo", "ends_inside_word"):
        p_ours = getattr(ours, count) / (ours.spans if count == "spans_with_sbo" else ours.segments)
        p_ref = getattr(reference, count) / (
            reference.spans if count == "spans_with_sbo" else reference.segments)
        n_ours = ours.spans if count == "spans_with_sbo" else ours.segments
        n_ref = reference.spans if count == "spans_with_sbo" else reference.segments
        error = math.sqrt(p_ref * (1 - p_ref) * (1 / n_ours + 1 / n_ref))
        assert abs(p_ours - p_ref) < 4.5 * error, count
    assert abs(ours.masked_fraction - reference.masked_fraction) < 5e-4
    assert reference.sbo_violations == [] and reference.starts_inside_word == 0
