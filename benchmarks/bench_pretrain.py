"""Training throughput: SpanBertPretrainer (MLM + SBO) vs keras-hub BertMaskedLM vs
Hugging Face BertForMaskedLM on PyTorch.

Small config (4 layers, hidden 256, 4 heads, FFN 1024, cased vocab 28,996), batch 16 x
seq 128 with 20 masked positions in 5 whole spans, AdamW (lr 1e-4, weight decay 0.01,
global-norm clipping 1.0) for all three. keras-hub and PyTorch train MLM only; the
PyTorch model gets keras-hub's gather-before-head shortcut (the plain `labels=-100`
PyTorch model projects every position onto the vocabulary and is also reported). Steady
state: each timing sample is `--steps` calls of the compiled `fit` step (Keras) or of the
training step (PyTorch) after a warm-up, contenders interleaved round by round; medians
and ratios are reported.

`mlm_only_spanbert_tf` is our pretrainer with `sbo_weight=0` (MLM only, the SBO head
not computed): the same objective as the two peers, so its ratios compare the
implementations on equal work, and the gap to `spanbert_tf` is the SBO objective's cost.

    python benchmarks/bench_pretrain.py           # writes results/bench_pretrain.json

The process runs with `spanbert_tf.allocator.keep_freed_memory()`, as the
`spanbert-tf` CLI does, and with TensorFlow's oneDNN kernels on (importing spanbert_tf
sets TF_ENABLE_ONEDNN_OPTS=1 unless it is set); both apply to every contender alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Before TensorFlow loads, as for users: sets KERAS_BACKEND and turns oneDNN on.
import spanbert_tf  # noqa: E402,F401

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import interleaved_medians, write_result  # noqa: E402
from pipelines.optimization import AdamWGlobalClip  # noqa: E402
from spanbert_tf import SpanBertConfig, SpanBertPretrainer  # noqa: E402
from spanbert_tf.allocator import keep_freed_memory  # noqa: E402

BATCH, LENGTH = 16, 128
SPAN_LENGTHS = (3, 5, 4, 6, 2)  # 20 masked tokens in 5 spans
NUM_SPANS, NUM_TARGETS = 20, 15
LEARNING_RATE, WEIGHT_DECAY, CLIP = 1e-4, 0.01, 1.0


def make_config() -> SpanBertConfig:
    return SpanBertConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024)


def make_batch(vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Pretraining examples with 5 fully masked spans each (DESIGN.md section 4 layout)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab_size, (BATCH, LENGTH)).astype("int32")
    num_predictions = sum(SPAN_LENGTHS)
    batch = {
        "input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": np.zeros_like(ids),
        "masked_lm_positions": np.zeros((BATCH, num_predictions), "int32"),
        "masked_lm_weights": np.ones((BATCH, num_predictions), "float32"),
        "span_boundaries": np.zeros((BATCH, NUM_SPANS, 2), "int32"),
        "span_target_positions": np.zeros((BATCH, NUM_SPANS, NUM_TARGETS), "int32"),
        "span_target_weights": np.zeros((BATCH, NUM_SPANS, NUM_TARGETS), "float32"),
    }
    for row in range(BATCH):
        start, slot = int(rng.integers(1, 10)), 0
        for span, length in enumerate(SPAN_LENGTHS):
            positions = np.arange(start, start + length)
            batch["masked_lm_positions"][row, slot:slot + length] = positions
            batch["span_boundaries"][row, span] = (start - 1, start + length)
            batch["span_target_positions"][row, span, :length] = positions
            batch["span_target_weights"][row, span, :length] = 1.0
            slot += length
            start += length + int(rng.integers(5, 15))
    batch["masked_lm_ids"] = np.take_along_axis(ids, batch["masked_lm_positions"], 1)
    flat = batch["span_target_positions"].reshape(BATCH, -1)
    batch["span_target_ids"] = np.take_along_axis(ids, flat, 1).reshape(flat.shape[0], NUM_SPANS,
                                                                         NUM_TARGETS)
    return batch


def keras_fit_runner(model, dataset, steps):
    """Runs `steps` of the model's compiled `fit` step on one persistent iterator.

    A whole `model.fit` call per sample is not steady state: on this machine each call
    ended with a stall of up to ~18 s after its last step (epoch end and iterator
    teardown), more than 20 steps of training. Driving the train function that `fit`
    compiles measures the training step itself; reading the loss waits for the work.
    """
    model.fit(dataset.take(2), verbose=0)  # trace and warm up
    train_function = model.make_train_function()
    iterator = iter(dataset)

    def run():
        for _ in range(steps):
            logs = train_function(iterator)
        float(logs["loss"])

    return run


def ours(config, batch, steps, jit):
    """Our pretrainer; MLM + SBO unless `config.sbo_weight` is 0 (MLM only)."""
    model = SpanBertPretrainer(config)
    model.compile(optimizer=AdamWGlobalClip(learning_rate=LEARNING_RATE,
                                            weight_decay=WEIGHT_DECAY, clip_norm=CLIP),
                  jit_compile=jit)
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    return keras_fit_runner(model, dataset, steps)


def keras_hub_masked_lm(config, batch, steps, jit):
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=config.vocab_size, num_layers=config.num_layers,
        num_heads=config.num_heads, hidden_dim=config.hidden_size,
        intermediate_dim=config.intermediate_size, dropout=config.hidden_dropout,
        max_sequence_length=config.max_position_embeddings)
    model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
                                         global_clipnorm=CLIP),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()], jit_compile=jit)
    features = {"token_ids": batch["input_ids"], "segment_ids": batch["segment_ids"],
                "padding_mask": batch["input_mask"].astype(bool),
                "mask_positions": batch["masked_lm_positions"]}
    dataset = tf.data.Dataset.from_tensors(
        (features, batch["masked_lm_ids"], batch["masked_lm_weights"])).repeat()
    return keras_fit_runner(model, dataset, steps)


def torch_masked_lm(config, batch, steps, gather_first: bool):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    hf_config = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size, attn_implementation="sdpa")
    model = transformers.BertForMaskedLM(hf_config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    ids = torch.tensor(batch["input_ids"], dtype=torch.long)
    mask = torch.tensor(batch["input_mask"], dtype=torch.long)
    positions = torch.tensor(batch["masked_lm_positions"], dtype=torch.long)
    targets = torch.tensor(batch["masked_lm_ids"], dtype=torch.long)
    labels = torch.full_like(ids, -100).scatter_(1, positions, targets)

    def step():
        if gather_first:
            hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            gathered = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
            logits = model.cls(gathered)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()

    for _ in range(2):
        step()

    def run():
        for _ in range(steps):
            step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per sample")
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA variants")
    args = parser.parse_args()
    keep_freed_memory()  # as the spanbert-tf CLI does; applies to every contender alike
    config = make_config()
    batch = make_batch(config.vocab_size)
    keras.utils.set_random_seed(0)
    contenders = {"spanbert_tf": ours(config, batch, args.steps, jit=False),
                  "mlm_only_spanbert_tf": ours(config.replace(sbo_weight=0.0), batch,
                                               args.steps, jit=False),
                  "keras_hub": keras_hub_masked_lm(config, batch, args.steps, jit=False)}
    if not args.no_xla:
        contenders["spanbert_tf_xla"] = ours(config, batch, args.steps, jit=True)
        contenders["keras_hub_xla"] = keras_hub_masked_lm(config, batch, args.steps, jit=True)
    contenders["torch_gathered"] = torch_masked_lm(config, batch, args.steps, gather_first=True)
    contenders["torch_all_positions"] = torch_masked_lm(config, batch, args.steps,
                                                        gather_first=False)
    start = time.perf_counter()
    timings = interleaved_medians(contenders, rounds=args.rounds, iterations=1, warmup=0)
    report = {name: {"seq_per_s": BATCH * args.steps / t["median_s"], **t}
              for name, t in timings.items()}
    ours_best = max(v["seq_per_s"] for k, v in report.items() if k.startswith("spanbert_tf"))
    hub_best = max(v["seq_per_s"] for k, v in report.items() if k.startswith("keras_hub"))
    torch_gathered = report["torch_gathered"]["seq_per_s"]
    mlm_only = report["mlm_only_spanbert_tf"]["seq_per_s"]
    ratios = {"ours_vs_keras_hub_best": ours_best / hub_best,
              "ours_vs_torch_gathered": ours_best / torch_gathered,
              "ours_vs_torch_all_positions": ours_best / report["torch_all_positions"]["seq_per_s"],
              "mlm_only_vs_keras_hub_best": mlm_only / hub_best,
              "mlm_only_vs_torch_gathered": mlm_only / torch_gathered}
    for name, row in report.items():
        print(f"  {name:22s} {row['seq_per_s']:7.2f} seq/s")
    for name, ratio in ratios.items():
        print(f"  {name:30s} {ratio:.3f}x")
    path = write_result("bench_pretrain", {
        "config": config.to_dict(), "batch": BATCH, "length": LENGTH,
        "masked_positions": sum(SPAN_LENGTHS), "steps_per_sample": args.steps,
        "rounds": args.rounds, "wall_s": time.perf_counter() - start,
        "contenders": report, "ratios": ratios})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
