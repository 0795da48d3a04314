"""`spanbert-tf finetune qa` then `spanbert-tf evaluate qa` on a tiny model (smoke run)."""

from __future__ import annotations

import json
import os

import keras
import pytest

from spanbert_tf import SpanBertConfig, SpanBertEncoder
from spanbert_tf.checkpoints import save_checkpoint
from spanbert_tf.cli import main
from tests.corpus_helpers import minilm_vocab

DATA = os.path.join(os.path.dirname(__file__), os.pardir, "data", "squad")


def squad_subset(source: str, target, articles: slice, paragraphs: int) -> str:
    with open(os.path.join(DATA, source), encoding="utf-8") as file:
        document = json.load(file)
    document["data"] = [dict(article, paragraphs=article["paragraphs"][:paragraphs])
                        for article in document["data"][articles]]
    target.write_text(json.dumps(document), encoding="utf-8")
    return str(target)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    keras.utils.set_random_seed(0)
    with open(minilm_vocab(), encoding="utf-8") as file:
        vocab_size = sum(1 for _ in file)
    encoder = SpanBertEncoder(SpanBertConfig.preset("tiny", vocab_size=vocab_size))
    directory = str(tmp_path_factory.mktemp("tiny_encoder"))
    save_checkpoint(directory, encoder, vocab_file=minilm_vocab(), overwrite=True)
    return directory


def run(argv) -> None:
    assert main([str(a) for a in argv]) == 0


def finetune(tmp_path, init, version: str, *extra):
    source = f"squad_{version}_dev_subset_shared.json"
    train = squad_subset(source, tmp_path / f"train{version}.json", slice(0, 1), 2)
    dev = squad_subset(source, tmp_path / f"dev{version}.json", slice(1, 2), 2)
    out = tmp_path / f"model{version}"
    run(["finetune", "qa", "--init-checkpoint", init, "--output-dir", out,
         "--train-file", train, "--dev-file", dev, "--max-steps", 2, "--batch-size", 4,
         "--max-seq-length", 96, "--doc-stride", 32, "--max-query-length", 24,
         "--no-progress", *extra])
    return out, dev


def test_finetune_v1_then_v2_then_evaluate(tmp_path, tiny_checkpoint, capsys):
    """SQuAD 1.1 from a pretrained encoder, then SQuAD 2.0 from the 1.1 model (its span
    head is reused) on two replicas (MirroredStrategy, length-bucketed batches), then
    `evaluate` with the saved 2.0 threshold."""
    for version, init, extra in (("v1.1", tiny_checkpoint, ()),
                                 ("v2.0", tmp_path / "modelv1.1", ("--cpu-replicas", 2))):
        out, dev = finetune(tmp_path, init, version, *extra)
        metrics = json.loads((out / "metrics.json").read_text())
        printed = capsys.readouterr().out
        assert '"exact_match"' in printed  # the command prints its metrics
        assert ("QA span head reused" in printed) == (version == "v2.0")
        assert metrics["training"]["steps"] == 2
        assert metrics["training"]["replicas"] == (2 if extra else 1)
        assert {"model.keras", "task.json", "vocab.txt", "config.json", "metrics.json",
                "predictions.json", "nbest_predictions.json",
                "predictions.jsonl"} <= set(os.listdir(out))
        task = json.loads((out / "task.json").read_text())
        assert task["task"] == "qa" and task["lowercase"] is True
        assert task["version_2"] == (version == "v2.0")
        with open(dev, encoding="utf-8") as file:
            dev_ids = {qa["id"] for a in json.load(file)["data"] for p in a["paragraphs"]
                       for qa in p["qas"]}
        predictions = json.loads((out / "predictions.json").read_text())
        assert set(predictions) == dev_ids
        dev_metrics = metrics["dev"]
        assert 0 <= dev_metrics["exact_match"] <= dev_metrics["f1"] <= 100
    assert "threshold_search" in dev_metrics and (out / "null_odds.json").exists()
    assert task["null_score_diff_threshold"] == dev_metrics["null_score_diff_threshold"]
    assert dev_metrics["f1"] == pytest.approx(dev_metrics["threshold_search"]["best_f1"])
    evaluation = tmp_path / "eval"
    run(["evaluate", "qa", "--model-dir", out, "--eval-file", dev, "--output-dir",
         evaluation, "--no-progress"])
    again = json.loads((evaluation / "metrics.json").read_text())
    # Same model, file and threshold: the same answers and scores.
    assert json.loads((evaluation / "predictions.json").read_text()) == predictions
    assert again["task"] == "qa" and again["eval"]["f1"] == pytest.approx(dev_metrics["f1"])
