"""Forward throughput of SpanBertEncoder vs keras-hub BertBackbone vs Hugging Face BertModel.

Float32 inference at the base config (12 layers, hidden 768, 12 heads, FFN 3072), batch
8 x seq 128 and batch 2 x seq 512, all in this process on the same token ids. TF models
run as `tf.function`, with XLA off and on (Keras 3 leaves XLA off on CPU unless asked);
PyTorch uses its default SDPA attention under `torch.inference_mode`. Contenders are
interleaved round by round; the report gives median sequences/s, ratios, and MFU
against a measured fp32 GEMM peak.

    python benchmarks/bench_encoder.py            # full run, writes results/bench_encoder.json
    python benchmarks/bench_encoder.py --quick    # fewer rounds
    python benchmarks/bench_encoder.py --shape 2x512 --rounds 15   # one shape, more rounds
                                                    # (writes results/bench_encoder_2x512.json)

The process runs with `spanbert_tf.allocator.keep_freed_memory()`, as the
`spanbert-tf` CLI does, and with TensorFlow's oneDNN kernels on (importing spanbert_tf
sets TF_ENABLE_ONEDNN_OPTS=1 unless it is set); both apply to every contender alike.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Before TensorFlow loads, as for users: sets KERAS_BACKEND and turns oneDNN on.
import spanbert_tf  # noqa: E402,F401

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import interleaved_medians, tf_matmul_peak_gflops, write_result  # noqa: E402
from spanbert_tf import SpanBertConfig, SpanBertEncoder  # noqa: E402
from spanbert_tf.allocator import keep_freed_memory  # noqa: E402

SHAPES = ((8, 128), (2, 512))


def forward_flops(config: SpanBertConfig, length: int) -> float:
    """Multiply-adds x 2 of one sequence's forward pass (dense layers + attention)."""
    h, i = config.hidden_size, config.intermediate_size
    dense = 2 * length * (4 * h * h + 2 * h * i)
    attention = 2 * 2 * length * length * h
    return config.num_layers * (dense + attention)


def ours(config, inputs, jit):
    model = SpanBertEncoder(config)
    feed = {"input_ids": tf.constant(inputs["ids"]), "input_mask": tf.constant(inputs["mask"]),
            "segment_ids": tf.constant(inputs["segments"])}
    run = tf.function(lambda x: model(x, training=False)["sequence_output"], jit_compile=jit)
    return lambda: run(feed).numpy()


def keras_hub_backbone(config, inputs, jit):
    import keras_hub

    model = keras_hub.models.BertBackbone(
        vocabulary_size=config.vocab_size, num_layers=config.num_layers,
        num_heads=config.num_heads, hidden_dim=config.hidden_size,
        intermediate_dim=config.intermediate_size, dropout=config.hidden_dropout,
        max_sequence_length=config.max_position_embeddings,
        num_segments=config.type_vocab_size)
    feed = {"token_ids": tf.constant(inputs["ids"]), "padding_mask": tf.constant(inputs["mask"]),
            "segment_ids": tf.constant(inputs["segments"])}
    run = tf.function(lambda x: model(x, training=False)["sequence_output"], jit_compile=jit)
    return lambda: run(feed).numpy()


def torch_bert(config, inputs):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    hf_config = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        attn_implementation="sdpa")
    model = transformers.BertModel(hf_config, add_pooling_layer=False).eval()
    feed = {"input_ids": torch.tensor(inputs["ids"], dtype=torch.long),
            "attention_mask": torch.tensor(inputs["mask"], dtype=torch.long),
            "token_type_ids": torch.tensor(inputs["segments"], dtype=torch.long)}

    def run():
        with torch.inference_mode():
            return model(**feed).last_hidden_state

    return run


def bench_shape(config, batch, length, rounds, iterations, peak_gflops):
    rng = np.random.default_rng(0)
    inputs = {"ids": rng.integers(1000, config.vocab_size, (batch, length)).astype("int32"),
              "mask": np.ones((batch, length), "int32"),
              "segments": np.zeros((batch, length), "int32")}
    contenders = {
        "spanbert_tf": ours(config, inputs, jit=False),
        "spanbert_tf_xla": ours(config, inputs, jit=True),
        "keras_hub": keras_hub_backbone(config, inputs, jit=False),
        "keras_hub_xla": keras_hub_backbone(config, inputs, jit=True),
        "torch_sdpa": torch_bert(config, inputs),
    }
    timings = interleaved_medians(contenders, rounds=rounds, iterations=iterations)
    flops = forward_flops(config, length)
    report = {}
    for name, timing in timings.items():
        seq_per_s = batch / timing["median_s"]
        report[name] = {"seq_per_s": seq_per_s,
                        "mfu": seq_per_s * flops / (peak_gflops * 1e9), **timing}
    best_ours = max(report["spanbert_tf"]["seq_per_s"], report["spanbert_tf_xla"]["seq_per_s"])
    best_hub = max(report["keras_hub"]["seq_per_s"], report["keras_hub_xla"]["seq_per_s"])
    ratios = {"ours_vs_keras_hub_best": best_ours / best_hub,
              "ours_vs_torch_sdpa": best_ours / report["torch_sdpa"]["seq_per_s"],
              "ours_no_xla_vs_torch_sdpa": (report["spanbert_tf"]["seq_per_s"]
                                            / report["torch_sdpa"]["seq_per_s"])}
    return {"batch": batch, "length": length, "contenders": report, "ratios": ratios}


def parse_shape(text: str) -> tuple[int, int]:
    """'2x512' -> (2, 512)."""
    try:
        batch, length = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxSEQ such as 2x512, got {text!r}")
    if batch < 1 or length < 1:
        raise argparse.ArgumentTypeError(f"batch and sequence length must be >= 1: {text!r}")
    return batch, length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median)")
    parser.add_argument("--iterations", type=int, default=3, help="calls per timing sample")
    parser.add_argument("--quick", action="store_true", help="3 rounds x 2 iterations")
    parser.add_argument("--preset", default="base", help="config preset (default: base)")
    parser.add_argument("--shape", type=parse_shape, action="append", metavar="BATCHxSEQ",
                        help="shape to run, repeatable (default: 8x128 and 2x512)")
    args = parser.parse_args()
    keep_freed_memory()  # as the spanbert-tf CLI does; applies to every contender alike
    if args.quick:
        args.rounds, args.iterations = 3, 2
    config = SpanBertConfig.preset(args.preset)
    peak = tf_matmul_peak_gflops()
    print(f"fp32 matmul peak (TF, 2048^3): {peak:.0f} GFLOP/s")
    shapes = []
    for batch, length in args.shape or SHAPES:
        result = bench_shape(config, batch, length, args.rounds, args.iterations, peak)
        shapes.append(result)
        print(f"\nbatch {batch} x seq {length}")
        for name, row in result["contenders"].items():
            print(f"  {name:18s} {row['seq_per_s']:7.2f} seq/s   MFU {row['mfu']:.1%}")
        for name, ratio in result["ratios"].items():
            print(f"  {name:28s} {ratio:.3f}x")
    name = "bench_encoder" + "".join(f"_{b}x{n}" for b, n in args.shape or ())
    path = write_result(name, {"preset": args.preset, "peak_gflops": peak,
                                          "rounds": args.rounds,
                                          "iterations": args.iterations, "shapes": shapes})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
