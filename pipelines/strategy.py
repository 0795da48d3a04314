"""Choosing the tf.distribute strategy for training jobs.

- `TF_CONFIG` naming more than one worker: MultiWorkerMirroredStrategy.
- one or more local GPUs: MirroredStrategy over all of them.
- `cpu_replicas=N` (N > 1) with no GPU: N logical CPU devices and MirroredStrategy over
  them, so the multi-replica code path runs (and is tested) on a CPU-only machine.
- otherwise the default single-device strategy.

Example:
    >>> from pipelines.strategy import create_strategy
    >>> strategy = create_strategy()          # one device on a CPU-only machine
    >>> strategy.num_replicas_in_sync
    1
"""

from __future__ import annotations

import json
import os

import tensorflow as tf


def tf_config_workers(environ=os.environ) -> int:
    """Number of workers named in TF_CONFIG (0 when unset)."""
    raw = environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def configure_cpu_replicas(count: int) -> list[str]:
    """Splits the CPU into `count` logical devices; must run before TF initialises."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    existing = tf.config.get_logical_device_configuration(cpu)
    if existing is None or len(existing) != count:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
        except RuntimeError:
            available = len(tf.config.list_logical_devices("CPU"))
            if available < count:
                raise ValueError(
                    f"cannot create {count} CPU replicas: TensorFlow is already initialised "
                    f"with {available} logical CPU device(s)") from None
    return [device.name for device in tf.config.list_logical_devices("CPU")[:count]]


# One strategy per device set and process: two MirroredStrategy objects over the same
# devices allocate the same collective instance keys, and the runtime keeps the first
# one's tensor shapes for a key, so the second strategy's all-reduces fail ("Shape
# mismatch in the collective instance") and abort every later collective op.
_STRATEGIES: dict[tuple, tf.distribute.Strategy] = {}


def mirrored_strategy(devices: tuple[str, ...] | None = None) -> tf.distribute.MirroredStrategy:
    """The process-wide MirroredStrategy over `devices` (None: all local GPUs)."""
    key = ("mirrored", devices)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = tf.distribute.MirroredStrategy(list(devices) if devices else None)
    return _STRATEGIES[key]


def create_strategy(cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """Returns the strategy for this process (see the module docstring)."""
    if tf_config_workers() > 1:
        key = ("multi_worker", None)
        if key not in _STRATEGIES:
            _STRATEGIES[key] = tf.distribute.MultiWorkerMirroredStrategy()
        return _STRATEGIES[key]
    # Physical devices can be listed without initialising the runtime; logical ones
    # cannot, and the CPU can only be split before initialisation.
    if tf.config.list_physical_devices("GPU"):
        return mirrored_strategy()
    if cpu_replicas > 1:
        return mirrored_strategy(tuple(configure_cpu_replicas(cpu_replicas)))
    return tf.distribute.get_strategy()


def per_replica_batch_size(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """Splits the global batch, failing clearly when replicas cannot share it evenly."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size <= 0 or global_batch_size % replicas:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                         f"{replicas} replicas of {type(strategy).__name__}")
    return global_batch_size // replicas
