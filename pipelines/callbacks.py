"""Preemption-safe checkpointing and training callbacks for `model.fit` pretraining.

`TrainingCheckpoint` keeps the whole training state in one `tf.train.Checkpoint`:
model weights, optimizer (iteration counter, Adam moments, loss scale) and the data
stream position (examples consumed). A `tf.train.CheckpointManager` writes it every N
steps and keeps the last K. Writing is atomic where it matters: TensorFlow writes the
data and index files of `ckpt-STEP` first, and only then replaces the `checkpoint`
state file (write to a temporary file, then rename) that names the latest checkpoint;
older checkpoints are deleted after that. A process killed at any moment therefore
leaves the state file naming a complete checkpoint: the previous one if the kill came
during a write.

Keras' `BackupAndRestore` does not fit: it resumes at epoch granularity only, writes
its weights file in place (a kill mid-write relies on a backup copy), and cannot hold
anything but Keras weights.

Callbacks (all keyed on the optimizer's step counter, so they continue across
restarts):
    PeriodicCheckpoint  save every `save_every` steps and at the end; never saves a
                        non-finite state
    NanGuard            stops cleanly on a NaN/inf loss and names the last good checkpoint
    PreemptionGuard     on SIGTERM: save at the current step and stop
    TrainingLogger      TensorBoard scalars, a JSON-lines metrics file, a progress bar
    FaultInjection      test hook (environment variable SPANBERT_TF_TEST_FAULT)

Example:
    >>> import keras, tempfile
    >>> from spanbert_tf import SpanBertConfig, SpanBertPretrainer
    >>> model = SpanBertPretrainer(SpanBertConfig.preset("tiny", vocab_size=100))
    >>> model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    >>> state = TrainingCheckpoint(tempfile.mkdtemp(), model, max_to_keep=2)
    >>> state.restore_latest() is None       # nothing saved yet
    True
    >>> position = DataPosition(model, global_batch_size=32, examples_at_start=0)
    >>> callbacks = [NanGuard(state), PeriodicCheckpoint(state, position, save_every=100)]
    >>> # model.fit(dataset, steps_per_epoch=1000, callbacks=callbacks)
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import signal
import sys
import time
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

FAULT_ENV = "SPANBERT_TF_TEST_FAULT"
CHECKPOINT_PREFIX = "ckpt"
WINDOW_METRICS = ("loss", "mlm_loss", "sbo_loss", "mlm_accuracy", "sbo_accuracy")


def optimizer_step(model: keras.Model) -> int:
    """The optimizer's step counter (the global training step)."""
    return int(np.asarray(model.optimizer.iterations.numpy()))


def current_learning_rate(model: keras.Model) -> float:
    return float(np.asarray(model.optimizer.learning_rate))


def weights_are_finite(model: keras.Model) -> bool:
    """True when no trainable weight holds NaN or inf."""
    total = tf.add_n([tf.reduce_sum(tf.cast(tf.math.logical_not(tf.math.is_finite(v.value)),
                                            tf.int32))
                      for v in model.trainable_variables])
    return int(total) == 0


def atomic_write_text(path: str, text: str) -> None:
    """Writes a small text file so that readers see the old or the new content only."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


# ---------------------------------------------------------------- fault injection

def parse_fault(environ=os.environ) -> tuple[str, int] | None:
    """Reads SPANBERT_TF_TEST_FAULT = "pause-after-step:N" or "pause-in-checkpoint-write:N".

    Tests use it to stop a training process at an exact point and kill it there:
    after step N has been applied, or inside the write of the checkpoint of step N
    (after its files are written, before the state file names it).
    """
    raw = environ.get(FAULT_ENV)
    if not raw:
        return None
    kind, _, step = raw.partition(":")
    if kind not in ("pause-after-step", "pause-in-checkpoint-write") or not step.isdigit():
        raise ValueError(f"{FAULT_ENV}={raw!r}: expected pause-after-step:N or "
                         f"pause-in-checkpoint-write:N")
    return kind, int(step)


def pause_forever(message: str, interrupted: Callable[[], bool] = lambda: False) -> None:
    print(f"FAULT: {message}; waiting to be killed", flush=True)
    while not interrupted():
        time.sleep(0.05)


# ---------------------------------------------------------------- the checkpoint

class TrainingCheckpoint:
    """Model, optimizer and data position, saved atomically as `DIR/ckpt-STEP`.

    Args:
        directory: where the chief writes checkpoints; every worker restores from it.
        model: a compiled Keras model (its optimizer is saved with it).
        max_to_keep: how many recent checkpoints to keep.
        is_chief: False on the non-chief workers of a multi-worker job: they write
            to a private temporary directory (all workers must take part in a save)
            and delete it.
        worker_id: names that private directory.
    """

    def __init__(self, directory: str, model: keras.Model, max_to_keep: int = 3,
                 is_chief: bool = True, worker_id: int = 0):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = directory
        self.model = model
        self.is_chief = is_chief
        self.examples_seen = tf.Variable(0, dtype=tf.int64, trainable=False,
                                         name="examples_seen")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                              examples_seen=self.examples_seen)
        self.write_directory = directory if is_chief else os.path.join(
            directory, f".worker-{worker_id}-tmp")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.write_directory, max_to_keep=max_to_keep,
            checkpoint_name=CHECKPOINT_PREFIX)
        self.write_hooks: list[Callable[[str], None]] = []
        self.last_saved_step: int | None = None

    def latest(self) -> str | None:
        """The checkpoint the state file names (complete by construction), or None."""
        return tf.train.latest_checkpoint(self.directory)

    def latest_step(self) -> int | None:
        path = self.latest()
        return None if path is None else checkpoint_step(path)

    def remove_partial_writes(self) -> None:
        """Deletes leftovers of writes that a kill interrupted (chief only)."""
        if not self.is_chief or not os.path.isdir(self.directory):
            return
        for leftover in glob.glob(os.path.join(self.directory, f"{CHECKPOINT_PREFIX}-*_temp*")):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in glob.glob(os.path.join(self.directory, ".worker-*-tmp")):
            shutil.rmtree(leftover, ignore_errors=True)

    def restore_latest(self) -> int | None:
        """Restores the latest checkpoint; returns its step, or None when there is none."""
        path = self.latest()
        if path is None:
            return None
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        status = self.checkpoint.restore(path)
        status.assert_existing_objects_matched()
        step = optimizer_step(self.model)
        self.last_saved_step = step
        return step

    def save(self, examples_seen: int) -> str:
        """Writes ckpt-STEP for the current optimizer step; returns the chief's path."""
        step = optimizer_step(self.model)
        self.examples_seen.assign(examples_seen)
        hooks = [bind_step(hook, step) for hook in self.write_hooks]
        options = tf.train.CheckpointOptions(experimental_write_callbacks=hooks or None)
        path = self.manager.save(checkpoint_number=step, options=options)
        if not self.is_chief:
            shutil.rmtree(self.write_directory, ignore_errors=True)
            path = os.path.join(self.directory, os.path.basename(path))
        self.last_saved_step = step
        return path


def bind_step(hook: Callable[[str, int], None], step: int) -> Callable[[str], None]:
    """TensorFlow's write callbacks take the checkpoint path only."""
    def callback(path: str) -> None:
        hook(path, step)
    return callback


def checkpoint_step(path: str) -> int:
    return int(os.path.basename(path).rsplit("-", 1)[1])


class DataPosition:
    """Counts the examples the run has consumed: restored value + steps x global batch."""

    def __init__(self, model: keras.Model, global_batch_size: int, examples_at_start: int):
        self.model = model
        self.global_batch_size = global_batch_size
        self.examples_at_start = examples_at_start
        self.step_at_start = optimizer_step(model)

    def examples_seen(self) -> int:
        steps = optimizer_step(self.model) - self.step_at_start
        return self.examples_at_start + steps * self.global_batch_size


# ---------------------------------------------------------------- callbacks

class NanGuard(keras.callbacks.Callback):
    """TerminateOnNaN that keeps the last good checkpoint and says where it is.

    The loss in the batch logs is the running mean since the last logging window,
    so a non-finite value at any step of the window is seen at the next batch end.
    Put it before `PeriodicCheckpoint` so a bad step is never saved.
    """

    def __init__(self, checkpoint: TrainingCheckpoint, print_fn: Callable[[str], None] = print):
        super().__init__()
        self.checkpoint = checkpoint
        self.print_fn = print_fn
        self.stopped_at_step: int | None = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        self.stopped_at_step = optimizer_step(self.model)
        self.model.stop_training = True
        latest = self.checkpoint.latest()
        if latest:
            kept = (f"the last good checkpoint, {latest} (step {checkpoint_step(latest)}), "
                    f"is kept; lower the learning rate (or check the data) and run again to "
                    f"resume from it")
        else:
            kept = ("no checkpoint had been written yet; lower the learning rate (or check "
                    "the data) and start again")
        self.print_fn(f"Training stopped: the loss became {float(loss)} by step "
                      f"{self.stopped_at_step}. Nothing was saved after the last good "
                      f"step: {kept}.")


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Saves when the step counter crosses a multiple of `save_every`, and at the end."""

    def __init__(self, checkpoint: TrainingCheckpoint, position: DataPosition,
                 save_every: int = 1000, print_fn: Callable[[str], None] | None = None):
        super().__init__()
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self.checkpoint = checkpoint
        self.position = position
        self.save_every = save_every
        self.print_fn = print_fn
        self.unhealthy = False

    def save_now(self) -> str | None:
        """Saves unless the state is non-finite; returns the path written."""
        step = optimizer_step(self.model)
        if self.checkpoint.last_saved_step == step:
            return self.checkpoint.latest()
        if self.unhealthy:
            return None
        if not weights_are_finite(self.model):
            self.unhealthy = True
            self.model.stop_training = True
            if self.print_fn:
                self.print_fn(f"Training stopped: the weights hold NaN/inf after step {step}; "
                              f"not saved. The last good checkpoint, "
                              f"{self.checkpoint.latest()}, is kept.")
            return None
        path = self.checkpoint.save(self.position.examples_seen())
        if self.print_fn:
            self.print_fn(f"saved checkpoint {path}")
        return path

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.unhealthy = True
        if self.unhealthy:
            return
        step = optimizer_step(self.model)
        last = self.checkpoint.last_saved_step or 0
        if step // self.save_every > last // self.save_every:
            self.save_now()

    def on_train_end(self, logs=None):
        if not self.unhealthy and optimizer_step(self.model) != self.checkpoint.last_saved_step:
            self.save_now()


class PreemptionGuard(keras.callbacks.Callback):
    """On SIGTERM, finishes the running step, saves a checkpoint there and stops.

    A second SIGTERM falls through to the default handler (immediate exit). Only the
    main thread can install signal handlers; elsewhere this callback does nothing.
    """

    def __init__(self, checkpointer: PeriodicCheckpoint,
                 print_fn: Callable[[str], None] = print):
        super().__init__()
        self.checkpointer = checkpointer
        self.print_fn = print_fn
        self.requested = False
        self.saved_path: str | None = None
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def on_train_begin(self, logs=None):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None

    def on_train_batch_end(self, batch, logs=None):
        if not self.requested or self.model.stop_training:
            return
        self.model.stop_training = True
        self.saved_path = self.checkpointer.save_now()
        step = optimizer_step(self.model)
        where = self.saved_path or "nothing (the state was not finite)"
        self.print_fn(f"SIGTERM received: stopped after step {step}; saved {where}. "
                      f"Run the same command again to resume.")

    def on_train_end(self, logs=None):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class FaultInjection(keras.callbacks.Callback):
    """Test hook: pauses after a step or inside a checkpoint write (see `parse_fault`)."""

    def __init__(self, fault: tuple[str, int], checkpoint: TrainingCheckpoint,
                 interrupted: Callable[[], bool] = lambda: False):
        super().__init__()
        self.kind, self.step = fault
        self.interrupted = interrupted
        if self.kind == "pause-in-checkpoint-write":
            checkpoint.write_hooks.append(self._inside_write)

    def _inside_write(self, path: str, step: int) -> None:
        if step == self.step:
            pause_forever(f"paused while writing checkpoint {path} (files written, state "
                          f"file not yet updated)")

    def on_train_batch_end(self, batch, logs=None):
        if self.kind == "pause-after-step" and optimizer_step(self.model) == self.step:
            pause_forever(f"paused after step {self.step}", self.interrupted)


class TrainingLogger(keras.callbacks.Callback):
    """Logs every `log_every` steps: TensorBoard, `metrics.jsonl`, console and progress.

    Each window reports the mean losses and accuracies over its steps (the Keras
    metrics are reset after each window), the learning rate at its last step and the
    throughput in examples/s and tokens/s (tokens = sequence positions processed,
    global batch x sequence length). The first window after (re)start times from the
    end of the first execution, so tracing and compilation are left out.

    Args:
        log_every: steps per window.
        total_steps: the run's final step (for the progress bar).
        global_batch_size, sequence_length: for throughput.
        log_dir: TensorBoard directory (None: no TensorBoard).
        metrics_file: JSON-lines file, one row per window (None: not written).
        progress: show a progress bar (tqdm) when stderr is a terminal.
        metric_names: the logged metrics (default: the pretraining losses and accuracies).
        description: label of the progress bar.
    """

    def __init__(self, log_every: int, total_steps: int, global_batch_size: int,
                 sequence_length: int, log_dir: str | None = None,
                 metrics_file: str | None = None, progress: bool = True,
                 print_fn: Callable[[str], None] | None = print,
                 metric_names: tuple[str, ...] = WINDOW_METRICS,
                 description: str = "pretraining"):
        super().__init__()
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.log_every = log_every
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self.sequence_length = sequence_length
        self.log_dir = log_dir
        self.metrics_file = metrics_file
        self.progress = progress
        self.print_fn = print_fn
        self.metric_names = tuple(metric_names)
        self.description = description
        self.rows: list[dict[str, Any]] = []
        self._writer = None
        self._bar = None

    def on_train_begin(self, logs=None):
        self._last_step = optimizer_step(self.model)
        self._last_logged = self._last_step
        self._clock = None
        if self.log_dir:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        if self.progress and sys.stderr.isatty():
            from tqdm.auto import tqdm
            self._bar = tqdm(total=self.total_steps, initial=self._last_step, unit="step",
                             dynamic_ncols=True, desc=self.description)

    def on_train_batch_end(self, batch, logs=None):
        step = optimizer_step(self.model)
        if self._bar is not None:
            self._bar.update(step - self._last_step)
        self._last_step = step
        if self._clock is None:
            self._clock = (time.perf_counter(), step)
        self._pending = logs or {}
        window_ended = step // self.log_every > self._last_logged // self.log_every
        if window_ended or step >= self.total_steps:
            self._log_window(step, self._pending)

    def _log_window(self, step: int, logs: dict) -> None:
        row: dict[str, Any] = {"step": step}
        for name in self.metric_names:
            if name in logs:
                row[name] = float(logs[name])
        row["learning_rate"] = current_learning_rate(self.model)
        now = time.perf_counter()
        started, start_step = self._clock
        if step > start_step and now > started:
            examples = (step - start_step) * self.global_batch_size / (now - started)
            row["examples_per_second"] = examples
            row["tokens_per_second"] = examples * self.sequence_length
        self._clock = (now, step)
        self._last_logged = step
        self.rows.append(row)
        self._write(row)
        self.model.reset_metrics()

    def _write(self, row: dict) -> None:
        if self._writer is not None:
            with self._writer.as_default(step=row["step"]):
                for name, value in row.items():
                    if name != "step":
                        tf.summary.scalar(name, value)
            self._writer.flush()
        if self.metrics_file:
            with open(self.metrics_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}",
                                  lr=f"{row['learning_rate']:.2e}")
        if self.print_fn:
            line = format_row(row, self.metric_names)
            if self._bar is not None:
                self._bar.write(line)
            else:
                self.print_fn(line)

    def on_train_end(self, logs=None):
        if self._last_step > self._last_logged and self._clock is not None:
            self._log_window(self._last_step, self._pending)  # a stop inside a window
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()


def format_row(row: dict, metric_names: tuple[str, ...] = WINDOW_METRICS) -> str:
    parts = [f"step {row['step']}"]
    for name in metric_names:
        if name in row:
            parts.append(f"{name} {row[name]:.4f}")
    parts.append(f"lr {row['learning_rate']:.3e}")
    if "examples_per_second" in row:
        parts.append(f"{row['examples_per_second']:.1f} examples/s "
                     f"{row['tokens_per_second']:.0f} tokens/s")
    return " | ".join(parts)
