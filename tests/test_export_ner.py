"""NER export: in-graph decoding of word tags into entity spans (type, text, char
offsets, score) as padded dense tensors, checked in a fresh process.

The model is a lookup tagger: its logits come from a fixed per-token-id table, so the
expected entities of a sentence are known exactly while tokenization, word grouping,
offsets and span decoding run for real.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from serving import op_check
from serving.export import export_model, tag_tables
from serving.preprocessing import TextPreprocessor
from tests.corpus_helpers import minilm_vocab
from tests.export_helpers import BAD_INPUTS, minilm_tokenizer, run_fresh_process

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
# Token -> tag; every other token is O.
LEXICON = {"john": "B-PER", "smith": "I-PER", "new": "B-LOC", "york": "I-LOC",
           "paris": "B-LOC", "mary": "B-PER", "ann": "I-PER", "##e": "I-PER"}


@keras.saving.register_keras_serializable(package="spanbert_tf_tests")
class LookupTagger(keras.Model):
    """{"logits": [B, L, T]} from a [vocab, T] table (plus a little position noise so
    that scores differ)."""

    def __init__(self, vocab_size: int, num_tags: int, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.num_tags = vocab_size, num_tags
        self.table = keras.layers.Embedding(vocab_size, num_tags, name="table")
        self.table.build((None, None))

    def call(self, inputs, training=None):
        logits = self.table(inputs["input_ids"])
        return {"logits": logits * tf.cast(inputs["input_mask"], tf.float32)[:, :, None]}

    def get_config(self):
        return {"vocab_size": self.vocab_size, "num_tags": self.num_tags, "name": self.name}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tokenizer = minilm_tokenizer()
    table = np.zeros((tokenizer.vocab_size, len(TAGS)), np.float32)
    table[:, 0] = 4.0
    for token, tag in LEXICON.items():
        table[tokenizer.token_to_id(token)] = 0.0
        table[tokenizer.token_to_id(token), TAGS.index(tag)] = 3.0
    model = LookupTagger(tokenizer.vocab_size, len(TAGS))
    model.table.set_weights([table])
    task_dir = str(tmp_path_factory.mktemp("ner_task"))
    model.save(os.path.join(task_dir, "model.keras"))
    with open(os.path.join(task_dir, "task.json"), "w", encoding="utf-8") as handle:
        json.dump({"task": "ner", "labels": TAGS, "max_seq_length": 64, "lowercase": True},
                  handle)
    with open(minilm_vocab(), "rb") as source:
        with open(os.path.join(task_dir, "vocab.txt"), "wb") as target:
            target.write(source.read())
    return model, export_model(task_dir, str(tmp_path_factory.mktemp("exports")), name="ner")


def entities(results, key, row):
    count = int(results[f"{key}/num_entities"][row])
    return [(results[f"{key}/entity_types"][row][k].decode(),
             results[f"{key}/entity_texts"][row][k].decode(),
             int(results[f"{key}/entity_starts"][row][k]),
             int(results[f"{key}/entity_ends"][row][k])) for k in range(count)]


def test_entities_are_decoded_in_the_graph(exported):
    model, path = exported
    texts = ["John Smith flew from New York to Paris.",
             "Nothing to see here.",
             "york, then MARYANNE and Mary Ann met in Zürich 🚀 near Paris",
             ""]
    bad = [BAD_INPUTS[name] for name in BAD_INPUTS]
    results, info = run_fresh_process(path, {
        "texts": ("serving_default", {"text": texts}),
        "bad": ("serving_default", {"text": bad}),
        "zero": ("serving_default", {"text": []}),
    })
    assert info["forbidden_modules"] == []
    assert entities(results, "texts", 0) == [("PER", "John Smith", 0, 10),
                                             ("LOC", "New York", 21, 29),
                                             ("LOC", "Paris", 33, 38)]
    assert entities(results, "texts", 1) == []
    # A lone I- tag starts an entity; "MARYANNE" is one word (mary ##ann ##e): its tag is
    # the first piece's and the span covers all pieces; "Mary Ann" is B-PER I-PER.
    assert entities(results, "texts", 2) == [("LOC", "york", 0, 4),
                                             ("PER", "MARYANNE", 11, 19),
                                             ("PER", "Mary Ann", 24, 32),
                                             ("LOC", "Paris", 54, 59)]
    assert entities(results, "texts", 3) == []
    width = results["texts/entity_types"].shape[1]
    assert width == 4 and results["texts/entity_starts"][1].tolist() == [-1] * width
    scores = results["texts/entity_scores"]
    assert np.all((scores[0, :3] > 0.5) & (scores[0, :3] <= 1.0))
    features = TextPreprocessor(minilm_tokenizer(), 64)(tf.constant(texts))
    expected = model(features)["logits"].numpy()
    assert np.abs(results["texts/logits"] - expected).max() <= 1e-5
    assert results["bad/num_entities"].shape == (len(BAD_INPUTS),)
    assert results["zero/entity_texts"].shape[0] == 0


def test_tag_tables_read_bio_and_bioes():
    assert tag_tables(TAGS) == (["PER", "LOC"], [-1, 0, 0, 1, 1], [0, 1, 0, 1, 0])
    assert tag_tables(["O", "S-X", "E-X", "weird"]) == (["X"], [-1, 0, 0, -1], [0, 1, 0, 0])


def test_ner_ops_are_core_or_tf_text_and_match_the_committed_list(exported):
    classified = op_check.classify_ops(op_check.saved_model_ops(exported[1]))
    assert op_check.check_ops(classified) == []
    path = os.path.join(op_check.OPS_DIR, "ner_ops.txt")
    committed = op_check.read_op_list(path) if os.path.exists(path) else {}
    assert classified == committed, f"review, then write to {path}:\n" + (
        op_check.format_op_list(classified))
