"""`spanbert-tf demo` end to end on the bundled corpus, shrunk to a few steps.

The full demo (600 steps, about 5 minutes) is the README's main job; this runs the same
path (vocabulary, shards, mirrored pretraining, held-out evaluation, SavedModel export)
with a tiny budget, so a broken stage fails CI rather than a newcomer's first run.
"""

import json
import os

import numpy as np
import tensorflow as tf

from pipelines.demo import run_demo


def test_demo_runs_every_stage_and_exports_a_working_saved_model(tmp_path):
    lines = []
    report = run_demo(output_dir=str(tmp_path / "demo"), train_steps=4, batch_size=8,
                      max_seq_length=64, vocab_size=1500, cpu_replicas=2, say=lines.append)
    text = "\n".join(lines)
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert stage in text
    assert report["status"] == "completed" and report["steps"] == 4
    assert "unigram baseline" in text
    heldout = report["heldout"]
    assert heldout["heldout_mlm_targets"] > 0 and heldout["heldout_sbo_targets"] > 0
    assert 0.0 <= heldout["mlm_accuracy"] <= 1.0
    with open(os.path.join(report["output_dir"], "demo_report.json")) as handle:
        assert json.load(handle)["saved_model"] == report["saved_model"]
    assert report["saved_model"].endswith(os.path.join("spanbert-demo", "1"))
    serve = tf.saved_model.load(report["saved_model"]).signatures["serving_default"]
    embedding = serve(text=tf.constant(["Call me Ishmael.", ""]))["embedding"].numpy()
    assert embedding.shape == (2, 128) and np.isfinite(embedding).all()
