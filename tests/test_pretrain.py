"""`spanbert-tf pretrain` in process: strategies, artifacts, initialisation, NaN stop,
bad input.

The data are two TFRecord shards prepared from a WikiText excerpt of data/corpus with a
2,000-token vocabulary learned on it (tests/pretrain_data.py); the model is the tiny
preset with one layer and no dropout, at sequence length 64.
"""

from __future__ import annotations

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.pretrain import PretrainingOptions, run_pretraining
from spanbert_tf import SpanBertConfig, SpanBertPretrainer, cli
from spanbert_tf.checkpoints import load_pretrainer, save_checkpoint
from tests.pretrain_data import make_pretraining_data, vocab_size_of, write_tiny_config

GLOBAL_BATCH = 8
STEPS = 8
PEAK_LR = 5e-3


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_pretraining_data(str(tmp_path_factory.mktemp("pretraining-data")))


@pytest.fixture(scope="module")
def config_file(shards, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    return write_tiny_config(str(path), vocab_size_of(shards))


def options(shards, config_file, model_dir, **changes) -> PretrainingOptions:
    values = dict(data=shards, model_dir=str(model_dir), config=config_file,
                  train_steps=STEPS, global_batch_size=GLOBAL_BATCH, learning_rate=PEAK_LR,
                  warmup_steps=1, save_every=2, keep_checkpoints=2, log_every=1,
                  shuffle_buffer=64, seed=7, progress=False)
    values.update(changes)
    return PretrainingOptions(**values)


@pytest.fixture(scope="module")
def single_run(shards, config_file, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("single")
    return run_pretraining(options(shards, config_file, model_dir)), str(model_dir)


@pytest.fixture(scope="module")
def mirrored_run(shards, config_file, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("mirrored")
    return run_pretraining(options(shards, config_file, model_dir, cpu_replicas=2)), str(model_dir)


def test_mirrored_two_replicas_matches_single_device(single_run, mirrored_run):
    """Same seed, same global batch: each replica gets half of the same examples.

    Dropout is 0 in the config: with dropout, the replicas draw different masks and the
    runs would differ by design. What remains is the loss reduction: one device averages
    over all masked tokens of the batch, two replicas average their own halves' means.
    Measured: at most 1.8e-3 relative difference over the 8 steps (1.1e-4 at step 1, same
    weights and examples), where the same run with another shuffle buffer (same initial
    weights, other batches) differs by up to 1.8e-2 and another seed by up to 2.7e-2.
    """
    single, _ = single_run
    mirrored, _ = mirrored_run
    assert single.status == mirrored.status == "completed"
    single_losses = [row["loss"] for row in single.history]
    mirrored_losses = [row["loss"] for row in mirrored.history]
    assert len(single_losses) == len(mirrored_losses) == STEPS
    print("single", single_losses, "mirrored", mirrored_losses)
    np.testing.assert_allclose(mirrored_losses, single_losses, rtol=4e-3)
    # The runs learn: the loss after warm-up is below the first step's.
    assert single_losses[-1] < single_losses[0]


def test_run_writes_metrics_tensorboard_checkpoints_and_final_model(single_run):
    result, model_dir = single_run
    assert (result.start_step, result.final_step) == (0, STEPS)
    assert result.examples_seen == STEPS * GLOBAL_BATCH

    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
    for name in ("loss", "mlm_loss", "sbo_loss", "mlm_accuracy", "sbo_accuracy",
                 "learning_rate"):
        assert all(np.isfinite(row[name]) for row in rows), name
    assert all(row["tokens_per_second"] == pytest.approx(64 * row["examples_per_second"])
               for row in rows[1:])
    # One warm-up step to the peak, then linear decay to 0 at the last step.
    expected_lr = [PEAK_LR * (STEPS - step) / (STEPS - 1) for step in range(1, STEPS + 1)]
    assert [row["learning_rate"] for row in rows] == pytest.approx(expected_lr)

    tags = set()
    for event_file in glob.glob(os.path.join(model_dir, "logs", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            tags.update(value.tag for value in event.summary.value)
    assert {"loss", "mlm_accuracy", "sbo_accuracy", "learning_rate",
            "examples_per_second", "tokens_per_second"} <= tags

    kept = sorted(os.path.basename(p) for p in glob.glob(
        os.path.join(model_dir, "checkpoints", "ckpt-*.index")))
    assert kept == ["ckpt-6.index", "ckpt-8.index"]  # save_every 2, keep 2

    final = os.path.join(model_dir, "final")
    restored, report = load_pretrainer(final)
    assert report.fresh == []
    assert os.path.isfile(os.path.join(final, "vocab.txt"))
    for expected, got in zip(result.model.weights, restored.weights):
        np.testing.assert_array_equal(expected.numpy(), got.numpy())
    from_keras = keras.saving.load_model(os.path.join(final, "pretrainer.keras"))
    assert isinstance(from_keras, SpanBertPretrainer)
    np.testing.assert_array_equal(from_keras.encoder.token_embedding.embeddings.numpy(),
                                  restored.encoder.token_embedding.embeddings.numpy())


def test_initialises_from_a_checkpoint_with_both_heads(shards, config_file, tmp_path):
    """Also runs the mirrored path with 2 steps per execution and mixed_float16."""
    config = SpanBertConfig.load(config_file)
    keras.utils.set_random_seed(123)
    source = SpanBertPretrainer(config)
    save_checkpoint(tmp_path / "init", source)
    # Learning rate 0: the steps change nothing, so the trained model must hold the
    # checkpoint's weights exactly, heads included (a fresh head would differ).
    result = run_pretraining(options(shards, None, tmp_path / "run", train_steps=2,
                                     learning_rate=0.0, warmup_steps=0, cpu_replicas=2,
                                     steps_per_execution=2, precision="mixed_float16",
                                     init_checkpoint=str(tmp_path / "init")))
    assert (result.status, result.final_step) == ("completed", 2)
    assert result.model.distribute_strategy.num_replicas_in_sync == 2
    assert result.model.encoder.compute_dtype == "float16"
    assert keras.mixed_precision.dtype_policy().name == "float32"  # restored afterwards
    for expected, got in zip(source.weights, result.model.weights):
        np.testing.assert_array_equal(expected.numpy(), got.numpy(), err_msg=expected.path)


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(shards, config_file,
                                                                   tmp_path, capsys):
    # Warm-up to a learning rate of 1e30: step 1 trains with lr 0, step 2 with 1e29 and
    # the loss of step 3 is NaN.
    result = run_pretraining(options(shards, config_file, tmp_path, train_steps=10,
                                     learning_rate=1e30, warmup_steps=10, clip_norm=0.0,
                                     save_every=1, keep_checkpoints=5))
    out = capsys.readouterr().out
    assert result.status == "nan" and result.exit_code == 1
    steps = sorted(int(p.rsplit("-", 1)[1].split(".")[0]) for p in glob.glob(
        os.path.join(tmp_path, "checkpoints", "ckpt-*.index")))
    assert steps and steps[-1] < result.final_step
    last_good = os.path.join(tmp_path, "checkpoints", f"ckpt-{steps[-1]}")
    assert tf.train.latest_checkpoint(os.path.join(tmp_path, "checkpoints")) == last_good
    assert f"the last good checkpoint, {last_good} (step {steps[-1]}), is kept" in out
    reader = tf.train.load_checkpoint(last_good)
    weights = [name for name, dtype in reader.get_variable_to_dtype_map().items()
               if name.startswith("model/") and dtype.is_floating]
    assert weights
    for name in weights:
        assert np.all(np.isfinite(reader.get_tensor(name))), name
    assert result.export_dir is None and not os.path.exists(os.path.join(tmp_path, "final"))


# ---------------------------------------------------------------- bad input

def run_cli(capsys, *args) -> tuple[int, str]:
    code = cli.main(["pretrain", "--no-progress", *args])
    return code, capsys.readouterr().err


def common_args(shards, model_dir, *extra):
    return ["--data", shards, "--model-dir", str(model_dir), "--train-steps", "2",
            "--global-batch-size", "4", *extra]


def assert_nothing_trained(model_dir):
    assert not os.path.exists(os.path.join(model_dir, "checkpoints"))


def test_missing_data_path_is_a_clear_error(tmp_path, capsys, config_file):
    code, err = run_cli(capsys, *common_args(str(tmp_path / "nowhere"), tmp_path / "run",
                                             "--config", config_file))
    assert code == 1
    assert f"{tmp_path / 'nowhere'}: no such data file or directory" in err
    assert_nothing_trained(tmp_path / "run")


def test_empty_shard_set_is_a_clear_error(tmp_path, capsys, shards, config_file):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli(capsys, *common_args(str(empty), tmp_path / "run", "--config",
                                             config_file, "--vocab",
                                             os.path.join(os.path.dirname(shards), "vocab.txt")))
    assert code == 1 and "no TFRecord shards in this directory" in err
    (empty / "train-00000-of-00001.tfrecord").write_bytes(b"")
    code, err = run_cli(capsys, *common_args(str(empty), tmp_path / "run", "--config",
                                             config_file, "--vocab",
                                             os.path.join(os.path.dirname(shards), "vocab.txt")))
    assert code == 1 and "the shard set is empty" in err
    assert_nothing_trained(tmp_path / "run")


def test_config_checkpoint_mismatch_is_a_clear_error(tmp_path, capsys, shards, config_file):
    config = SpanBertConfig.load(config_file)
    save_checkpoint(tmp_path / "init", SpanBertPretrainer(config.replace(hidden_size=32)))
    code, err = run_cli(capsys, *common_args(shards, tmp_path / "run", "--config", config_file,
                                             "--init-checkpoint", str(tmp_path / "init")))
    assert code == 1
    assert "--config does not match the initial checkpoint" in err
    assert "hidden_size: 64 vs 32" in err
    assert_nothing_trained(tmp_path / "run")


def test_batch_not_divisible_by_replicas_is_a_clear_error(tmp_path, capsys, shards,
                                                         config_file):
    args = common_args(shards, tmp_path / "run", "--config", config_file, "--cpu-replicas", "2")
    args[args.index("--global-batch-size") + 1] = "5"
    code, err = run_cli(capsys, *args)
    assert code == 1
    assert "global batch size 5 is not divisible by the 2 replicas" in err
    assert_nothing_trained(tmp_path / "run")


def test_xla_with_several_replicas_is_a_clear_error(tmp_path, capsys, shards, config_file):
    code, err = run_cli(capsys, *common_args(shards, tmp_path / "run", "--config", config_file,
                                             "--cpu-replicas", "2", "--xla"))
    assert code == 1 and "--xla needs a single replica; MirroredStrategy has 2" in err
    assert_nothing_trained(tmp_path / "run")


def test_resuming_with_another_model_is_a_clear_error(tmp_path, capsys, shards, config_file,
                                                      single_run):
    _, trained_dir = single_run
    other = write_tiny_config(str(tmp_path / "wide.json"), vocab_size_of(shards),
                              intermediate_size=256)
    before = sorted(os.listdir(os.path.join(trained_dir, "checkpoints")))
    code, err = run_cli(capsys, *common_args(shards, trained_dir, "--config", other))
    assert code == 1
    assert "holds a run of another model" in err and "intermediate_size: 256 vs 128" in err
    assert sorted(os.listdir(os.path.join(trained_dir, "checkpoints"))) == before
