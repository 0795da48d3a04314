"""Concurrent gRPC clients against TF Serving or serve-local: latency percentiles, errors.

Each client thread opens its own channel, sends one warm-up request, waits for the
others (so that all start together), then sends `requests` Predict calls back to back.

Example:
    >>> result = load_test("localhost:8500", "encoder", {"text": ["Hello."]},
    ...                    clients=8, requests=200)  # doctest: +SKIP
    >>> result["errors"], result["p50_ms"], result["p99_ms"]  # doctest: +SKIP
    ([], 12.1, 30.5)
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import Any, Mapping

import numpy as np

from serving.client import GrpcClient


def load_test(target: str, model: str, inputs: Mapping[str, Any], clients: int = 8,
              requests: int = 200, timeout: float = 60.0, **predict_kwargs) -> dict[str, Any]:
    """Runs `clients` x `requests` Predict calls; returns counts, errors (repr of each
    failure), p50/p90/p99 latency in ms and requests per second."""
    if clients < 1 or requests < 1:
        raise ValueError("clients and requests must be >= 1")
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def worker(_: int) -> None:
        with GrpcClient(target, timeout=timeout, retries=0) as client:
            client.predict(model, inputs, **predict_kwargs)  # connect before timing
            start.wait()
            for _ in range(requests):
                began = time.perf_counter()
                try:
                    client.predict(model, inputs, **predict_kwargs)
                except Exception as error:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(repr(error))
                    continue
                with lock:
                    latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    with futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    seconds = time.perf_counter() - began
    values = np.asarray(latencies) * 1e3
    quantiles = np.percentile(values, [50, 90, 99]) if values.size else [np.nan] * 3
    return {"clients": clients, "requests_per_client": requests,
            "completed": len(latencies), "errors": errors,
            "p50_ms": float(quantiles[0]), "p90_ms": float(quantiles[1]),
            "p99_ms": float(quantiles[2]), "requests_per_s": len(latencies) / seconds,
            "seconds": seconds}
