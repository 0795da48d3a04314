"""TFLite conversion with the tokenizer inside, a runner, and a size/latency report.

The TFLite model holds the same preprocessing as the SavedModel export
(`serving.preprocessing`) and the same output heads (`serving.export`), converted to
TFLite builtins plus TF Text's custom ops (FastBertNormalize, FastWordpieceTokenize,
RaggedTensorToTensor); no SELECT_TF_OPS (Flex), which did not run in either Python
interpreter here (DESIGN.md section 2). Differences from the SavedModel:

* no invalid-UTF-8 repair (TFLite has no kernel for UnicodeTranscode): bytes go to the
  normaliser unchanged;
* one signature, `serving_default`, whose outputs are the SavedModel's plus the token
  features the model ran on (`input_ids`, `input_mask`, `segment_ids`), without
  character offsets (the byte-to-character conversion uses ops TFLite lacks), so NER and
  QA are SavedModel-only;
* siamese (bi-encoder) pair classifiers are SavedModel-only (not implemented here).

Quantization: "float32"; "float16" (weights stored as float16, computed in float32);
"int8" (dynamic-range: int8 weights, activations quantized on the fly).

Example:
    >>> from serving.tflite import convert_to_tflite, TfliteRunner
    >>> convert_to_tflite("checkpoints/minilm", "minilm.tflite", "int8")  # doctest: +SKIP
    >>> runner = TfliteRunner("minilm.tflite")  # doctest: +SKIP
    >>> runner(["Paris is the capital of France."])["embedding"].shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from typing import Sequence

import numpy as np

QUANTIZATIONS = ("float32", "float16", "int8")
TOKEN_OUTPUTS = ("input_ids", "input_mask", "segment_ids")
TFLITE_TASKS = ("encoder", "classification")


def with_text_inputs(function, pair: bool):
    """A tf.function taking `text` (and `text_pair`) that calls `function(*texts)`; the
    argument names become the TFLite signature's input names."""
    import tensorflow as tf

    if pair:
        def serving_default(text, text_pair):
            return function(text, text_pair)
        specs = [tf.TensorSpec([None], tf.string, name=n) for n in ("text", "text_pair")]
    else:
        def serving_default(text):
            return function(text)
        specs = [tf.TensorSpec([None], tf.string, name="text")]
    return tf.function(serving_default, input_signature=specs)


def tflite_function(model_dir: str, max_seq_length: int | None = None,
                    lowercase: bool | None = None):
    """(module, metadata, concrete function) to convert: `serving_default` with the
    export's outputs plus the token features (TOKEN_OUTPUTS), preprocessing restricted
    to TFLite-runnable ops, weights frozen into constants."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    from serving.export import build_serving_module, describe_signatures

    module, metadata = build_serving_module(model_dir, max_seq_length=max_seq_length,
                                            lowercase=lowercase, replace_invalid_utf8=False)
    if metadata["task"] not in TFLITE_TASKS:
        raise ValueError(f"TFLite conversion supports {TFLITE_TASKS} models; "
                         f"{metadata['task']!r} needs character offsets, which TFLite "
                         f"cannot compute: use the SavedModel export")
    if metadata.get("pair_encoding") == "siamese":
        raise ValueError(f"{model_dir}: TFLite conversion of siamese (bi-encoder) "
                         f"classifiers is not implemented; use the SavedModel export "
                         f"(spanbert-tf export), which tokenizes each text on its own")

    def outputs(text, text_pair=None):
        features = module.preprocessor(text, text_pair)
        result = module.outputs(features, module.forward(features), (text, text_pair))
        result.update(features)
        return result

    live = with_text_inputs(outputs, module.pair).get_concrete_function()
    # Frozen here: left to the converter, the Keras variables stay TFLite resource
    # variables that nothing initialises (NaN outputs). The frozen function returns its
    # outputs flat in sorted-name order; the wrapper names them again. (One signature:
    # given several functions the converter goes through a SavedModel and keeps the
    # variables, so the tokens are outputs of serving_default instead of a signature.)
    frozen = convert_variables_to_constants_v2(live)
    names = sorted(live.structured_outputs)
    function = with_text_inputs(lambda *texts: dict(zip(names, frozen(*texts))), module.pair)
    metadata["signatures"] = describe_signatures({"serving_default": live})
    return module, metadata, function.get_concrete_function()


def convert_to_tflite(
    model_dir: str | os.PathLike,
    output_path: str | os.PathLike,
    quantize: str = "float32",
    max_seq_length: int | None = None,
    lowercase: bool | None = None,
) -> dict:
    """Converts a checkpoint or fine-tuned model directory (see `serving.export`) to one
    `.tflite` file with the signature `serving_default`; returns metadata."""
    import tensorflow as tf

    if quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    output_path = os.fspath(output_path)
    module, metadata, function = tflite_function(os.fspath(model_dir), max_seq_length,
                                                 lowercase)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = True
    if quantize != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    flatbuffer = converter.convert()
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "wb") as handle:
        handle.write(flatbuffer)
    metadata.update(quantize=quantize, bytes=len(flatbuffer), custom_ops=custom_ops(output_path))
    try:  # Every custom op must resolve to a TF Text kernel.
        TfliteRunner(output_path).interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as error:
        os.remove(output_path)
        raise ValueError(f"the TFLite model does not run with TF Text's kernels (custom ops "
                         f"{metadata['custom_ops']}): {error}") from None
    return metadata


def custom_ops(path: str) -> list[str]:
    """Custom (non-builtin) op names used by a .tflite file."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as handle:
        model = schema.Model.GetRootAsModel(handle.read(), 0)
    names = set()
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        if code.CustomCode():
            names.add(code.CustomCode().decode())
    return sorted(names)


class TfliteRunner:
    """Runs a converted model on `ai_edge_litert`'s InterpreterWithCustomOps with TF
    Text's registrar. Call with a list of strings (and a second list for pair models).

    Args:
        path: the .tflite file.
        num_threads: interpreter threads (default: TFLite's choice).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        import tensorflow_text as tf_text
        from ai_edge_litert.interpreter import InterpreterWithCustomOps

        self.path = os.fspath(path)
        self.interpreter = InterpreterWithCustomOps(
            custom_op_registerers=tf_text.tflite_registrar.SELECT_TFTEXT_OPS,
            model_path=self.path, num_threads=num_threads)
        self.runners = {key: self.interpreter.get_signature_runner(key)
                        for key in self.interpreter.get_signature_list()}

    def __call__(self, texts: Sequence, texts_pair: Sequence | None = None,
                 signature: str = "serving_default") -> dict[str, np.ndarray]:
        if len(texts) == 0:
            # TFLite cannot allocate a 0-element string tensor: run one empty text and
            # return 0 rows of each output (right dtypes and trailing shapes).
            outputs = self([""], None if texts_pair is None else [""], signature)
            return {name: value[:0] for name, value in outputs.items()}
        inputs = {"text": _string_array(texts)}
        if texts_pair is not None:
            inputs["text_pair"] = _string_array(texts_pair)
        return self.runners[signature](**inputs)

    def tokenize(self, texts: Sequence, texts_pair: Sequence | None = None):
        """The token features the model ran on (the TOKEN_OUTPUTS of `serving_default`)."""
        outputs = self(texts, texts_pair, signature="serving_default")
        return {name: outputs[name] for name in TOKEN_OUTPUTS}


def _string_array(texts: Sequence) -> np.ndarray:
    values = [text.encode("utf-8") if isinstance(text, str) else bytes(text) for text in texts]
    array = np.empty([len(values)], dtype=object)
    array[:] = values
    return array


def latency_ms(function, repeats: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000.0)
    times.sort()
    return {"p50_ms": statistics.median(times),
            "p95_ms": times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]}


def report(path: str, texts: Sequence[str], repeats: int = 50,
           num_threads: int | None = None, pair: bool = False) -> dict:
    """File size, single-request latency (first text) and batch latency (all texts);
    a pair model gets each text as both members of the pair."""
    runner = TfliteRunner(path, num_threads=num_threads)

    def call(batch):
        return lambda: runner(batch, batch if pair else None)

    single = latency_ms(call(texts[:1]), repeats)
    batch = latency_ms(call(texts), max(3, repeats // 10))
    return {"path": path, "bytes": os.path.getsize(path),
            "megabytes": round(os.path.getsize(path) / 2**20, 2),
            "single_request": single, f"batch_{len(texts)}": batch}


def write_report(result: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2, sort_keys=True)
        handle.write("\n")
