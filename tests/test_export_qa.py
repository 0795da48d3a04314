"""QA export: question + context -> answer text and character span, with long contexts
windowed inside the graph, checked in a fresh process.

The model is a lookup scorer (start/end logits from a per-token-id table), so the right
answer is known exactly while tokenization, windowing, max-context selection and span
search run for real.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from serving import op_check
from serving.export import export_model
from tests.corpus_helpers import minilm_vocab
from tests.export_helpers import BAD_INPUTS, minilm_tokenizer, run_fresh_process

MAX_LENGTH = 32


@keras.saving.register_keras_serializable(package="spanbert_tf_tests")
class LookupSpanScorer(keras.Model):
    """{"start_logits", "end_logits"} [B, L] from a [vocab, 2] table; padding -10000."""

    def __init__(self, vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.table = keras.layers.Embedding(vocab_size, 2, name="table")
        self.table.build((None, None))

    def call(self, inputs, training=None):
        logits = self.table(inputs["input_ids"])
        padding = tf.equal(tf.cast(inputs["input_mask"], tf.int32), 0)
        logits = tf.where(padding[:, :, None], -10000.0, logits)
        return {"start_logits": logits[:, :, 0], "end_logits": logits[:, :, 1]}

    def get_config(self):
        return {"vocab_size": self.vocab_size, "name": self.name}


def export_qa(tmp_path_factory, version_2: bool) -> str:
    """A SQuAD 2.0 (or 1.1) export of the lookup scorer: "new" starts and "york" ends
    answers (10 points); [CLS] scores 6; at most 5-token answers."""
    tokenizer = minilm_tokenizer()
    table = np.zeros((tokenizer.vocab_size, 2), np.float32)
    table[tokenizer.token_to_id("new"), 0] = 5.0  # answers start at "new"
    table[tokenizer.token_to_id("york"), 1] = 5.0  # and end at "york"
    table[tokenizer.token_to_id("[CLS]")] = [3.0, 3.0]  # null score 6: < 10, > 5 + 0
    model = LookupSpanScorer(tokenizer.vocab_size)
    model.table.set_weights([table])
    task_dir = str(tmp_path_factory.mktemp("qa_task"))
    model.save(os.path.join(task_dir, "model.keras"))
    with open(os.path.join(task_dir, "task.json"), "w", encoding="utf-8") as handle:
        json.dump({"task": "qa", "labels": [], "max_seq_length": MAX_LENGTH,
                   "doc_stride": 8, "max_query_length": 8, "lowercase": True,
                   "version_2": version_2, "max_answer_length": 5,
                   "null_score_diff_threshold": 0.0}, handle)
    with open(minilm_vocab(), "rb") as source:
        with open(os.path.join(task_dir, "vocab.txt"), "wb") as target:
            target.write(source.read())
    return export_model(task_dir, str(tmp_path_factory.mktemp("exports")),
                        name="qa2" if version_2 else "qa")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    filler = "The river runs past the old mill and the quiet fields. " * 12
    questions = ["Where is the statue?", "Where?", "Which city?", "", "Where is it?"]
    contexts = ["The statue stands in New York.",
                filler + "Visitors love New York every day. " + filler,
                "Nothing here matches.",
                "",
                "the New the big old grey York"]  # 6 tokens: longer than 5 allowed
    bad = [BAD_INPUTS[name] for name in BAD_INPUTS]
    calls = {"qa": ("serving_default", {"question": questions, "context": contexts}),
             "bad": ("serving_default", {"question": bad, "context": bad[::-1]}),
             "zero": ("serving_default", {"question": [], "context": []}),
             "windows": ("tokenize", {"question": questions[1:2], "context": contexts[1:2]})}
    path = export_qa(tmp_path_factory, version_2=True)
    out, info = run_fresh_process(path, calls)
    assert info["forbidden_modules"] == []
    return questions, contexts, out, path


def test_answers_and_char_spans(results):
    questions, contexts, out, _ = results
    texts = [t.decode() for t in out["qa/answer_text"]]
    assert texts[0] == "New York"
    assert contexts[0][out["qa/answer_start"][0]:out["qa/answer_end"][0]] == "New York"
    assert texts[1] == "New York"  # found in a later window of a long context
    assert contexts[1][out["qa/answer_start"][1]:out["qa/answer_end"][1]] == "New York"
    assert out["qa/num_windows"][1] > 10
    assert np.allclose(out["qa/score"][:2], 10.0)
    # Best spans where no "new ... york" fits: "new" + any end within 5 tokens (5 + 0);
    # an empty context has no span at all.
    assert np.allclose(out["qa/score"][[2, 4]], [0.0, 5.0])
    assert out["qa/score_diff"][3] == np.inf and texts[3] == ""
    assert out["qa/answer_start"][3] == -1


def test_squad_2_null_answers(results):
    _, _, out, _ = results
    texts = [t.decode() for t in out["qa/answer_text"]]
    # The null score (6) beats spans scoring 5 or less: no answer there.
    assert out["qa/has_answer"].tolist() == [True, True, False, False, False]
    assert texts[2] == texts[4] == ""
    assert np.allclose(out["qa/null_score"][[0, 2, 4]], 6.0)
    assert np.allclose(out["qa/score_diff"][[0, 2, 4]], [-4.0, 6.0, 1.0])


def test_windows_cover_the_context_with_the_stride(results):
    _, contexts, out, _ = results
    starts = out["windows/window_start"].tolist()
    assert starts[:3] == [0, 8, 16] and out["windows/num_windows"].tolist() == [len(starts)]
    assert out["windows/input_ids"].shape[1] <= MAX_LENGTH
    total = len(minilm_tokenizer().tokenize(tf.constant(contexts[1])).numpy())
    lengths = (out["windows/segment_ids"] == 1).sum(axis=1) - 1
    assert starts[-1] + lengths[-1] == total


def test_bad_inputs_and_empty_batch(results):
    _, _, out, _ = results
    assert out["bad/answer_text"].shape == (len(BAD_INPUTS),)
    assert np.all(out["bad/answer_end"] >= out["bad/answer_start"])
    assert out["zero/answer_text"].shape == (0,)


def test_qa_ops_are_core_or_tf_text_and_match_the_committed_list(results):
    classified = op_check.classify_ops(op_check.saved_model_ops(results[3]))
    assert op_check.check_ops(classified) == []
    path = os.path.join(op_check.OPS_DIR, "qa_ops.txt")
    committed = op_check.read_op_list(path) if os.path.exists(path) else {}
    assert classified == committed, f"review, then write to {path}:\n" + (
        op_check.format_op_list(classified))
