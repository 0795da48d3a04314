"""`spanbert-tf finetune TASK` / `spanbert-tf evaluate TASK` end to end on a tiny model
(2 training steps) with the bundled real data: files written, metrics consistent between
the two commands, task metadata reused, bad input reported with its location."""

from __future__ import annotations

import json
import os
import random

import pytest

from pipelines.finetune import tacred
from spanbert_tf import cli
from tests.finetune_helpers import CONLL_JSON, RTE_DEV, TACRED_DEV, TACRED_TRAIN, tiny_checkpoint

FINETUNED_FILES = ["config.json", "metrics.json", "model.keras", "predictions.jsonl",
                   "task.json", "training_log.jsonl", "vocab.txt"]
QUICK = ["--max-steps", "2", "--batch-size", "8", "--max-seq-length", "64", "--no-progress"]


def run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_lines(path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_classification_finetune_then_evaluate(tmp_path, capsys):
    model_dir = tmp_path / "rte"
    with open(RTE_DEV, encoding="utf-8") as handle:
        lines = handle.read().splitlines()[:41]  # header + 40 pairs
    dev_file = tmp_path / "dev.tsv"
    dev_file.write_text("\n".join(lines) + "\n")
    code, output = run(capsys, "finetune", "classification", "--init-checkpoint",
                       tiny_checkpoint(), "--output-dir", str(model_dir), "--train-file",
                       RTE_DEV, "--dev-file", str(dev_file), "--max-train-examples", "40",
                       "--cpu-replicas", "2", *QUICK)
    assert code == 0, output
    assert sorted(os.listdir(model_dir)) == FINETUNED_FILES
    task = read_json(model_dir / "task.json")
    assert task["labels"] == ["entailment", "not_entailment"] and task["lowercase"] is True
    assert task["text_columns"] == ["sentence1", "sentence2"] and task["max_seq_length"] == 64
    metrics = read_json(model_dir / "metrics.json")
    assert metrics["training"]["steps"] == 2 and metrics["training"]["replicas"] == 2
    assert metrics["train"]["examples"] == 40
    dev = metrics["dev"]
    assert dev["examples"] == 40 and 0 <= dev["accuracy"] <= 1
    assert dev["baseline"]["name"] == "majority class"
    predictions = read_lines(model_dir / "predictions.jsonl")
    assert len(predictions) == 40
    assert predictions[0]["label"] in task["labels"] and predictions[0]["line"] == 2

    # evaluate: the saved model predicts exactly what the trained one did; a label
    # never seen in training is counted, not fatal.
    fields = lines[1].split("\t")
    eval_file = tmp_path / "eval.tsv"
    eval_file.write_text("\n".join(lines + ["\t".join(fields[:3] + ["contradiction"])]) + "\n")
    code, output = run(capsys, "evaluate", "classification", "--model-dir", str(model_dir),
                       "--eval-file", str(eval_file), "--output-dir", str(tmp_path / "eval"),
                       "--no-progress")
    assert code == 0, output
    evaluated = read_json(tmp_path / "eval" / "metrics.json")["eval"]
    assert evaluated["unseen_labels"] == {"contradiction": 1}
    assert evaluated["examples"] == 41 and evaluated["scored"] == 40
    assert evaluated["accuracy"] == pytest.approx(
        dev["accuracy"])
    again = read_lines(tmp_path / "eval" / "predictions.jsonl")
    assert [p["label"] for p in again[:40]] == [p["label"] for p in predictions]


def test_ner_finetune_writes_entity_predictions(tmp_path, capsys):
    model_dir = tmp_path / "ner"
    # Two replicas, each with its own length bucket: their embedding gradients differ
    # in shape, and the all-reduce must still work.
    code, output = run(capsys, "finetune", "ner", "--init-checkpoint", tiny_checkpoint(),
                       "--output-dir", str(model_dir), "--train-file", CONLL_JSON,
                       "--dev-file", CONLL_JSON, "--cpu-replicas", "2",
                       "--steps-per-execution", "2", *QUICK, "--batch-size", "4",
                       "--max-steps", "4")
    assert code == 0, output
    assert "MirroredStrategy: 2 replica(s)" in output
    task = read_json(model_dir / "task.json")
    assert task["task"] == "ner" and task["labels"][0] == "O" and "B-PER" in task["labels"]
    dev = read_json(model_dir / "metrics.json")["dev"]
    assert dev["sentences"] == 10 and 0 <= dev["f1"] <= 1
    assert dev["baseline"] == {"name": "O everywhere", "f1": 0.0,
                               "word_accuracy": pytest.approx(dev["baseline"]["word_accuracy"])}
    predictions = read_lines(model_dir / "predictions.jsonl")
    assert len(predictions) == 10
    for row in predictions:
        assert len(row["tags"]) == len(row["text"].split(" "))
        for entity in row["entities"] + row["gold_entities"]:
            assert row["text"][entity["start"]:entity["end"]] == entity["text"]
    assert any(row["gold_entities"] for row in predictions)


def test_tacred_mapping_is_saved_and_reused(tmp_path, capsys):
    model_dir = tmp_path / "tacred"
    code, output = run(capsys, "finetune", "tacred", "--init-checkpoint", tiny_checkpoint(),
                       "--output-dir", str(model_dir), "--train-file", TACRED_TRAIN,
                       "--dev-file", TACRED_DEV, *QUICK)
    assert code == 0, output
    task = read_json(model_dir / "task.json")
    expected = tacred.entity_marker_mapping(tacred.read_examples(TACRED_TRAIN),
                                            [line.rstrip("\n") for line in
                                             open(model_dir / "vocab.txt", encoding="utf-8")])
    assert task["entity_tokens"] == expected and task["negative_label"] == "no_relation"
    dev = read_json(model_dir / "metrics.json")["dev"]
    assert {"precision", "recall", "f1", "baseline"} <= set(dev)
    first = {row["id"]: row["relation"] for row in
             read_lines(model_dir / "predictions.jsonl")}
    # evaluation of the same examples in another order gives the same predictions
    with open(TACRED_DEV, encoding="utf-8") as handle:
        records = json.load(handle)
    random.Random(0).shuffle(records)
    shuffled = tmp_path / "shuffled.json"
    shuffled.write_text(json.dumps(records))
    code, output = run(capsys, "evaluate", "tacred", "--model-dir", str(model_dir),
                       "--eval-file", str(shuffled), "--output-dir", str(tmp_path / "eval"),
                       "--no-progress")
    assert code == 0, output
    second = {row["id"]: row["relation"] for row in
              read_lines(tmp_path / "eval" / "predictions.jsonl")}
    assert second == first


def test_bad_input_fails_before_training_with_its_location(tmp_path, capsys):
    base = ["finetune", "classification", "--init-checkpoint", tiny_checkpoint(),
            "--output-dir", str(tmp_path / "out"), *QUICK]
    code, output = run(capsys, *base, "--train-file", str(tmp_path / "missing.tsv"))
    assert code == 1 and f"{tmp_path / 'missing.tsv'}: no such file (--train-file)" in output
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\nfine\t1\nbroken row\n")
    code, output = run(capsys, *base, "--train-file", str(bad))
    assert code == 1 and f"{bad}:3: expected 2 fields" in output
    code, output = run(capsys, "finetune", "ner", "--init-checkpoint", str(tmp_path / "none"),
                       "--output-dir", str(tmp_path / "out"), "--train-file", CONLL_JSON,
                       *QUICK)
    assert code == 1 and f"{tmp_path / 'none'}: no such checkpoint" in output
    assert not os.path.exists(tmp_path / "out")
    code, output = run(capsys, "evaluate", "ner", "--model-dir", str(tmp_path),
                       "--eval-file", CONLL_JSON, "--output-dir", str(tmp_path / "e"))
    assert code == 1 and "not a fine-tuned model directory" in output
