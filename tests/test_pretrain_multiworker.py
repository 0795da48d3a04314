"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 train together.

Each process gets TF_CONFIG naming both workers, runs `run_pretraining` (one CPU replica
per worker, two in sync) and saves its final weights; the collective all-reduce must
leave both workers with the same weights. Worker 0 is the chief: it alone writes the
checkpoints, logs and final model; worker 1's private checkpoint copies are removed.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import socket
import subprocess
import sys

import numpy as np

from pipelines.pretrain import PretrainingOptions
from tests.pretrain_data import (REPO, make_pretraining_data, subprocess_env, vocab_size_of,
                                 write_tiny_config)

STEPS = 4
TIMEOUT = 300


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind(("127.0.0.1", 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def test_two_workers_train_in_sync_and_agree_on_the_weights(tmp_path):
    shards = make_pretraining_data(str(tmp_path / "data"))
    config = write_tiny_config(str(tmp_path / "tiny.json"), vocab_size_of(shards))
    model_dir = tmp_path / "model"
    options = PretrainingOptions(
        data=shards, model_dir=str(model_dir), config=config, train_steps=STEPS,
        global_batch_size=8, learning_rate=5e-3, warmup_steps=1, save_every=2, log_every=1,
        steps_per_execution=2, shuffle_buffer=64, progress=False)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"worker{index}.log", "w", encoding="utf-8")
        workers.append(subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "pretrain_worker.py"),
             json.dumps(dataclasses.asdict(options)), str(tmp_path / f"weights{index}.npz")],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env=subprocess_env(TF_CONFIG=tf_config)))
    try:
        codes = [worker.wait(timeout=TIMEOUT) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    logs = [(tmp_path / f"worker{i}.log").read_text(encoding="utf-8") for i in range(2)]
    assert codes == [0, 0], "\n\n".join(logs)
    for log in logs:
        summary = json.loads(log.strip().splitlines()[-1])
        assert summary == {"status": "completed", "final_step": STEPS, "replicas": 2}
    assert "MultiWorkerMirroredStrategy: 2 replica(s), global batch 8 (4 per replica)" in logs[0]

    chief, other = (np.load(tmp_path / f"weights{i}.npz") for i in range(2))
    assert len(chief.files) == len(other.files) > 0
    for name in chief.files:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)

    with open(model_dir / "metrics.jsonl", encoding="utf-8") as handle:
        losses = [json.loads(line)["loss"] for line in handle]
    assert len(losses) == STEPS // 2 and all(np.isfinite(losses))  # 2 steps per execution
    assert sorted(os.path.basename(p) for p in glob.glob(
        str(model_dir / "checkpoints" / "ckpt-*.index"))) == ["ckpt-2.index", "ckpt-4.index"]
    assert (model_dir / "final" / "encoder.weights.h5").is_file()
    leftovers = glob.glob(str(model_dir / ".*")) + glob.glob(str(model_dir / "checkpoints" / ".*"))
    assert leftovers == []
