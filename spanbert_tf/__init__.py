"""spanbert-tf: SpanBERT (Joshi et al., TACL 2020) in TensorFlow / Keras 3.

Layers (`spanbert_tf.layers`) -> models (`SpanBertEncoder`, `SpanBertPretrainer`) ->
checkpoint import (`spanbert_tf.checkpoints`). Data pipelines live in `pipelines`,
export and serving in `serving`; this package imports neither.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow leaves its oneDNN CPU kernels off on x86 CPUs without AVX-512 VNNI/BF16/AMX
# (e.g. AVX2-only AMD EPYC), where they run attention's batched matmuls and softmax about
# twice as fast as the default Eigen kernels (benchmarks/bench_encoder.py). Read once,
# when TensorFlow loads: import spanbert_tf first, or set the variable yourself.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

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
