"""Preemption safety of `spanbert-tf pretrain`, with real processes and real signals.

Every interrupted run is compared with one uninterrupted run of the same command: the
final weights can only agree if the resumed run restored the weights, the optimizer
step and Adam moments, the learning-rate schedule position and the data stream position
(a stream restarted from its beginning gives other batches, hence other weights).

The kill points are exact: SPANBERT_TF_TEST_FAULT makes the process pause after a given
step, or inside the write of a given checkpoint (its files written, the `checkpoint`
state file not yet updated), and the test kills it there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from pipelines.optimization import WarmupLinearDecay
from spanbert_tf.checkpoints import load_pretrainer
from tests.pretrain_data import (make_pretraining_data, pretrain_command, start,
                                 vocab_size_of, write_tiny_config)

STEPS, SAVE_EVERY, GLOBAL_BATCH, PEAK_LR, WARMUP = 12, 3, 8, 5e-3, 4
TIMEOUT = 300


@pytest.fixture(scope="module")
def command(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("resume-data"))
    shards = make_pretraining_data(data_dir)
    config = write_tiny_config(os.path.join(data_dir, "tiny.json"), vocab_size_of(shards))

    def build(model_dir) -> list[str]:
        return pretrain_command(
            "--data", shards, "--model-dir", str(model_dir), "--config", config,
            "--train-steps", str(STEPS), "--global-batch-size", str(GLOBAL_BATCH),
            "--learning-rate", str(PEAK_LR), "--warmup-steps", str(WARMUP),
            "--save-every", str(SAVE_EVERY), "--keep-checkpoints", "3", "--log-every", "1",
            "--shuffle-buffer", "64", "--seed", "3", "--no-progress")
    return build


class Run:
    """One training process writing its output to a log file."""

    def __init__(self, command: list[str], log_path: str, fault: str | None = None):
        self.log_path = log_path
        env = {"SPANBERT_TF_TEST_FAULT": fault} if fault else {}
        self.process = start(command, log_path, **env)

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8") as handle:
            return handle.read()

    def wait_for(self, text: str) -> None:
        deadline = time.time() + TIMEOUT
        while text not in self.output():
            if self.process.poll() is not None:
                raise AssertionError(f"process exited before printing {text!r}:\n{self.output()}")
            if time.time() > deadline:
                self.process.kill()
                raise AssertionError(f"timed out waiting for {text!r}:\n{self.output()}")
            time.sleep(0.2)

    def kill(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=TIMEOUT)

    def finish(self) -> str:
        try:
            code = self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        assert code == 0, self.output()
        return self.output()


@pytest.fixture(scope="module")
def reference(command, tmp_path_factory):
    """The uninterrupted run; it trains in the background while the tests start theirs."""
    model_dir = tmp_path_factory.mktemp("reference")
    run = Run(command(model_dir), os.path.join(model_dir, "log.txt"))
    yield lambda: (run.finish(), final_weights(model_dir))[1]
    if run.process.poll() is None:
        run.process.kill()


def final_weights(model_dir) -> list[np.ndarray]:
    model, _ = load_pretrainer(os.path.join(model_dir, "final"))
    return [w.numpy() for w in model.weights]


def latest_step(model_dir) -> int | None:
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    return None if path is None else int(path.rsplit("-", 1)[1])


def metrics_rows(model_dir) -> list[dict]:
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def resumed_line(output: str) -> dict:
    match = re.search(r"resumed from (\S+) at step (\d+) \(optimizer iterations (\d+), "
                      r"learning rate (\S+), examples consumed (\d+)\)", output)
    assert match, output
    return {"path": match[1], "step": int(match[2]), "iterations": int(match[3]),
            "learning_rate": float(match[4]), "examples": int(match[5])}


def schedule(step: int) -> float:
    return float(WarmupLinearDecay(PEAK_LR, WARMUP, STEPS)(step))


def assert_resumed_at(output: str, step: int) -> None:
    resumed = resumed_line(output)
    assert resumed["path"].endswith(f"ckpt-{step}")
    assert resumed["step"] == resumed["iterations"] == step
    assert resumed["learning_rate"] == pytest.approx(schedule(step), rel=1e-5)
    assert resumed["examples"] == step * GLOBAL_BATCH


def assert_same_as_reference(model_dir, reference) -> None:
    with open(os.path.join(model_dir, "final", "checkpoint.json"), encoding="utf-8") as handle:
        assert json.load(handle)["source"]["pretrained_steps"] == STEPS
    for expected, got in zip(reference(), final_weights(model_dir)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_sigterm_then_sigkill_then_resume_matches_an_uninterrupted_run(command, reference,
                                                                      tmp_path):
    # 1. SIGTERM after step 5: the run saves ckpt-5 (between periodic saves) and exits 143.
    first = Run(command(tmp_path), tmp_path / "log1.txt", fault="pause-after-step:5")
    first.wait_for("FAULT: paused after step 5")
    assert first.kill(signal.SIGTERM) == 143, first.output()
    assert "SIGTERM received: stopped after step 5" in first.output()
    assert latest_step(tmp_path) == 5

    # 2. Restarted, it resumes at 5; SIGKILL after step 8 loses steps 7-8 (last save: 6).
    second = Run(command(tmp_path), tmp_path / "log2.txt", fault="pause-after-step:8")
    second.wait_for("FAULT: paused after step 8")
    assert_resumed_at(second.output(), 5)
    assert second.kill(signal.SIGKILL) == -signal.SIGKILL
    assert latest_step(tmp_path) == 6

    # 3. Restarted again, it resumes at 6 and finishes at the requested step.
    output = Run(command(tmp_path), tmp_path / "log3.txt").finish()
    assert_resumed_at(output, 6)
    assert latest_step(tmp_path) == STEPS
    rows = metrics_rows(tmp_path)
    restart = max(i for i, row in enumerate(rows) if row["step"] == 7)  # 3rd run's rows
    last_run = rows[restart:]
    assert [row["step"] for row in last_run] == list(range(7, STEPS + 1))
    assert [row["learning_rate"] for row in last_run] == pytest.approx(
        [schedule(step) for step in range(7, STEPS + 1)], rel=1e-5)
    assert_same_as_reference(tmp_path, reference)


def test_kill_inside_a_checkpoint_write_keeps_the_previous_checkpoint(command, reference,
                                                                       tmp_path):
    run = Run(command(tmp_path), tmp_path / "log1.txt", fault="pause-in-checkpoint-write:6")
    run.wait_for("FAULT: paused while writing checkpoint")
    checkpoints = os.path.join(tmp_path, "checkpoints")
    assert os.path.exists(os.path.join(checkpoints, "ckpt-6.index"))  # files written ...
    assert latest_step(tmp_path) == 3  # ... but not yet named by the state file
    assert run.kill(signal.SIGKILL) == -signal.SIGKILL
    # As if the kill had come while the data file was half written.
    data_file = os.path.join(checkpoints, "ckpt-6.data-00000-of-00001")
    with open(data_file, "r+b") as handle:
        handle.truncate(os.path.getsize(data_file) // 2)

    previous = tf.train.latest_checkpoint(checkpoints)
    assert previous.endswith("ckpt-3")
    reader = tf.train.load_checkpoint(previous)
    assert int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")) == 3
    floats = [name for name, dtype in reader.get_variable_to_dtype_map().items()
              if dtype.is_floating]
    assert any(name.startswith("model/") for name in floats)
    for name in floats:
        assert np.all(np.isfinite(reader.get_tensor(name))), name

    output = Run(command(tmp_path), tmp_path / "log2.txt").finish()
    assert_resumed_at(output, 3)
    assert_same_as_reference(tmp_path, reference)
