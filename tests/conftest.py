"""Test-session set-up.

Two logical CPU devices are created before TensorFlow initialises, so that
MirroredStrategy tests run the multi-replica code path without GPUs.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Before TensorFlow loads, as for users: importing spanbert_tf turns oneDNN on.
import spanbert_tf  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 2

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(NUM_LOGICAL_CPUS)])
