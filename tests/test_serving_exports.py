"""A `spanbert-tf export` SavedModel (serving.export.export_model) behind serve-local,
over a real gRPC connection: same outputs as the SavedModel loaded directly, metadata,
and the bad-input list of the serving issue (each case: sane outputs or a clear
INVALID_ARGUMENT, never a crash, and the server keeps serving).

The exported model is a tiny random-weight encoder with the MiniLM uncased vocabulary,
saved as a native checkpoint and exported exactly as the CLI does.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

import grpc
import numpy as np
import pytest
import tensorflow as tf

from corpus_helpers import minilm_vocab
from serving.client import GrpcClient, RestClient, ServerError
from serving_helpers import SENTENCES, max_abs_diff

HIDDEN = 64
BAD_INPUTS = {
    "empty": [b""],
    "whitespace_only": [b" \t\n  \r\n "],
    "long_50000_chars": [
        ("All work and no play makes Jack a dull boy. " * 1200)[:50000].encode()],
    "invalid_utf8": [b"caf\xc3 au lait \xff\xfe broken \xe2\x82 end"],
    "emoji_cjk": ["Rocket \U0001F680 launch \U0001F389! 北京欢迎你。東京タワー 서울".encode()],
    "batch_0": np.array([], dtype=object),
    "batch_256": [sentence.encode() for sentence in (SENTENCES * 64)],
}


@functools.lru_cache(maxsize=1)
def exported() -> tuple[str, str]:
    """(EXPORT_BASE, path of tiny/3) written by serving.export.export_model."""
    import keras

    from serving.export import export_model
    from spanbert_tf import SpanBertConfig, SpanBertEncoder, SpanBertTokenizer
    from spanbert_tf.checkpoints import save_checkpoint

    work = tempfile.mkdtemp(prefix="spanbert_served_export_")
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    keras.utils.set_random_seed(3)
    vocab_size = SpanBertTokenizer(minilm_vocab()).vocab_size
    encoder = SpanBertEncoder(SpanBertConfig.preset(
        "tiny", vocab_size=vocab_size, max_position_embeddings=64))
    checkpoint = os.path.join(work, "checkpoint")
    save_checkpoint(checkpoint, encoder, vocab_file=minilm_vocab())
    base = os.path.join(work, "exports")
    return base, export_model(checkpoint, base, name="tiny", version=3)


@pytest.fixture(scope="module")
def server():
    from serving.model_registry import ModelRegistry, ModelSource
    from serving.server import LocalModelServer

    base, _ = exported()
    registry = ModelRegistry([ModelSource("tiny", os.path.join(base, "tiny"))])
    with LocalModelServer(registry, grpc_port=0, rest_port=0, host="127.0.0.1",
                          poll_seconds=0) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with GrpcClient(f"127.0.0.1:{server.grpc_port}", timeout=60, retries=0) as grpc_client:
        yield grpc_client


@functools.lru_cache(maxsize=1)
def direct():
    import tensorflow_text  # noqa: F401 - the export's tokenizer ops

    return tf.saved_model.load(exported()[1])


def test_export_served_over_grpc_and_rest_equals_the_saved_model(client, server):
    reference = {name: value.numpy() for name, value in direct().signatures[
        "serving_default"](text=tf.constant(SENTENCES)).items()}
    response = client.predict_response("tiny", {"text": SENTENCES})
    assert response.model_spec.version.value == 3
    outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    assert sorted(outputs) == sorted(reference)
    rest = RestClient(f"127.0.0.1:{server.rest_port}", timeout=60).predict(
        "tiny", {"text": SENTENCES})
    for name in reference:
        assert max_abs_diff(outputs[name], reference[name]) <= 1e-6, name
        assert max_abs_diff(rest[name], reference[name]) <= 1e-6, name
    signatures = client.signatures("tiny")
    assert {"serving_default", "tokenize"} <= set(signatures)
    assert signatures["serving_default"].inputs["text"].dtype == tf.string.as_datatype_enum


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_through_grpc(client, case):
    texts = BAD_INPUTS[case]
    try:
        outputs = client.predict("tiny", {"text": texts})
    except ServerError as error:
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
        assert error.message
        print(f"{case}: INVALID_ARGUMENT: {error.message[:80]}")
    else:
        assert outputs["embedding"].shape == (len(texts), HIDDEN)
        assert np.all(np.isfinite(outputs["embedding"]))
        print(f"{case}: OK, embedding {outputs['embedding'].shape}")
    expect = client.predict("tiny", {"text": SENTENCES[:1]})["embedding"]  # still serving
    assert expect.shape == (1, HIDDEN)
