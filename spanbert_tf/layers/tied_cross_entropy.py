"""Cross-entropy over the tied vocabulary decoder, chunk by chunk over the vocabulary.

The MLM and SBO heads end in the same projection: logits = hidden @ E^T + bias over the
whole vocabulary (E is the word-embedding matrix). Computed the plain way, every step
writes and re-reads [rows, vocab] float32 logits several times (matmul output, bias,
softmax cross-entropy, its gradient, argmax), and on CPU that memory traffic, not the
arithmetic, dominated the pretraining step (profiled: the two vocabulary projections
with their losses took ~60% of a step of the 4-layer benchmark model).

`tied_cross_entropy` walks the vocabulary in column chunks that stay in cache: the
forward pass keeps a running log-sum-exp, the target logit and the running argmax; the
backward pass turns each chunk's logits straight into the chunk's gradients (softmax -
one-hot). By default it reuses the forward pass's chunk logits (as much memory as the
plain computation's logits, never concatenated); `recompute_logits=True` recomputes
them instead: one extra [rows, H] x [H, vocab] matmul in exchange for never keeping
[rows, vocab] floats alive between the passes. Same values as the plain computation up
to float rounding.
"""

from __future__ import annotations

import tensorflow as tf

DEFAULT_CHUNK_SIZE = 4096


def vocabulary_chunks(vocab_size: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, end) column ranges of at most `chunk_size` covering the vocabulary."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(start, min(start + chunk_size, vocab_size))
            for start in range(0, vocab_size, chunk_size)]


def vocabulary_logits(hidden: tf.Tensor, matrix: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """float32 logits `hidden @ matrix^T + bias` of [N, H] rows against [V, H] vectors.

    The matmul runs in the compute dtype (fast under mixed precision); the bias is added
    after the cast to float32, so that softmax and losses run in float32.
    """
    logits = tf.cast(tf.matmul(hidden, matrix, transpose_b=True), tf.float32)
    return tf.nn.bias_add(logits, tf.cast(bias, tf.float32))


def _chunk_logits(hidden, embeddings, bias, start: int, end: int) -> tf.Tensor:
    """float32 logits of vocabulary columns [start, end)."""
    return vocabulary_logits(hidden, embeddings[start:end], bias[start:end])


def tied_cross_entropy(hidden: tf.Tensor, embeddings: tf.Tensor, bias: tf.Tensor,
                       labels: tf.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE,
                       recompute_logits: bool = False):
    """Per-row softmax cross-entropy and argmax hits of `hidden @ embeddings^T + bias`.

    Args:
        hidden: [N, H] decoder inputs (compute dtype; float16/bfloat16 under mixed precision).
        embeddings: [V, H] decoder matrix in the same dtype as `hidden`.
        bias: [V] float32 output bias.
        labels: [N] int target ids in [0, V).
        chunk_size: vocabulary columns per chunk.
        recompute_logits: recompute each chunk's logits in the backward pass instead of
            keeping them from the forward pass (saves [N, V] float32 of memory, costs
            one more matmul).

    Returns:
        (loss [N] float32, correct [N] float32 with 1.0 where argmax == label). Gradients
        flow to `hidden`, `embeddings` and `bias`; `correct` has none.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> h, e = tf.random.normal([3, 4]), tf.random.normal([10, 4])
        >>> loss, correct = tied_cross_entropy(h, e, tf.zeros([10]), tf.constant([1, 2, 3]),
        ...                                    chunk_size=4)
        >>> plain = tf.nn.sparse_softmax_cross_entropy_with_logits([1, 2, 3], h @ tf.transpose(e))
        >>> bool(np.allclose(loss, plain, atol=1e-5))
        True
    """
    labels = tf.cast(labels, tf.int32)
    bias = tf.cast(bias, tf.float32)
    vocab_size = embeddings.shape[0]
    if vocab_size is None:
        raise ValueError("tied_cross_entropy needs a static vocabulary size")
    chunks = vocabulary_chunks(vocab_size, chunk_size)

    @tf.custom_gradient
    def loss_and_hits(hidden, embeddings, bias):
        rows = tf.shape(hidden)[0]
        running_max = tf.fill([rows], tf.float32.min)
        sum_exp = tf.zeros([rows], tf.float32)
        target_logit = tf.zeros([rows], tf.float32)
        best_logit = tf.fill([rows], tf.float32.min)
        best_id = tf.zeros([rows], tf.int32)
        kept_logits = []
        for start, end in chunks:
            logits = _chunk_logits(hidden, embeddings, bias, start, end)
            if not recompute_logits:
                kept_logits.append(logits)
            chunk_max = tf.reduce_max(logits, axis=1)
            new_max = tf.maximum(running_max, chunk_max)
            sum_exp = (sum_exp * tf.exp(running_max - new_max)
                       + tf.reduce_sum(tf.exp(logits - new_max[:, None]), axis=1))
            running_max = new_max
            inside = (labels >= start) & (labels < end)
            local = tf.clip_by_value(labels - start, 0, end - start - 1)
            target_logit += tf.where(inside, tf.gather(logits, local, batch_dims=1), 0.0)
            improved = chunk_max > best_logit
            chunk_best = tf.argmax(logits, axis=1, output_type=tf.int32) + start
            best_id = tf.where(improved, chunk_best, best_id)
            best_logit = tf.maximum(best_logit, chunk_max)
        log_normaliser = running_max + tf.math.log(sum_exp)
        loss = log_normaliser - target_logit
        correct = tf.cast(tf.equal(best_id, labels), tf.float32)

        def grad(loss_grad, unused_correct_grad=None):
            hidden_grad = tf.zeros_like(hidden, dtype=tf.float32)
            embedding_grads, bias_grads = [], []
            for index, (start, end) in enumerate(chunks):
                logits = (_chunk_logits(hidden, embeddings, bias, start, end)
                          if recompute_logits else kept_logits[index])
                probs = tf.exp(logits - log_normaliser[:, None])
                one_hot = tf.one_hot(labels - start, end - start, dtype=tf.float32)
                logits_grad = (probs - one_hot) * loss_grad[:, None]
                compute_grad = tf.cast(logits_grad, hidden.dtype)
                hidden_grad += tf.cast(tf.matmul(compute_grad, embeddings[start:end]),
                                       tf.float32)
                embedding_grads.append(tf.matmul(compute_grad, hidden, transpose_a=True))
                bias_grads.append(tf.reduce_sum(logits_grad, axis=0))
            return (tf.cast(hidden_grad, hidden.dtype), tf.concat(embedding_grads, axis=0),
                    tf.concat(bias_grads, axis=0))

        return (loss, tf.stop_gradient(correct)), grad

    return loss_and_hits(hidden, embeddings, bias)
