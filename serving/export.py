"""SavedModel export with the tokenizer inside: raw UTF-8 strings in, answers out.

One export is one directory in TF Serving's layout, `EXPORT_BASE/NAME/VERSION/`:

    saved_model.pb, variables/      the graph and the weights
    assets/vocab.txt                the WordPiece vocabulary (tracked asset)
    assets/labels.txt               label names, one per line (task exports)
    assets.extra/export.json        what was exported: task, signatures, max_seq_length,
                                    lowercase, labels, source directory

Signatures (all batch-dynamic; texts are a 1-D `tf.string` batch named `text`, pairs add
`text_pair`; lengths beyond `max_seq_length` are truncated, never rejected):

    encoder         serving_default(text) -> embedding [B, H] (mask-aware mean pooling),
                    cls_embedding [B, H] (+ sequence_output [B, L, H], input_mask [B, L]
                    with `sequence_output=True`)
                    encode_ids(input_ids, input_mask, segment_ids: int32 [B, L]) -> same
    classification  serving_default(text[, text_pair]) -> logits [B, C],
                    probabilities [B, C], label_ids int32 [B], label_names string [B]
                    (regression models: logits [B, 1], scores [B])
                    predict_ids(input_ids, input_mask, segment_ids) -> same
                    siamese pair models (task.json `pair_encoding: siamese`): the same
                    serving_default, each text tokenized and packed on its own in the
                    graph; predict_ids and tokenize also take/return the second text's
                    input_ids_b, input_mask_b, segment_ids_b (tokenize: + token_starts_b,
                    token_ends_b)
    ner             serving_default(text) -> logits [B, L, T], tag_ids int32 [B, L],
                    tag_names string [B, L], num_entities int32 [B], and per entity,
                    dense [B, E] (E = most entities in the batch): entity_types,
                    entity_texts (string, "" padding), entity_starts, entity_ends
                    (int32 char offsets, -1 padding), entity_scores (float32: mean tag
                    probability of the entity's words)
                    predict_ids(...) -> logits, tag_ids, tag_names
    all             tokenize(text[, text_pair]) -> input_ids, input_mask, segment_ids,
                    token_starts, token_ends: int32 [B, L] (char offsets, see
                    serving.preprocessing)

The export is written to a temporary sibling directory and renamed into place, so a
TF Serving instance watching EXPORT_BASE/NAME never loads a half-written version.

Example:
    >>> from serving.export import export_model
    >>> path = export_model("checkpoints/minilm", "exports", name="minilm")  # doctest: +SKIP
    >>> import tensorflow as tf, tensorflow_text  # doctest: +SKIP
    >>> served = tf.saved_model.load(path).signatures["serving_default"]  # doctest: +SKIP
    >>> served(text=tf.constant(["Paris is the capital of France."]))["embedding"].shape
    TensorShape([1, 384])
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from spanbert_tf import SpanBertTokenizer
from spanbert_tf.checkpoints import load_encoder, vocab_path
from spanbert_tf.checkpoints.native import is_native_checkpoint
from spanbert_tf.layers.common import masked_mean
from spanbert_tf.models.encoder import SpanBertEncoder
from spanbert_tf.tokenizer import vocabulary_is_uncased
from serving.preprocessing import FEATURE_NAMES, TextPreprocessor

TASK_FILE = "task.json"
MODEL_FILE = "model.keras"
VOCAB_FILE = "vocab.txt"
LABELS_FILE = "labels.txt"
METADATA_DIR = "assets.extra"
METADATA_FILE = "export.json"
SECOND_FEATURE_NAMES = tuple(f"{name}_b" for name in FEATURE_NAMES)
CLASSIFICATION_TASKS = ("classification",)
EXPORTABLE_TASKS = ("encoder", "ner", "qa") + CLASSIFICATION_TASKS
KNOWN_TASKS = EXPORTABLE_TASKS + ("tacred",)


def text_spec(name: str) -> tf.TensorSpec:
    return tf.TensorSpec([None], tf.string, name=name)


def ids_specs(suffix: str = "") -> list[tf.TensorSpec]:
    return [tf.TensorSpec([None, None], tf.int32, name=name + suffix) for name in FEATURE_NAMES]


def model_outputs(model: keras.Model, features: dict) -> dict:
    """Calls a task model on the BERT features (+ the `*_b` ones of a siamese pair);
    always returns a dict."""
    names = FEATURE_NAMES + SECOND_FEATURE_NAMES
    outputs = model({name: features[name] for name in names if name in features},
                    training=False)
    if not isinstance(outputs, dict):
        outputs = {"logits": outputs}
    return outputs


class ServingModule(tf.Module):
    """Shared parts of every export: the preprocessor and the `tokenize` signature."""

    # Whether serving_default needs token offsets (span outputs).
    needs_offsets = False

    def __init__(self, model: keras.Model, preprocessor: TextPreprocessor, pair: bool = False,
                 jit_compile: bool = False):
        super().__init__(name="spanbert_serving")
        self.model = model
        self.preprocessor = preprocessor
        self.pair = pair
        # XLA cannot compile string ops: only the forward pass is compiled.
        self.forward = (tf.function(self.call_model, jit_compile=True) if jit_compile
                        else self.call_model)
        texts = [text_spec("text")] + ([text_spec("text_pair")] if pair else [])
        self.serve = tf.function(self.serve_texts, input_signature=texts)
        self.tokenize = tf.function(self.tokenize_texts, input_signature=texts)
        self.serve_ids = tf.function(self.serve_features, input_signature=ids_specs())

    def call_model(self, features: dict) -> dict:
        return model_outputs(self.model, features)

    def outputs(self, features: dict, model_outputs: dict, texts) -> dict:
        """Signature outputs from the features, the model's outputs and the input texts
        (None for the ids signature)."""
        raise NotImplementedError(f"{type(self).__name__} must define outputs()")

    def features(self, text, text_pair=None, with_offsets: bool = False) -> dict:
        """Model features of the texts (one packed sequence per text or pair)."""
        return self.preprocessor(text, text_pair, with_offsets=with_offsets)

    def serve_texts(self, text, text_pair=None):
        features = self.features(text, text_pair, with_offsets=self.needs_offsets)
        return self.outputs(features, self.forward(features), (text, text_pair))

    def tokenize_texts(self, text, text_pair=None):
        return self.features(text, text_pair, with_offsets=True)

    def tokenize_ids(self, text, text_pair=None):
        """`tokenize` without character offsets (what the TFLite models can run)."""
        return self.features(text, text_pair)

    def serve_features(self, input_ids, input_mask, segment_ids):
        features = {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids}
        return self.outputs(features, self.forward(features), None)

    def signatures(self, ids_name: str) -> dict:
        return {"serving_default": self.serve.get_concrete_function(),
                "tokenize": self.tokenize.get_concrete_function(),
                ids_name: self.serve_ids.get_concrete_function()}


class EncoderServing(ServingModule):
    """Sentence embeddings: mean-pooled and [CLS] vectors (optionally the sequence)."""

    def __init__(self, encoder: SpanBertEncoder, preprocessor: TextPreprocessor,
                 sequence_output: bool = False, jit_compile: bool = False):
        super().__init__(encoder, preprocessor, pair=False, jit_compile=jit_compile)
        self.sequence_output = sequence_output

    def outputs(self, features, model_outputs, texts):
        sequence = model_outputs["sequence_output"]
        result = {"embedding": masked_mean(sequence, features["input_mask"]),
                  "cls_embedding": sequence[:, 0]}
        if self.sequence_output:
            result.update(sequence_output=sequence, input_mask=features["input_mask"])
        return result


class ClassifierServing(ServingModule):
    """Sequence classification: logits, probabilities, argmax ids and label names."""

    def __init__(self, model: keras.Model, preprocessor: TextPreprocessor, labels: Sequence[str],
                 pair: bool = False, regression: bool = False, jit_compile: bool = False):
        super().__init__(model, preprocessor, pair=pair, jit_compile=jit_compile)
        self.labels = tuple(labels)
        self.regression = regression

    def outputs(self, features, model_outputs, texts):
        logits = tf.cast(model_outputs["logits"], tf.float32)
        if self.regression:
            return {"logits": logits, "scores": logits[:, 0]}
        label_ids = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1),
                "label_ids": label_ids,
                "label_names": tf.gather(tf.constant(self.labels, tf.string), label_ids)}


class SiameseClassifierServing(ClassifierServing):
    """A siamese (bi-encoder) pair classifier: `text` and `text_pair` are tokenized and
    packed separately (`[CLS] text [SEP]` each), as in fine-tuning; same outputs."""

    def __init__(self, model: keras.Model, preprocessor: TextPreprocessor,
                 labels: Sequence[str], regression: bool = False, jit_compile: bool = False):
        super().__init__(model, preprocessor, labels, pair=True, regression=regression,
                         jit_compile=jit_compile)
        self.serve_ids = tf.function(self.serve_pair_features,
                                     input_signature=ids_specs() + ids_specs("_b"))

    def features(self, text, text_pair=None, with_offsets: bool = False) -> dict:
        features = self.preprocessor(text, with_offsets=with_offsets)
        second = self.preprocessor(text_pair, with_offsets=with_offsets)
        features.update({f"{name}_b": value for name, value in second.items()})
        return features

    def serve_pair_features(self, input_ids, input_mask, segment_ids, input_ids_b,
                            input_mask_b, segment_ids_b):
        features = {"input_ids": input_ids, "input_mask": input_mask,
                    "segment_ids": segment_ids, "input_ids_b": input_ids_b,
                    "input_mask_b": input_mask_b, "segment_ids_b": segment_ids_b}
        return self.outputs(features, self.forward(features), None)


def tag_tables(labels: Sequence[str]) -> tuple[list[str], list[int], list[int]]:
    """Entity types of BIO tags: (type names, type index per tag or -1 for O, 1 where the
    tag begins an entity). B-/S- begin, I-/E- continue (BIOES reads as BIO)."""
    types: list[str] = []
    tag_types, begins = [], []
    for label in labels:
        if label == "O" or len(label) < 3 or label[1] != "-" or label[0] not in "BIES":
            tag_types.append(-1)
            begins.append(0)
            continue
        if label[2:] not in types:
            types.append(label[2:])
        tag_types.append(types.index(label[2:]))
        begins.append(int(label[0] in "BS"))
    return types, tag_types, begins


class NerServing(ServingModule):
    """Token tagging decoded into entity spans, in the graph.

    Each word's tag is the argmax at its first sub-token (how the fine-tuning labels
    words); an entity starts at a B- tag or at an I- tag whose previous word has another
    type (seqeval's lenient reading) and covers the sub-tokens of its words. Outputs
    are dense [batch, max entities in the batch], padded with "" / 0 / -1.
    """

    needs_offsets = True

    def __init__(self, model: keras.Model, preprocessor: TextPreprocessor,
                 labels: Sequence[str], jit_compile: bool = False):
        super().__init__(model, preprocessor, pair=False, jit_compile=jit_compile)
        self.labels = tuple(labels)

    def tag_outputs(self, logits):
        logits = tf.cast(logits, tf.float32)
        tag_ids = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {"logits": logits, "tag_ids": tag_ids,
                "tag_names": tf.gather(tf.constant(self.labels, tf.string), tag_ids)}

    def outputs(self, features, model_outputs, texts):
        result = self.tag_outputs(model_outputs["logits"])
        if texts is None:  # predict_ids: no text, no offsets
            return result
        result.update(self.entities(features, result["logits"], result["tag_ids"],
                                    self.preprocessor.clean(texts[0])))
        return result

    def entities(self, features, logits, tag_ids, texts):
        type_names, tag_types, begins = tag_tables(self.labels)
        ids = features["input_ids"]
        is_word = tf.logical_and(
            tf.cast(self.preprocessor.tokenizer.word_starts(ids), tf.bool),
            tf.cast(features["input_mask"], tf.bool))
        is_text = tf.cast(features["input_mask"], tf.bool) & tf.not_equal(
            ids, self.preprocessor.cls_id) & tf.not_equal(ids, self.preprocessor.sep_id)
        word_type = tf.where(is_word, tf.gather(tf.constant(tag_types, tf.int32), tag_ids), -1)
        begin = tf.gather(tf.constant(begins, tf.int32), tag_ids) > 0
        scores = tf.reduce_max(tf.nn.softmax(logits, axis=-1), axis=-1)
        # Last word start at or before / strictly before each position ([B, L, L] masks:
        # a cumulative max without a cummax op).
        length = tf.shape(ids)[1]
        positions = tf.range(length)
        word_positions = tf.where(is_word[:, tf.newaxis, :], positions[tf.newaxis, tf.newaxis],
                                  -1)
        at_or_before = positions[tf.newaxis, :] <= positions[:, tf.newaxis]
        owner = tf.reduce_max(tf.where(at_or_before[tf.newaxis], word_positions, -1), axis=-1)
        before = positions[tf.newaxis, :] < positions[:, tf.newaxis]
        previous = tf.reduce_max(tf.where(before[tf.newaxis], word_positions, -1), axis=-1)
        previous_type = tf.where(previous >= 0, tf.gather(word_type, tf.maximum(previous, 0),
                                                          batch_dims=1), -1)
        starts_entity = (word_type >= 0) & (begin | tf.not_equal(previous_type, word_type))
        entity_at_word = tf.where(word_type >= 0,
                                  tf.cumsum(tf.cast(starts_entity, tf.int32), axis=1) - 1, -1)
        entity = tf.where(is_text & (owner >= 0),
                          tf.gather(entity_at_word, tf.maximum(owner, 0), batch_dims=1), -1)
        counts = tf.reduce_sum(tf.cast(starts_entity, tf.int32), axis=1)
        batch = tf.shape(ids)[0]
        width = tf.reduce_max(tf.concat([counts, [0]], 0))
        slots = batch * width
        segment = tf.where(entity >= 0, tf.range(batch)[:, tf.newaxis] * width + entity, slots)

        def per_entity(reduce, values):
            reduced = reduce(tf.reshape(values, [-1]), tf.reshape(segment, [-1]), slots + 1)
            return tf.reshape(reduced[:slots], tf.stack([batch, width]))

        valid = tf.range(width)[tf.newaxis, :] < counts[:, tf.newaxis]
        starts = tf.where(valid, per_entity(tf.math.unsorted_segment_min,
                                            features["token_starts"]), 0)
        ends = tf.where(valid, per_entity(tf.math.unsorted_segment_max,
                                          features["token_ends"]), 0)
        word = tf.cast(is_word, tf.float32)
        score = per_entity(tf.math.unsorted_segment_sum, scores * word) / tf.maximum(
            per_entity(tf.math.unsorted_segment_sum, word), 1.0)
        types = per_entity(tf.math.unsorted_segment_max, word_type)
        type_table = tf.constant(type_names + [""], tf.string)
        texts = tf.broadcast_to(texts[:, tf.newaxis], tf.shape(starts))
        return {
            "num_entities": counts,
            "entity_types": tf.gather(type_table, tf.where(valid, types, len(type_names))),
            "entity_texts": tf.where(valid, tf.strings.substr(texts, starts, ends - starts,
                                                               unit="UTF8_CHAR"), ""),
            "entity_starts": tf.where(valid, starts, -1),
            "entity_ends": tf.where(valid, ends, -1),
            "entity_scores": tf.where(valid, score, 0.0),
        }


class QaServing(ServingModule):
    """Extractive QA: question + context -> answer text and character span.

    Long contexts are windowed in the graph (`TextPreprocessor.windows`, the fine-tuning
    split). Decoding follows `pipelines.finetune.qa_postprocess`: a span (s, e) scores
    `start_logits[s] + end_logits[e]`, s and e are context tokens, s is a max-context
    token of its window, s <= e < s + max_answer_length and the span has characters;
    the best span over all windows wins (exact search, not n-best). SQuAD 2.0: the null
    score is the smallest [CLS] score over the windows, and the answer is "" when
    `null_score - best score > null_threshold`.
    """

    def __init__(self, model: keras.Model, preprocessor: TextPreprocessor, info: "TaskInfo",
                 jit_compile: bool = False):
        raw = info.raw
        self.max_query_length = int(raw.get("max_query_length", 64))
        self.doc_stride = int(raw.get("doc_stride", 128))
        self.max_answer_length = int(raw.get("max_answer_length", 30))
        self.version_2 = bool(raw.get("version_2", False))
        self.null_threshold = float(raw.get("null_score_diff_threshold") or 0.0)
        if preprocessor.max_seq_length - self.max_query_length - 3 <= 0:
            raise ValueError(f"max_seq_length {preprocessor.max_seq_length} leaves no room "
                             f"for context after a {self.max_query_length}-token question")
        super().__init__(model, preprocessor, pair=False, jit_compile=jit_compile)
        texts = [text_spec("question"), text_spec("context")]
        self.serve = tf.function(self.answer, input_signature=texts)
        self.tokenize = tf.function(self.tokenize_windows, input_signature=texts)

    def outputs(self, features, model_outputs, texts):
        return {name: tf.cast(model_outputs[name], tf.float32)
                for name in ("start_logits", "end_logits")}

    def tokenize_windows(self, question, context):
        return self.preprocessor.windows(question, context, self.max_query_length,
                                         self.doc_stride)

    def answer(self, question, context):
        features = self.tokenize_windows(question, context)
        logits = self.outputs(features, self.forward(features), None)
        start_logits, end_logits = logits["start_logits"], logits["end_logits"]
        example = features["window_example"]
        batch = tf.shape(features["num_windows"])[0]
        in_context = tf.equal(features["segment_ids"], 1) & tf.cast(
            features["input_mask"], tf.bool) & tf.not_equal(features["input_ids"],
                                                            self.preprocessor.sep_id)
        starts_ok = in_context & self.max_context(features)
        positions = tf.range(tf.shape(start_logits)[1])
        span = positions[tf.newaxis, :] - positions[:, tf.newaxis]  # [s, e]: e - s
        valid = ((span >= 0) & (span < self.max_answer_length))[tf.newaxis]
        valid &= starts_ok[:, :, tf.newaxis] & in_context[:, tf.newaxis, :]
        ends, starts = features["token_ends"], features["token_starts"]
        valid &= ends[:, tf.newaxis, :] > starts[:, :, tf.newaxis]  # the span has characters
        scores = start_logits[:, :, tf.newaxis] + end_logits[:, tf.newaxis, :]
        scores = tf.where(valid, scores, -float("inf"))
        flat = tf.reshape(scores, [tf.shape(scores)[0], -1])
        best = tf.argmax(flat, axis=1, output_type=tf.int32)
        window_score = tf.reduce_max(flat, axis=1)
        length = tf.shape(start_logits)[1]
        best_start, best_end = best // length, best % length
        example_score = tf.math.unsorted_segment_max(window_score, example, batch)
        # The first window holding the example's best score.
        windows = tf.range(tf.shape(example)[0])
        is_best = tf.equal(window_score, tf.gather(example_score, example))
        chosen = tf.math.unsorted_segment_min(tf.where(is_best, windows, tf.int32.max),
                                              example, batch)
        chosen = tf.minimum(chosen, tf.maximum(tf.shape(example)[0] - 1, 0))
        found = tf.math.unsorted_segment_max(
            tf.cast(tf.math.is_finite(window_score), tf.int32), example, batch) > 0
        char_start = tf.gather(tf.gather(features["token_starts"], chosen),
                               tf.gather(best_start, chosen), batch_dims=1)
        char_end = tf.gather(tf.gather(features["token_ends"], chosen),
                             tf.gather(best_end, chosen), batch_dims=1)
        null_score = tf.math.unsorted_segment_min(start_logits[:, 0] + end_logits[:, 0],
                                                  example, batch)
        score_diff = tf.where(found, null_score - example_score, float("inf"))
        has_answer = found & (score_diff <= self.null_threshold if self.version_2 else True)
        char_start = tf.where(has_answer, char_start, -1)
        char_end = tf.where(has_answer, char_end, -1)
        contexts = self.preprocessor.clean(context)
        text = tf.strings.substr(contexts, tf.maximum(char_start, 0),
                                 tf.maximum(char_end - char_start, 0), unit="UTF8_CHAR")
        return {"answer_text": tf.where(has_answer, text, ""), "answer_start": char_start,
                "answer_end": char_end, "has_answer": has_answer,
                "score": tf.where(found, example_score, 0.0),
                "null_score": null_score, "score_diff": score_diff,
                "num_windows": features["num_windows"]}

    def max_context(self, features):
        """True at each context position whose window is that token's max-context window
        (`pipelines.finetune.qa_features.max_context_windows`: score min(left, right) +
        0.01 * window length; the first best window wins)."""
        example = features["window_example"]
        offset = features["context_offset"][:, tf.newaxis]
        token = features["window_start"][:, tf.newaxis] + tf.range(
            tf.shape(features["input_ids"])[1])[tf.newaxis, :] - offset  # context index
        # Every window of the same example, as [windows, 1, K]; K = most windows.
        most = tf.reduce_max(tf.concat([features["num_windows"], [1]], 0))
        first = tf.cumsum(features["num_windows"], exclusive=True)
        k = tf.range(most)[tf.newaxis, :]
        other = tf.gather(first, example)[:, tf.newaxis] + k  # [windows, K]
        exists = k < tf.gather(features["num_windows"], example)[:, tf.newaxis]
        other = tf.minimum(other, tf.shape(example)[0] - 1)
        other_start = tf.gather(features["window_start"], other)[:, tf.newaxis, :]
        lengths = tf.reduce_sum(tf.cast(tf.equal(features["segment_ids"], 1), tf.int32),
                                axis=1) - 1  # context tokens of each window (minus [SEP])
        other_length = tf.gather(lengths, other)[:, tf.newaxis, :]
        token = token[:, :, tf.newaxis]
        inside = (token >= other_start) & (token < other_start + other_length)
        inside &= exists[:, tf.newaxis, :]
        score = tf.cast(tf.minimum(token - other_start, other_start + other_length - 1 - token),
                        tf.float32) + 0.01 * tf.cast(other_length, tf.float32)
        score = tf.where(inside, score, -float("inf"))
        best = tf.argmax(score, axis=-1, output_type=tf.int32)  # first max wins
        return tf.equal(best, features["window_index"][:, tf.newaxis])


@dataclasses.dataclass
class TaskInfo:
    """What `task.json` of a fine-tuned model directory says (plus defaults)."""

    task: str
    labels: list[str]
    max_seq_length: int
    lowercase: bool | None
    pair: bool
    regression: bool
    raw: dict

    @classmethod
    def read(cls, model_dir: str) -> "TaskInfo":
        path = os.path.join(model_dir, TASK_FILE)
        try:
            with open(path, encoding="utf-8") as handle:
                raw = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        task = raw.get("task")
        if task not in KNOWN_TASKS:
            raise ValueError(f"{path}: field 'task' must be one of {KNOWN_TASKS}, got {task!r}")
        labels = [str(label) for label in raw.get("labels") or []]
        regression = bool(raw.get("regression", False))
        if task in CLASSIFICATION_TASKS and len(labels) < 2 and not regression:
            raise ValueError(f"{path}: field 'labels' must list at least 2 label names")
        if task == "ner" and not labels:
            raise ValueError(f"{path}: field 'labels' must list the BIO tags")
        length = raw.get("max_seq_length")
        if not isinstance(length, int) or length < 3:
            raise ValueError(f"{path}: field 'max_seq_length' must be an integer >= 3, "
                             f"got {length!r}")
        # The fine-tuning pipeline records its input columns; two columns = text pairs.
        pair = bool(raw.get("pair", len(raw.get("text_columns") or []) == 2))
        lowercase = raw.get("lowercase")
        return cls(task, labels, length, None if lowercase is None else bool(lowercase), pair,
                   regression, raw)


def next_version(export_base: str, name: str) -> int:
    """1 + the highest integer version directory under EXPORT_BASE/NAME (1 if none)."""
    model_base = os.path.join(export_base, name)
    if not os.path.isdir(model_base):
        return 1
    versions = [int(entry) for entry in os.listdir(model_base) if re.fullmatch(r"\d+", entry)]
    return max(versions, default=0) + 1


def load_task_model(model_dir: str) -> keras.Model:
    import spanbert_tf.models  # noqa: F401  (registers the task models for deserialisation)

    path = os.path.join(model_dir, MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (a fine-tuned model directory holds "
                                f"{MODEL_FILE}, {TASK_FILE} and {VOCAB_FILE})")
    return keras.saving.load_model(path, compile=False)


def build_serving_module(
    model_dir: str,
    sequence_output: bool = False,
    max_seq_length: int | None = None,
    lowercase: bool | None = None,
    pad_to_max_length: bool = False,
    jit_compile: bool = False,
    replace_invalid_utf8: bool = True,
) -> tuple[ServingModule, dict]:
    """Loads MODEL_DIR (native checkpoint or fine-tuned directory) and wraps it for
    serving. Returns the module and the export metadata."""
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir}: no such model directory")
    task_file = os.path.join(model_dir, TASK_FILE)
    if os.path.isfile(task_file):
        info = TaskInfo.read(model_dir)
        vocab = os.path.join(model_dir, VOCAB_FILE)
        model = load_task_model(model_dir)
        length = max_seq_length or info.max_seq_length
        lowercase = info.lowercase if lowercase is None else lowercase
        task, labels, pair, regression = info.task, info.labels, info.pair, info.regression
        pair_encoding = info.raw.get("pair_encoding", "cross")
    elif is_native_checkpoint(model_dir):
        vocab = vocab_path(model_dir)
        model = load_encoder(model_dir)
        length = max_seq_length or model.config.max_position_embeddings
        task, labels, pair, regression = "encoder", [], False, False
        pair_encoding = "cross"
    else:
        raise FileNotFoundError(
            f"{model_dir}: neither a fine-tuned model directory ({TASK_FILE} + {MODEL_FILE}) "
            f"nor a spanbert-tf checkpoint (config.json + encoder.weights.h5)")
    if task not in EXPORTABLE_TASKS:
        raise ValueError(f"{task_file}: export of task {task!r} is not implemented yet; "
                         f"exportable tasks: {EXPORTABLE_TASKS}")
    if vocab is None or not os.path.isfile(vocab):
        raise FileNotFoundError(f"{model_dir}: no {VOCAB_FILE}; the export embeds the "
                                f"tokenizer and needs the model's vocabulary")
    if lowercase is None:
        lowercase = vocabulary_is_uncased(vocab)
    tokenizer = SpanBertTokenizer(vocab, lowercase=lowercase)
    preprocessor = TextPreprocessor(tokenizer, length, pad_to_max_length=pad_to_max_length,
                                    replace_invalid_utf8=replace_invalid_utf8)
    if task == "encoder":
        module: ServingModule = EncoderServing(model, preprocessor, sequence_output, jit_compile)
    elif task == "ner":
        module = NerServing(model, preprocessor, labels, jit_compile)
    elif task == "qa":
        module = QaServing(model, preprocessor, info, jit_compile)
    elif pair_encoding == "siamese":
        if not pair:
            raise ValueError(f"{task_file}: a siamese classifier needs two text_columns")
        module = SiameseClassifierServing(model, preprocessor, labels, regression, jit_compile)
    else:
        module = ClassifierServing(model, preprocessor, labels, pair, regression, jit_compile)
    metadata = {"task": task, "labels": labels, "pair": pair, "regression": regression,
                "pair_encoding": pair_encoding,
                "max_seq_length": length,
                "lowercase": lowercase, "pad_to_max_length": pad_to_max_length,
                "sequence_output": sequence_output, "jit_compile": jit_compile,
                "source": os.path.abspath(model_dir)}
    return module, metadata


def save_serving_module(module: ServingModule, metadata: dict, path: str) -> None:
    """Writes the SavedModel (signatures, assets, assets.extra/export.json) to `path`."""
    ids_name = "encode_ids" if metadata["task"] == "encoder" else "predict_ids"
    signatures = module.signatures(ids_name)
    with tempfile.TemporaryDirectory() as scratch:
        if metadata["labels"]:
            labels_path = os.path.join(scratch, LABELS_FILE)
            with open(labels_path, "w", encoding="utf-8", newline="\n") as handle:
                handle.write("".join(f"{label}\n" for label in metadata["labels"]))
            module.labels_file = tf.saved_model.Asset(labels_path)
        tf.saved_model.save(module, path, signatures=signatures)
    metadata = dict(metadata, signatures=describe_signatures(signatures))
    os.makedirs(os.path.join(path, METADATA_DIR), exist_ok=True)
    with open(os.path.join(path, METADATA_DIR, METADATA_FILE), "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, indent=2, sort_keys=True)
        handle.write("\n")


def describe_signatures(signatures: dict[str, Callable]) -> dict[str, Any]:
    """{signature: {"inputs": {name: [dtype, shape]}, "outputs": {...}}} for export.json."""
    def spec(value) -> list:
        return [value.dtype.name, [None if d is None else int(d) for d in value.shape]]

    described = {}
    for key, function in signatures.items():
        args, kwargs = function.structured_input_signature
        inputs = dict(kwargs, **{value.name: value for value in args if value is not None})
        described[key] = {"inputs": {name: spec(value) for name, value in inputs.items()},
                          "outputs": {name: spec(value) for name, value
                                      in function.structured_outputs.items()}}
    return described


def export_model(
    model_dir: str | os.PathLike,
    export_base: str | os.PathLike,
    name: str,
    version: int | None = None,
    sequence_output: bool = False,
    max_seq_length: int | None = None,
    lowercase: bool | None = None,
    pad_to_max_length: bool = False,
    jit_compile: bool = False,
    overwrite: bool = False,
) -> str:
    """Exports MODEL_DIR to EXPORT_BASE/NAME/VERSION and returns that path.

    Args:
        model_dir: a spanbert-tf checkpoint (encoder export) or a fine-tuned model
            directory with task.json + model.keras + vocab.txt (task export).
        export_base: TF Serving base directory; NAME/VERSION is created inside.
        name: model name (TF Serving's `name` in models.config).
        version: integer version; default the next free one.
        sequence_output: encoder export: also return the token vectors.
        max_seq_length: longest packed input; default task.json's, or the encoder's
            max_position_embeddings.
        lowercase: tokenizer mode; default task.json's, or inferred from the vocab.
        pad_to_max_length: pad every request to max_seq_length (default: to the
            batch's longest input).
        jit_compile: compile the forward pass with XLA (TF Serving then needs
            `--xla_cpu_compilation_enabled=true`).
        overwrite: replace an existing VERSION directory.
    """
    export_base, name = os.fspath(export_base), str(name)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"--name {name!r}: use letters, digits, '_', '-', '.' (it becomes a "
                         f"directory and the TF Serving model name)")
    if version is None:
        version = next_version(export_base, name)
    if int(version) < 0:
        raise ValueError(f"--version must be a non-negative integer, got {version}")
    target = os.path.join(export_base, name, str(int(version)))
    if os.path.exists(target) and not overwrite:
        raise ValueError(f"{target} already exists; pass another --version or --overwrite")
    module, metadata = build_serving_module(
        os.fspath(model_dir), sequence_output=sequence_output, max_seq_length=max_seq_length,
        lowercase=lowercase, pad_to_max_length=pad_to_max_length, jit_compile=jit_compile)
    metadata.update(name=name, version=int(version))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{version}-incomplete-", dir=os.path.dirname(target))
    try:
        save_serving_module(module, metadata, staging)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(staging, target)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    return target
