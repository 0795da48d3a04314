import json

import pytest

from spanbert_tf import SpanBertConfig


def test_presets_match_the_paper():
    base = SpanBertConfig.preset("base")
    assert (base.hidden_size, base.num_layers, base.num_heads, base.intermediate_size) == (
        768, 12, 12, 3072)
    large = SpanBertConfig.preset("large")
    assert (large.hidden_size, large.num_layers, large.num_heads, large.intermediate_size) == (
        1024, 24, 16, 4096)
    for config in (base, large):
        assert config.vocab_size == 28996
        assert config.max_position_embeddings == 512
        assert config.type_vocab_size == 2
        assert config.layer_norm_epsilon == 1e-12
        assert config.hidden_dropout == config.attention_dropout == 0.1
        assert config.initializer_range == 0.02
        assert (config.sbo_position_size, config.sbo_max_targets, config.sbo_weight) == (
            200, 15, 1.0)
    assert SpanBertConfig.preset("tiny").num_layers == 2


def test_json_round_trip(tmp_path):
    config = SpanBertConfig.preset("tiny", vocab_size=123, hidden_dropout=0.0)
    assert SpanBertConfig.from_json(config.to_json()) == config
    path = tmp_path / "config.json"
    config.save(path)
    assert SpanBertConfig.load(path) == config
    assert json.loads(path.read_text())["vocab_size"] == 123


def test_load_accepts_preset_names():
    assert SpanBertConfig.load("base") == SpanBertConfig.preset("base")


@pytest.mark.parametrize("values, message", [
    ({"hidden_size": 100, "num_heads": 12}, "divisible by num_heads"),
    ({"num_layers": 0}, "num_layers must be a positive integer"),
    ({"hidden_dropout": 1.5}, "hidden_dropout must be in"),
    ({"hidden_act": "swish"}, "hidden_act 'swish' is not supported"),
    ({"pad_token_id": 50, "vocab_size": 10}, "pad_token_id"),
])
def test_inconsistent_fields_are_rejected(values, message):
    with pytest.raises(ValueError, match=message):
        SpanBertConfig(**values)


def test_unknown_fields_are_named():
    with pytest.raises(ValueError, match=r"Unknown SpanBertConfig field\(s\) \['hiden_size'\]"):
        SpanBertConfig.from_dict({"hiden_size": 768})
    with pytest.raises(ValueError, match="Unknown SpanBERT preset 'huge'"):
        SpanBertConfig.preset("huge")


def test_bad_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        SpanBertConfig.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: SpanBertConfig JSON is not valid"):
        SpanBertConfig.load(bad)
