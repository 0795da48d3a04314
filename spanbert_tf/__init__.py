"""spanbert-tf: SpanBERT (Joshi et al., TACL 2020) in TensorFlow / Keras 3.

Layers (`spanbert_tf.layers`) -> models (`SpanBertEncoder`, `SpanBertPretrainer`) ->
checkpoint import (`spanbert_tf.checkpoints`). Data pipelines live in `pipelines`,
export and serving in `serving`; this package imports neither.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from spanbert_tf.config import SpanBertConfig  # noqa: E402
from spanbert_tf.models import (  # noqa: E402
    SpanBertClassifier,
    SpanBertEncoder,
    SpanBertPretrainer,
    SpanBertQuestionAnswering,
    SpanBertTokenClassifier,
)
from spanbert_tf.tokenizer import SpanBertTokenizer  # noqa: E402

__version__ = "0.1.0"
__all__ = ["SpanBertClassifier", "SpanBertConfig", "SpanBertEncoder", "SpanBertPretrainer",
           "SpanBertQuestionAnswering", "SpanBertTokenClassifier", "SpanBertTokenizer"]
