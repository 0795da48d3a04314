"""Cross-entropy over the tied vocabulary decoder, with a hand-written gradient.

The MLM and SBO heads end in the same projection: logits = hidden @ E^T + bias over the
whole vocabulary (E is the word-embedding matrix). Computed the plain way, every step
writes and re-reads [rows, vocab] float32 tensors many times (matmul output, softmax,
one-hot, its difference, the scaled gradient, argmax), and on CPU that memory traffic
weighed as much as the three matmuls (profiled on the 4-layer benchmark model).

`tied_cross_entropy` reads the logits twice in the forward pass (the row max, then
exp(logits - max), whose row sums are a third, read-only pass; the label is the argmax
where its exp(logit - max) is 1, so accuracy needs no argmax pass) and makes no
elementwise pass over [rows, vocab] in the backward pass: the gradient of softmax -
one-hot is applied through the matmuls, with the per-row factors moved onto the small
[rows, hidden] operands and the one-hot part gathered and scattered row by row.

The forward pass's exponentials are kept for the backward pass (as much memory as the
plain computation's logits); `recompute_logits=True` recomputes them instead, and with
`chunk_size` the vocabulary is walked in column chunks, so that no [rows, vocab] tensor
outlives its chunk. Same values as the plain computation up to float rounding.
"""

from __future__ import annotations

import tensorflow as tf


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


def _rows(tensor: tf.Tensor, start: int, end: int) -> tf.Tensor:
    """tensor[start:end], without a slice op when that is the whole tensor."""
    return tensor if start == 0 and end == tensor.shape[0] else tensor[start:end]


def _chunk_logits(hidden, embeddings, bias, start: int, end: int) -> tf.Tensor:
    """float32 logits of vocabulary columns [start, end)."""
    return vocabulary_logits(hidden, _rows(embeddings, start, end), _rows(bias, start, end))


# exps^T @ rows, the embedding matrix's [V, H] gradient, through XLA's dot: oneDNN's
# transposed-A kernel is slow for this shape on CPU ([320, 28996]^T x [320, 256]: 59.7 ms,
# XLA 44.6 ms; the pretraining step 2-6% faster in paired runs). Same product.
_embedding_gradient = tf.function(lambda exps, rows: tf.matmul(exps, rows, transpose_a=True),
                                  jit_compile=True, autograph=False)


def _concat(chunks: list[tf.Tensor]) -> tf.Tensor:
    return chunks[0] if len(chunks) == 1 else tf.concat(chunks, axis=0)


def _label_at_chunk_max(exps: tf.Tensor, labels: tf.Tensor, start: int, end: int) -> tf.Tensor:
    """Whether each row's label lies in columns [start, end) and has the chunk's largest
    logit: exp(logit - max) is exactly 1 there (and rounds to 1 only within float
    rounding of the max), so no argmax pass is needed."""
    inside = (labels >= start) & (labels < end)
    local = tf.clip_by_value(labels - start, 0, end - start - 1)
    return inside & (tf.gather(exps, local, batch_dims=1) >= 1.0)


def tied_cross_entropy(hidden: tf.Tensor, embeddings: tf.Tensor, bias: tf.Tensor,
                       labels: tf.Tensor, chunk_size: int | None = None,
                       recompute_logits: bool = False):
    """Per-row softmax cross-entropy and argmax hits of `hidden @ embeddings^T + bias`.

    Args:
        hidden: [N, H] decoder inputs (compute dtype; float16/bfloat16 under mixed precision).
        embeddings: [V, H] decoder matrix in the same dtype as `hidden`.
        bias: [V] float32 output bias.
        labels: [N] int target ids in [0, V).
        chunk_size: vocabulary columns per chunk; None (the default, fastest) takes the
            whole vocabulary at once.
        recompute_logits: recompute each chunk's logits in the backward pass instead of
            keeping [N, V] float32 from the forward pass (costs one more matmul).

    Returns:
        (loss [N] float32, correct [N] float32 with 1.0 where the label's logit is the
        row's largest, i.e. argmax == label up to exact ties). Gradients
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
    chunks = vocabulary_chunks(vocab_size, chunk_size or vocab_size)

    @tf.custom_gradient
    def loss_and_hits(hidden, embeddings, bias):
        maxes, exp_sums, label_at_max, kept = [], [], [], []
        for start, end in chunks:
            logits = _chunk_logits(hidden, embeddings, bias, start, end)
            chunk_max = tf.reduce_max(logits, axis=1)
            exps = tf.exp(logits - chunk_max[:, None])
            kept.append(None if recompute_logits else exps)
            maxes.append(chunk_max)
            exp_sums.append(tf.reduce_sum(exps, axis=1))
            label_at_max.append(_label_at_chunk_max(exps, labels, start, end))
        maxes, exp_sums = tf.stack(maxes, axis=1), tf.stack(exp_sums, axis=1)
        top = tf.reduce_max(maxes, axis=1)
        log_normaliser = top + tf.math.log(
            tf.reduce_sum(exp_sums * tf.exp(maxes - top[:, None]), axis=1))
        correct = tf.cast(tf.reduce_any(tf.stack(label_at_max, axis=1)
                                        & (maxes >= top[:, None]), axis=1), tf.float32)
        label_vectors = tf.gather(embeddings, labels)
        target_logit = tf.reduce_sum(tf.cast(hidden, tf.float32)
                                     * tf.cast(label_vectors, tf.float32), axis=1)
        loss = log_normaliser - (target_logit + tf.gather(bias, labels))

        def grad(loss_grad, unused_correct_grad=None):
            # d loss / d logits = loss_grad * (softmax - one_hot), softmax of chunk k being
            # exps_k * exp(max_k - log_normaliser): per-row factors, applied to [N, H].
            scaled_hidden = hidden * tf.cast(loss_grad[:, None], hidden.dtype)
            hidden_grad = -loss_grad[:, None] * tf.cast(label_vectors, tf.float32)
            embedding_grads, bias_grads = [], []
            for index, (start, end) in enumerate(chunks):
                exps = kept[index]
                if exps is None:
                    logits = _chunk_logits(hidden, embeddings, bias, start, end)
                    exps = tf.exp(logits - maxes[:, index, None])
                factor = loss_grad * tf.exp(maxes[:, index] - log_normaliser)
                bias_grads.append(tf.matmul(factor[None, :], exps)[0])
                exps = tf.cast(exps, hidden.dtype)
                hidden_grad += factor[:, None] * tf.cast(
                    tf.matmul(exps, _rows(embeddings, start, end)), tf.float32)
                weighted_hidden = hidden * tf.cast(factor[:, None], hidden.dtype)
                embedding_grads.append(_embedding_gradient(exps, weighted_hidden))
            at_labels = labels[:, None]  # the one-hot part, row by row
            embedding_grad = tf.tensor_scatter_nd_sub(_concat(embedding_grads), at_labels,
                                                      scaled_hidden)
            bias_grad = tf.tensor_scatter_nd_sub(_concat(bias_grads), at_labels, loss_grad)
            return tf.cast(hidden_grad, hidden.dtype), embedding_grad, bias_grad

        return (loss, tf.stop_gradient(correct)), grad

    return loss_and_hits(hidden, embeddings, bias)
