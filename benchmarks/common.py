"""Shared helpers for the ratio benchmarks: timing, peak matmul, result files.

Benchmarks run peers in the same process on the same inputs, interleaving them round by
round so that machine noise hits every contender alike, and report medians and ratios.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def time_call(fn: Callable[[], object], iterations: int) -> float:
    """Seconds per call of `fn`, averaged over `iterations` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) / iterations


def interleaved_medians(contenders: dict[str, Callable[[], object]], rounds: int,
                        iterations: int, warmup: int = 2) -> dict[str, dict]:
    """Times every contender once per round, round-robin; returns median and all samples."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(time_call(fn, iterations))
    return {name: {"median_s": statistics.median(values), "samples_s": values}
            for name, values in samples.items()}


def tf_matmul_peak_gflops(size: int = 2048, iterations: int = 10) -> float:
    """Best-of-5 fp32 GEMM throughput in TensorFlow (the MFU denominator)."""
    import tensorflow as tf

    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    matmul = tf.function(lambda: tf.matmul(a, b))
    matmul().numpy()
    best = min(time_call(lambda: matmul().numpy(), iterations) for _ in range(5))
    return 2 * size**3 / best / 1e9


def machine_info() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def write_result(name: str, result: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    result = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "machine": machine_info(), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
