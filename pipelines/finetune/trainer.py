"""The fine-tuning framework every task uses: flags, loading, training, saving.

- `add_training_arguments(parser, **task_defaults)` adds the shared `finetune` flags;
  `TrainingSettings.from_args(args)` reads them back (validated).
- `load_pretrained(path)` -> (encoder, tokenizer) from a converted spanbert-tf
  checkpoint, a Hugging Face BERT directory, a fairseq file or a fine-tuned directory;
  the tokenizer is uncased when the vocabulary has no upper-case token (`--lowercase` /
  `--cased` override).
- `train_model(settings, build_model, loss, metrics, make_dataset, num_examples)` builds
  the task model inside the strategy of `pipelines.strategy.create_strategy`, compiles it
  with `pipelines.optimization.create_optimizer` (AdamW, warm-up then linear decay, no
  decay on biases/LayerNorm, global-norm clipping) and runs Keras `fit` on
  `strategy.distribute_datasets_from_function` batches, with a progress bar.
- `predict_logits(model, encoded, ...)` runs a trained model over `EncodedExamples`.
- `save_finetuned` / `load_finetuned`: the fine-tuned model directory

      DIR/model.keras         the whole task model (float32, uncompiled), loads with
                              `keras.saving.load_model` once `spanbert_tf` is imported
      DIR/task.json           {"task", "labels", "max_seq_length", "lowercase", ...task fields}
      DIR/vocab.txt           the tokenizer's vocabulary
      DIR/config.json         the encoder's SpanBertConfig
      DIR/metrics.json        run outputs: metrics on the dev/eval file
      DIR/predictions.jsonl   one JSON object per example

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_training_arguments(parser, epochs=10, max_seq_length=128)
    >>> args = parser.parse_args(["--init-checkpoint", "ckpt/", "--output-dir", "out/",
    ...                           "--train-file", "train.tsv", "--max-steps", "100"])
    >>> settings = TrainingSettings.from_args(args)
    >>> settings.train_steps(num_examples=10_000)  # 10 epochs x 313 batches, capped
    100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from pipelines.callbacks import TrainingLogger
from pipelines.finetune.features import (EncodedExamples, check_input_file, model_inputs,
                                         prediction_batches, progress_bar)
from pipelines.optimization import create_optimizer
from pipelines.pretrain import PRECISIONS, multi_step_train_function, strategy_name
from pipelines.strategy import create_strategy, per_replica_batch_size
from spanbert_tf.checkpoints import load_encoder
from spanbert_tf.models.encoder import SpanBertEncoder
from spanbert_tf.tokenizer import SpanBertTokenizer, vocabulary_is_uncased

MODEL_FILE = "model.keras"
TASK_FILE = "task.json"
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
TRAINING_LOG_FILE = "training_log.jsonl"
REQUIRED_TASK_FIELDS = ("task", "labels", "max_seq_length", "lowercase")


# ---------------------------------------------------------------- settings

@dataclasses.dataclass
class TrainingSettings:
    """Everything `train_model` needs; `from_args` fills it from the shared flags.

    Attributes:
        init_checkpoint: pretrained checkpoint or fine-tuned directory to start from.
        output_dir: where the fine-tuned model, metrics and predictions go.
        train_file, dev_file: task data (dev optional: evaluated after training).
        epochs: passes over the training rows (fractions allowed).
        batch_size: global batch (split over the replicas).
        learning_rate, warmup_fraction, weight_decay: AdamW with linear warm-up over
            `warmup_fraction` of the steps, then linear decay to 0.
        head_learning_rate: peak learning rate of the task head's variables (everything
            outside the encoder); None = `learning_rate`. Same schedule shape.
        max_seq_length: tokens per input row, [CLS]/[SEP] included.
        cpu_replicas: N > 1 logical CPUs under MirroredStrategy (no GPU needed).
        precision: "fp32", "mixed_float16" or "mixed_bfloat16".
        seed: head initialisation, dropout and shuffling.
        max_steps: cap on the optimizer steps (quick runs).
        max_train_examples: use only the first N training examples of the file.
        steps_per_execution: training steps per tf.function call.
        lowercase: None = from the vocabulary; True/False forces uncased/cased.
        log_every: steps per logged window.
        progress: progress bars on a terminal.
    """

    init_checkpoint: str
    output_dir: str
    train_file: str
    dev_file: str | None = None
    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float = 2e-5
    head_learning_rate: float | None = None
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_seq_length: int = 128
    cpu_replicas: int = 0
    precision: str = "fp32"
    seed: int = 0
    max_steps: int | None = None
    max_train_examples: int | None = None
    steps_per_execution: int = 1
    lowercase: bool | None = None
    log_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_seq_length", "steps_per_execution", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, "
                                 f"got {value!r}")
        for name in ("max_steps", "max_train_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not self.epochs > 0:
            raise ValueError(f"--epochs must be > 0, got {self.epochs}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise ValueError(f"--head-learning-rate must be > 0, got {self.head_learning_rate}")
        if not 0 <= self.warmup_fraction <= 1:
            raise ValueError(f"--warmup-fraction must lie in [0, 1], got {self.warmup_fraction}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {sorted(PRECISIONS)}, "
                             f"got {self.precision!r}")
        if self.max_seq_length > 512:
            raise ValueError(f"--max-seq-length {self.max_seq_length} exceeds BERT's 512 "
                             f"positions")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainingSettings":
        names = {field.name for field in dataclasses.fields(cls)}
        values = {name: getattr(args, name) for name in names if hasattr(args, name)}
        if hasattr(args, "no_progress"):
            values["progress"] = not args.no_progress
        return cls(**values)

    def train_steps(self, num_examples: int) -> int:
        """Optimizer steps: epochs x batches per epoch, capped by max_steps, rounded up
        to a multiple of steps_per_execution."""
        if num_examples < 1:
            raise ValueError("no training examples")
        steps = math.ceil(self.epochs * num_examples / self.batch_size)
        if self.max_steps is not None:
            steps = min(steps, self.max_steps)
        return math.ceil(steps / self.steps_per_execution) * self.steps_per_execution

    def warmup_steps(self, total_steps: int) -> int:
        return int(round(self.warmup_fraction * total_steps))

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def head_multipliers(model: keras.Model, encoder: keras.Model,
                     settings: TrainingSettings) -> dict[str, float]:
    """Learning-rate factors putting the head's variables at `--head-learning-rate`."""
    if settings.head_learning_rate is None:
        return {}
    encoder_paths = {v.path for v in encoder.trainable_variables}
    factor = settings.head_learning_rate / settings.learning_rate
    return {v.path: factor for v in model.trainable_variables if v.path not in encoder_paths}


def add_training_arguments(parser: argparse.ArgumentParser, **task_defaults: Any) -> None:
    """Adds the shared `finetune` flags; `task_defaults` override their defaults
    (e.g. `epochs=10, max_seq_length=128`)."""
    data = parser.add_argument_group("model and data")
    data.add_argument("--init-checkpoint", required=True, metavar="PATH",
                      help="checkpoint to start from: a converted spanbert-tf directory "
                           "(convert-checkpoint output), a Hugging Face BERT directory "
                           "(config.json + model.safetensors/pytorch_model.bin + "
                           "vocab.txt), a fairseq SpanBERT file, or a fine-tuned "
                           "directory (its encoder is reused)")
    data.add_argument("--output-dir", required=True, metavar="DIR",
                      help="fine-tuned model (model.keras, task.json, vocab.txt, "
                           "config.json), metrics.json and predictions.jsonl go here")
    data.add_argument("--train-file", required=True, metavar="FILE", help="training data")
    data.add_argument("--dev-file", metavar="FILE", default=None,
                      help="evaluated after training (metrics.json, predictions.jsonl)")
    data.add_argument("--max-seq-length", type=int, default=128,
                      help="tokens per input, [CLS]/[SEP] included (default: %(default)s)")
    data.add_argument("--max-train-examples", type=int, default=None, metavar="N",
                      help="use only the first N training examples")
    case = data.add_mutually_exclusive_group()
    case.add_argument("--lowercase", dest="lowercase", action="store_const", const=True,
                      default=None, help="uncased tokenizer (default: uncased when no "
                                         "vocabulary token has an upper-case letter)")
    case.add_argument("--cased", dest="lowercase", action="store_const", const=False,
                      help="cased tokenizer (see --lowercase)")

    schedule = parser.add_argument_group("optimisation (AdamW, warm-up then linear decay)")
    schedule.add_argument("--epochs", type=float, default=3.0,
                          help="passes over the training data (default: %(default)s)")
    schedule.add_argument("--batch-size", type=int, default=32,
                          help="global batch size, split over replicas (default: %(default)s)")
    schedule.add_argument("--learning-rate", type=float, default=2e-5,
                          help="peak learning rate (default: %(default)s)")
    schedule.add_argument("--head-learning-rate", type=float, default=None, metavar="LR",
                          help="peak learning rate of the task head (the layers outside the "
                               "encoder), e.g. to train a small new head faster than the "
                               "pretrained encoder (default: --learning-rate)")
    schedule.add_argument("--warmup-fraction", type=float, default=0.1,
                          help="fraction of the steps spent warming up (default: %(default)s)")
    schedule.add_argument("--weight-decay", type=float, default=0.01,
                          help="decoupled weight decay, not on biases and LayerNorm "
                               "(default: %(default)s)")
    schedule.add_argument("--max-steps", type=int, default=None, metavar="N",
                          help="stop after N optimizer steps (caps --epochs; the schedule "
                               "decays over the capped run)")
    schedule.add_argument("--seed", type=int, default=0,
                          help="seed of the head initialisation, dropout and shuffling "
                               "(default: %(default)s)")

    run = parser.add_argument_group("execution")
    run.add_argument("--cpu-replicas", type=int, default=0, metavar="N",
                     help="without GPUs: N logical CPU devices under MirroredStrategy "
                          "(default: one device, or all GPUs)")
    run.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                     help="compute precision (default: %(default)s)")
    run.add_argument("--steps-per-execution", type=int, default=1,
                     help="training steps per tf.function call (default: %(default)s)")
    run.add_argument("--log-every", type=int, default=50,
                     help="steps per logged window (default: %(default)s)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(task_defaults) - known)
    if unknown:
        raise ValueError(f"unknown training flag default(s): {unknown}")
    parser.set_defaults(**task_defaults)


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared `evaluate` flags: --model-dir, --eval-file, --output-dir, --batch-size."""
    parser.add_argument("--model-dir", required=True, metavar="DIR",
                        help="a fine-tuned model directory (the finetune --output-dir)")
    parser.add_argument("--eval-file", required=True, metavar="FILE",
                        help="data to predict; metrics need its labels")
    parser.add_argument("--output-dir", required=True, metavar="DIR",
                        help="predictions.jsonl and metrics.json go here")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="examples per prediction batch (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


# ---------------------------------------------------------------- loading

def checkpoint_directory(path: str) -> str:
    return path if os.path.isdir(path) else (os.path.dirname(path) or ".")


def read_task_file(directory: str) -> dict[str, Any] | None:
    """task.json of a fine-tuned directory, or None when there is none."""
    path = os.path.join(directory, TASK_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        try:
            values = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    missing = [field for field in REQUIRED_TASK_FIELDS if field not in values]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}")
    return values


def load_tokenizer(path: str, lowercase: bool | None = None) -> SpanBertTokenizer:
    """The tokenizer of a checkpoint: its vocab.txt, cased or uncased (see module doc)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    directory = checkpoint_directory(path)
    vocab = os.path.join(directory, VOCAB_FILE)
    if not os.path.isfile(vocab):
        raise FileNotFoundError(f"{path}: no {VOCAB_FILE} beside the checkpoint (convert it "
                                f"with convert-checkpoint --vocab, or copy the vocabulary "
                                f"it was trained with into {directory})")
    if lowercase is None:
        task = read_task_file(directory)
        lowercase = bool(task["lowercase"]) if task else vocabulary_is_uncased(vocab)
    return SpanBertTokenizer(vocab, lowercase=lowercase)


def load_encoder_weights(path: str) -> SpanBertEncoder:
    """The pretrained encoder of any checkpoint format or fine-tuned directory."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    if os.path.isdir(path) and read_task_file(path) is not None:
        return load_finetuned(path)[0].encoder
    return load_encoder(path)


def load_pretrained(path: str, lowercase: bool | None = None
                    ) -> tuple[SpanBertEncoder, SpanBertTokenizer]:
    """(encoder, tokenizer) of a checkpoint; see `load_encoder_weights`/`load_tokenizer`."""
    tokenizer = load_tokenizer(path, lowercase)
    encoder = load_encoder_weights(path)
    check_vocab_fits(tokenizer, encoder, path)
    return encoder, tokenizer


def check_vocab_fits(tokenizer: SpanBertTokenizer, encoder: SpanBertEncoder, path: str) -> None:
    if tokenizer.vocab_size > encoder.config.vocab_size:
        raise ValueError(f"{path}: vocab.txt has {tokenizer.vocab_size} entries but the "
                         f"encoder has {encoder.config.vocab_size} word embeddings")


# ---------------------------------------------------------------- training

@dataclasses.dataclass
class TrainingRun:
    """What `train_model` did (also written to metrics.json by the tasks)."""

    steps: int
    warmup_steps: int
    examples: int
    replicas: int
    seconds: float

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train_model(
    settings: TrainingSettings,
    build_model: Callable[[SpanBertEncoder], keras.Model],
    loss: Any,
    metrics: Sequence[Any] | None,
    make_dataset: Callable[[int, tf.distribute.InputContext | None], tf.data.Dataset],
    num_examples: int,
    print_fn: Callable[[str], None] = print,
) -> tuple[keras.Model, TrainingRun]:
    """Fine-tunes a task model and returns it with a record of the run.

    Args:
        settings: the resolved flags.
        build_model: encoder -> task model (called inside the strategy scope, after the
            pretrained encoder is loaded there).
        loss, metrics: as for `keras.Model.compile`.
        make_dataset: (per-replica batch size, input context) -> an endless dataset of
            (x, y) batches; called once per input pipeline.
        num_examples: training rows per epoch (for the step count).

    Returns:
        (model, TrainingRun).
    """
    strategy = create_strategy(settings.cpu_replicas)
    per_replica = per_replica_batch_size(settings.batch_size, strategy)
    total_steps = settings.train_steps(num_examples)
    warmup_steps = settings.warmup_steps(total_steps)
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(PRECISIONS[settings.precision])
    try:
        keras.utils.set_random_seed(settings.seed)
        with strategy.scope():
            encoder = load_encoder_weights(settings.init_checkpoint)
            model = build_model(encoder)
            optimizer = create_optimizer(total_steps, peak_learning_rate=settings.learning_rate,
                                         warmup_steps=warmup_steps,
                                         weight_decay=settings.weight_decay,
                                         learning_rate_multipliers=head_multipliers(
                                             model, encoder, settings))
            model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics or []),
                          steps_per_execution=settings.steps_per_execution)
        build_for_fit(model, make_dataset(per_replica, None), strategy)
        # Keras' own multi-step function fails under MirroredStrategy (see
        # pipelines.pretrain.multi_step_train_function); the stream here is endless too.
        model.train_function = multi_step_train_function(
            model, settings.steps_per_execution, jit_compile=False)
        dataset = strategy.distribute_datasets_from_function(
            lambda context: make_dataset(context.get_per_replica_batch_size(
                settings.batch_size), context))
        print_fn(f"{strategy_name(strategy)}: {strategy.num_replicas_in_sync} replica(s), "
                 f"batch {settings.batch_size} ({per_replica} per replica), "
                 f"{num_examples} training rows, {total_steps} steps "
                 f"({warmup_steps} warm-up), peak LR {settings.learning_rate:g}, "
                 f"precision {settings.precision}")
        os.makedirs(settings.output_dir, exist_ok=True)
        log_file = os.path.join(settings.output_dir, TRAINING_LOG_FILE)
        if os.path.exists(log_file):
            os.remove(log_file)
        logger = TrainingLogger(
            settings.log_every, total_steps, settings.batch_size, settings.max_seq_length,
            metrics_file=log_file, progress=settings.progress, print_fn=print_fn,
            metric_names=logged_metric_names(metrics), description="fine-tuning")
        started = time.perf_counter()
        model.fit(dataset, epochs=1, steps_per_epoch=total_steps, callbacks=[logger],
                  verbose=0, shuffle=False)
        seconds = time.perf_counter() - started
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    run = TrainingRun(steps=total_steps, warmup_steps=warmup_steps,
                      examples=total_steps * settings.batch_size,
                      replicas=strategy.num_replicas_in_sync, seconds=round(seconds, 2))
    print_fn(f"trained {run.steps} steps in {run.seconds:.1f} s")
    return model, run


def build_for_fit(model: keras.Model, dataset: tf.data.Dataset,
                  strategy: tf.distribute.Strategy) -> None:
    """Builds the compiled loss and metrics from one local batch, then turns off the
    build `fit` would do.

    Under a strategy, Keras 3 `fit` builds them from the first distributed batch,
    which it first averages over replicas (`strategy.reduce("MEAN", batch)`):
    length-bucketed replicas hold batches of different lengths, and that reduce fails.
    """
    batch = next(iter(dataset.take(1)))
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def logged_metric_names(metrics: Sequence[Any] | None) -> tuple[str, ...]:
    names = ["loss"] + [metric if isinstance(metric, str) else getattr(metric, "name", "")
                        for metric in metrics or []]
    return tuple(dict.fromkeys(name for name in names if name))


# ---------------------------------------------------------------- prediction

def predict_logits(model: keras.Model, encoded: EncodedExamples, batch_size: int,
                   max_seq_length: int, pad_id: int = 0, progress: bool = True
                   ) -> np.ndarray | list[np.ndarray]:
    """The model's `logits` for every row of `encoded`, in row order.

    Sequence-level models give an array [rows, num_labels]; token-level models a list
    of [row length, num_labels] arrays (padding removed).
    """
    forward = tf.function(lambda inputs: model(inputs, training=False)["logits"],
                          reduce_retracing=True)
    results: list[np.ndarray | None] = [None] * len(encoded)
    lengths = encoded.lengths
    bar = progress_bar(len(encoded), "predicting") if progress else None
    for batch in prediction_batches(encoded, batch_size, max_seq_length, pad_id):
        logits = forward(model_inputs(batch)).numpy()
        for row, values in zip(batch["row"].numpy(), logits):
            results[row] = values[:lengths[row]] if values.ndim == 2 else values
        if bar is not None:
            bar.update(len(logits))
    if bar is not None:
        bar.close()
    if results and results[0] is not None and results[0].ndim == 1:
        return np.stack(results)
    return results


# ---------------------------------------------------------------- saving

def float32_policies(value: Any) -> Any:
    """A config with every mixed-precision dtype policy replaced by float32."""
    if isinstance(value, dict):
        return {key: ("float32" if key == "dtype" and is_mixed_policy(item)
                      else float32_policies(item)) for key, item in value.items()}
    if isinstance(value, list):
        return [float32_policies(item) for item in value]
    return value


def is_mixed_policy(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith("mixed")
    if isinstance(value, dict):
        name = value.get("config", {}).get("name", "") if isinstance(
            value.get("config"), dict) else ""
        return str(name).startswith("mixed")
    return False


def inference_copy(model: keras.Model) -> keras.Model:
    """The model rebuilt from its config in float32, with the trained weights and no
    optimizer or compile state (what serving loads)."""
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        copy = type(model).from_config(float32_policies(model.get_config()))
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def save_finetuned(directory: str, model: keras.Model, tokenizer: SpanBertTokenizer,
                   metadata: dict[str, Any]) -> str:
    """Writes model.keras, task.json, vocab.txt and config.json to `directory`."""
    missing = [field for field in REQUIRED_TASK_FIELDS if field not in metadata]
    if missing:
        raise ValueError(f"task metadata lacks {missing}")
    os.makedirs(directory, exist_ok=True)
    inference_copy(model).save(os.path.join(directory, MODEL_FILE))
    model.encoder.config.save(os.path.join(directory, CONFIG_FILE))
    tokenizer.save_vocabulary(os.path.join(directory, VOCAB_FILE))
    write_json(os.path.join(directory, TASK_FILE), metadata)
    return directory


def load_finetuned(directory: str, task: str | None = None
                   ) -> tuple[keras.Model, SpanBertTokenizer, dict[str, Any]]:
    """(model, tokenizer, task metadata) of a fine-tuned directory.

    Args:
        directory: a `save_finetuned` directory.
        task: when given, the directory must hold a model of this task.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such model directory")
    metadata = read_task_file(directory)
    if metadata is None:
        raise ValueError(f"{directory}: not a fine-tuned model directory (no {TASK_FILE}; "
                         f"expected {MODEL_FILE}, {TASK_FILE}, {VOCAB_FILE}, {CONFIG_FILE})")
    if task is not None and metadata["task"] != task:
        raise ValueError(f"{directory} holds a {metadata['task']!r} model, not {task!r}")
    for name in (MODEL_FILE, VOCAB_FILE):
        if not os.path.isfile(os.path.join(directory, name)):
            raise FileNotFoundError(f"{directory}: {name} is missing")
    import spanbert_tf  # noqa: F401  (registers the task model classes)

    model = keras.saving.load_model(os.path.join(directory, MODEL_FILE), compile=False)
    tokenizer = SpanBertTokenizer(os.path.join(directory, VOCAB_FILE),
                                  lowercase=bool(metadata["lowercase"]))
    return model, tokenizer, metadata


def write_json(path: str, values: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=2, sort_keys=True, default=json_default)
        handle.write("\n")


def write_predictions(path: str, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=json_default) + "\n")


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_run_outputs(directory: str, metrics: dict[str, Any],
                      predictions: Sequence[dict[str, Any]]) -> None:
    """metrics.json and predictions.jsonl in `directory`."""
    os.makedirs(directory, exist_ok=True)
    write_json(os.path.join(directory, METRICS_FILE), metrics)
    write_predictions(os.path.join(directory, PREDICTIONS_FILE), predictions)


# ---------------------------------------------------------------- task commands

# (model, tokenizer, task metadata, data file, batch size, progress) -> (metrics, predictions)
EvaluateFile = Callable[[keras.Model, SpanBertTokenizer, dict[str, Any], str, int, bool],
                        tuple[dict[str, Any], list[dict[str, Any]]]]


def start_finetuning(args: argparse.Namespace) -> tuple[TrainingSettings, SpanBertTokenizer]:
    """Settings from the flags (validated), input files checked, the tokenizer loaded."""
    settings = TrainingSettings.from_args(args)
    # The CPU can only be split into replicas before TensorFlow runs its first op
    # (tokenizing does), so the strategy is made first; train_model gets the same one.
    create_strategy(settings.cpu_replicas)
    check_input_file(settings.train_file, "--train-file")
    if settings.dev_file:
        check_input_file(settings.dev_file, "--dev-file")
    return settings, load_tokenizer(settings.init_checkpoint, settings.lowercase)


def finish_finetuning(settings: TrainingSettings, model: keras.Model,
                      tokenizer: SpanBertTokenizer, metadata: dict[str, Any],
                      results: dict[str, Any], evaluate_file: EvaluateFile) -> dict[str, Any]:
    """Evaluates on --dev-file (results["dev"]), saves the fine-tuned directory and
    writes metrics.json (+ predictions.jsonl with a dev file); returns `results`."""
    predictions = None
    if settings.dev_file:
        results["dev"], predictions = evaluate_file(model, tokenizer, metadata,
                                                    settings.dev_file, settings.batch_size,
                                                    settings.progress)
    save_finetuned(settings.output_dir, model, tokenizer, metadata)
    write_json(os.path.join(settings.output_dir, METRICS_FILE), results)
    if predictions is not None:
        write_predictions(os.path.join(settings.output_dir, PREDICTIONS_FILE), predictions)
    return results


def run_evaluation(args: argparse.Namespace, task: str,
                   evaluate_file: EvaluateFile) -> dict[str, Any]:
    """`spanbert-tf evaluate TASK`: predicts --eval-file with --model-dir and writes
    metrics.json and predictions.jsonl to --output-dir."""
    check_input_file(args.eval_file, "--eval-file")
    model, tokenizer, metadata = load_finetuned(args.model_dir, task=task)
    metrics, predictions = evaluate_file(model, tokenizer, metadata, args.eval_file,
                                         args.batch_size, not args.no_progress)
    results = {"task": task, "model_dir": os.path.abspath(args.model_dir), "eval": metrics}
    write_run_outputs(args.output_dir, results, predictions)
    return results
