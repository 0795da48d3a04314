"""Running a QA model over examples: windows -> bucketed batches -> logits -> answers.

Example:
    >>> from spanbert_tf import SpanBertConfig, SpanBertQuestionAnswering, SpanBertTokenizer
    >>> from pipelines.finetune.qa_data import QAExample
    >>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "who", "won", "?", "denver"]
    >>> tokenizer = SpanBertTokenizer(vocab, lowercase=True)
    >>> model = SpanBertQuestionAnswering(SpanBertConfig.preset("tiny", vocab_size=len(vocab)))
    >>> examples = [QAExample("q1", "Who won?", "Denver won.", 0, [])]
    >>> predictions, features = answer_questions(model, examples, tokenizer)
    >>> predictions.answers["q1"] in "Denver won."  # some span of the context
    True
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from pipelines.finetune.qa_data import QAExample
from pipelines.finetune.qa_features import (MODEL_KEYS, QAFeature, QAFeatureOptions,
                                            batched_dataset, build_features)
from pipelines.finetune.qa_postprocess import (DEFAULT_MAX_ANSWER_LENGTH, DEFAULT_N_BEST,
                                               QAPredictions, postprocess)
from spanbert_tf.tokenizer import SpanBertTokenizer


def predict_logits(model: keras.Model, features: Sequence[QAFeature], batch_size: int = 64,
                   progress: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """(start_logits, end_logits) of every feature, in `features` order, each cut to the
    feature's length. Batches are length-bucketed, so little compute goes to padding."""
    logits: list = [None] * len(features)
    # A plain call, not `predict_on_batch`: under MirroredStrategy that runs the whole
    # batch on every replica and concatenates the copies.
    forward = tf.function(lambda inputs: model(inputs, training=False),
                          reduce_retracing=True)
    dataset = batched_dataset(features, batch_size, training=False)
    with tqdm(total=len(features), desc="predicting", unit="window",
              disable=not progress) as bar:
        for batch in dataset:
            outputs = forward({key: batch[key] for key in MODEL_KEYS})
            starts = outputs["start_logits"].numpy()
            ends = outputs["end_logits"].numpy()
            for row, index in enumerate(batch["feature_index"].numpy()):
                length = features[index].length
                logits[index] = (starts[row, :length], ends[row, :length])
            bar.update(len(starts))
    return logits


def answer_questions(
    model: keras.Model,
    examples: Sequence[QAExample],
    tokenizer: SpanBertTokenizer,
    options: QAFeatureOptions = QAFeatureOptions(),
    batch_size: int = 64,
    n_best: int = DEFAULT_N_BEST,
    max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
    version_2: bool = False,
    null_threshold: float = 0.0,
    progress: bool = False,
) -> tuple[QAPredictions, list[QAFeature]]:
    """Decoded answers of `examples` and the windows they were read in."""
    features, _ = build_features(examples, tokenizer, options, training=False,
                                 progress=progress)
    logits = predict_logits(model, features, batch_size, progress)
    predictions = postprocess(examples, features, logits, n_best=n_best,
                              max_answer_length=max_answer_length, version_2=version_2,
                              null_threshold=null_threshold)
    return predictions, features
