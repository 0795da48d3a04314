"""SpanBERT pretraining: `SpanBertPretrainer` driven by Keras `fit` under tf.distribute.

`run_pretraining(PretrainingOptions(...))` does the whole job, in this order, so that
every user error surfaces before any training starts:

1. Settings: data shards (a missing path or an empty shard set is an error), vocab,
   span-masking config, optimizer recipe, steps and batch (`resolve_plan`).
2. Strategy (`pipelines.strategy.create_strategy`): MultiWorkerMirroredStrategy when
   TF_CONFIG names several workers, MirroredStrategy over local GPUs, or over
   `cpu_replicas` logical CPUs, else one device. The global batch must split evenly
   over the replicas.
3. Model: fresh from the config, or initialised from a checkpoint (spanbert-tf native,
   Hugging Face or fairseq; MLM and SBO heads when it has them). A config that does not
   match the checkpoint, or a model directory trained with another config, is an error.
4. Optimizer: `pipelines.optimization.create_optimizer` (AdamW, no decay on biases and
   LayerNorm, warm-up then linear decay, global-norm clipping after the all-reduce).
5. Resume: the latest checkpoint of MODEL_DIR/checkpoints is restored (weights,
   optimizer step and moments, data position), then `fit` runs the remaining steps.
6. Input: `strategy.distribute_datasets_from_function`, per-replica batches, each
   input pipeline starting at its position in the span-masking stream.
7. The finished model is written to MODEL_DIR/final in the native format (with config
   and vocab) and as `pretrainer.keras`.

Resuming the data stream: the stream of an input pipeline is a deterministic function
of (seed, data files, masking config, pipeline id): every example is masked with a seed
derived from the run seed and its index in the stream (`pipelines.pretraining_dataset`).
A checkpoint stores the number of examples the run consumed; a restarted run asks for
the stream starting at that index (`start_example`), so it sees exactly the examples an
uninterrupted run would have seen. The builder skips raw records before parsing and
masking (about 60k short records/s here). The alternative, checkpointing the tf.data
iterator, would store every shuffle buffer in every checkpoint and needs the iterator,
which `fit` keeps to itself. The position survives a change of the replica count on
one worker; the settings that define the stream are recorded in
MODEL_DIR/training_run.json and a resume with different ones is refused.

Model directory:
    training_run.json   the resolved settings (checked on resume)
    checkpoints/        ckpt-STEP.{index,data-*} and the `checkpoint` state file
    logs/               TensorBoard (losses, accuracies, learning rate, throughput)
    metrics.jsonl       the same numbers, one JSON row per logging window
    final/              native checkpoint + vocab.txt + pretrainer.keras

Example:
    >>> from pipelines.pretrain import PretrainingOptions, run_pretraining
    >>> options = PretrainingOptions(data="shards/", model_dir="run/", config="tiny",
    ...                              train_steps=100, global_batch_size=16)
    >>> result = run_pretraining(options)  # doctest: +SKIP
    >>> result.status, result.final_step  # doctest: +SKIP
    ('completed', 100)
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
from typing import Any, Callable

import keras
import tensorflow as tf

from pipelines import callbacks as cb
from pipelines.optimization import RECIPES, create_optimizer
from pipelines.pretraining_dataset import make_pretraining_dataset
from pipelines.pretraining_records import SUMMARY_FILE
from pipelines.span_masking import SpanMaskingConfig, SpecialTokenIds
from pipelines.strategy import (create_strategy,
                                per_replica_batch_size, tf_config_workers)
from spanbert_tf.checkpoints import load_checkpoint, save_checkpoint
from spanbert_tf.checkpoints.native import count_vocab_entries
from spanbert_tf.config import PRESETS, SpanBertConfig
from spanbert_tf.models.pretrainer import SpanBertPretrainer

PRECISIONS = {"fp32": "float32", "mixed_float16": "mixed_float16",
              "mixed_bfloat16": "mixed_bfloat16"}
SHARD_PATTERNS = ("*.tfrecord", "*.tfrecords", "*.tfrec")
# Fields that only change training, not the weights' meaning: a --config may differ
# from an initial checkpoint's config in these.
TRAINING_ONLY_FIELDS = ("hidden_dropout", "attention_dropout", "initializer_range", "sbo_weight")
RUN_FILE = "training_run.json"
CHECKPOINT_DIR = "checkpoints"
FINAL_DIR = "final"
KERAS_FILE = "pretrainer.keras"
# Settings that define the data stream; a resume must not change them.
STREAM_FIELDS = ("data_files", "seed", "masking", "input_pipelines", "vocab_entries")


@dataclasses.dataclass
class PretrainingOptions:
    """What the user asks for; None means "from the recipe / data / checkpoint".

    Attributes:
        data: directory of TFRecord shards (prepare-pretraining output), a glob, or a
            comma-separated list of files.
        model_dir: checkpoints, logs and the final model go here; a run resumes from it.
        config: preset name ("tiny", "base", "large"), SpanBertConfig JSON path or
            object. Default: the initial checkpoint's config, else "base". A preset
            takes its vocabulary size from the vocab file.
        init_checkpoint: checkpoint to start from (native, Hugging Face or fairseq).
        init_format: its format ("auto", "native", "hf", "fairseq").
        vocab: WordPiece vocab.txt of the shards. Default: the one recorded in the
            data directory's summary, else the initial checkpoint's.
        recipe: a key of `pipelines.optimization.RECIPES`; explicit values override it.
        train_steps, global_batch_size, max_seq_length, learning_rate, warmup_steps,
            weight_decay, adam_epsilon, clip_norm: override the recipe.
        masking: SpanMaskingConfig, or its JSON path (its max_seq_length is replaced by
            the resolved max_seq_length).
        seed: model initialisation and data stream seed.
        shuffle_buffer: examples in the shuffle buffer of each input pipeline.
        save_every, keep_checkpoints: checkpoint period (steps) and how many to keep.
        log_every: logging window (steps).
        steps_per_execution: training steps per `tf.function` call.
        precision: "fp32", "mixed_float16" or "mixed_bfloat16".
        xla: compile the training step with XLA (single replica only).
        cpu_replicas: N > 1 logical CPU devices under MirroredStrategy (no GPU needed).
        progress: show a progress bar on a terminal.
    """

    data: str
    model_dir: str
    config: str | SpanBertConfig | None = None
    init_checkpoint: str | None = None
    init_format: str = "auto"
    vocab: str | None = None
    recipe: str = "spanbert-base"
    train_steps: int | None = None
    global_batch_size: int | None = None
    max_seq_length: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    adam_epsilon: float | None = None
    clip_norm: float | None = None
    masking: SpanMaskingConfig | str | None = None
    seed: int = 0
    shuffle_buffer: int = 10_000
    save_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 100
    steps_per_execution: int = 1
    precision: str = "fp32"
    xla: bool = False
    cpu_replicas: int = 0
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """Every resolved setting of a run (written to training_run.json)."""

    data_files: tuple[str, ...]
    vocab_file: str
    vocab_entries: int
    masking: SpanMaskingConfig
    train_steps: int
    global_batch_size: int
    optimizer_args: dict[str, Any]
    seed: int
    shuffle_buffer: int
    precision: str

    def record(self, config: SpanBertConfig, input_pipelines: int) -> dict[str, Any]:
        return {
            "config": config.to_dict(),
            "data_files": [os.path.basename(path) for path in self.data_files],
            "vocab_entries": self.vocab_entries,
            "masking": self.masking.to_dict(),
            "seed": self.seed,
            "input_pipelines": input_pipelines,
            "train_steps": self.train_steps,
            "global_batch_size": self.global_batch_size,
            "optimizer": self.optimizer_args,
            "precision": self.precision,
        }


@dataclasses.dataclass
class PretrainingResult:
    """What a run did.

    Attributes:
        status: "completed", "preempted" (SIGTERM: checkpoint saved, run again to resume)
            or "nan" (stopped on a non-finite loss, last good checkpoint kept).
        start_step: the step the run started (or resumed) from.
        final_step: the optimizer step at the end.
        examples_seen: examples consumed since the first run in this model_dir.
        checkpoint: the latest checkpoint path.
        export_dir: MODEL_DIR/final when the run completed.
        history: the logged windows (the rows of metrics.jsonl written by this run).
        model: the trained SpanBertPretrainer.
    """

    status: str
    start_step: int
    final_step: int
    examples_seen: int
    checkpoint: str | None
    export_dir: str | None
    history: list[dict[str, Any]]
    model: SpanBertPretrainer

    @property
    def exit_code(self) -> int:
        return {"completed": 0, "nan": 1, "preempted": 143}[self.status]


# ---------------------------------------------------------------- settings

def directory_shards(directory: str) -> list[str]:
    """Training shards of a prepare-pretraining directory (its summary.json lists them;
    held-out shards are not training data), else every TFRecord file in it."""
    summary = read_summary(directory)
    if summary.get("shards") is not None:
        return [os.path.join(directory, shard["file"]) for shard in summary["shards"]]
    return sorted({f for pattern in SHARD_PATTERNS
                   for f in tf.io.gfile.glob(os.path.join(directory, pattern))})


def resolve_data_files(spec: str) -> list[str]:
    """A directory of shards, a glob, or comma-separated files -> sorted file list."""
    if not spec:
        raise ValueError("no pretraining data given (--data)")
    files: list[str] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if tf.io.gfile.isdir(part):
            matches = directory_shards(part)
            if not matches:
                raise ValueError(f"{part}: no TFRecord shards in this directory (expected "
                                 f"{', '.join(SHARD_PATTERNS)}; run prepare-pretraining)")
        elif glob.has_magic(part):
            parent = os.path.dirname(part) or "."
            if not tf.io.gfile.exists(parent):
                raise FileNotFoundError(f"{parent}: no such data directory")
            matches = sorted(tf.io.gfile.glob(part))
            if not matches:
                raise ValueError(f"{part}: the pattern matches no shard")
        elif tf.io.gfile.exists(part):
            matches = [part]
        else:
            raise FileNotFoundError(f"{part}: no such data file or directory")
        missing = [path for path in matches if not tf.io.gfile.exists(path)]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: listed in {part}/{SUMMARY_FILE} but missing")
        files.extend(matches)
    if all(tf.io.gfile.stat(path).length == 0 for path in files):
        raise ValueError(f"{spec}: the shard set is empty ({len(files)} file(s) without "
                         f"a single record)")
    return sorted(set(files))


def read_summary(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, SUMMARY_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None


def read_data_summary(data_files: list[str]) -> dict[str, Any]:
    """The summary.json prepare-pretraining writes beside the shards, if any."""
    return read_summary(os.path.dirname(data_files[0]))


def checkpoint_vocab(init_checkpoint: str | None) -> str | None:
    if not init_checkpoint:
        return None
    directory = init_checkpoint if os.path.isdir(init_checkpoint) else os.path.dirname(
        init_checkpoint)
    candidate = os.path.join(directory or ".", "vocab.txt")
    return candidate if os.path.isfile(candidate) else None


def resolve_vocab(options: PretrainingOptions, summary: dict[str, Any],
                  data_files: list[str]) -> str:
    vocab = options.vocab
    recorded = summary.get("vocab_file")
    if vocab is None and recorded:
        vocab = recorded if os.path.isabs(recorded) else os.path.join(
            os.path.dirname(data_files[0]), recorded)
        if not os.path.isfile(vocab):
            raise FileNotFoundError(f"{vocab}: the vocabulary named in the data summary is "
                                    f"missing; pass --vocab")
    vocab = vocab or checkpoint_vocab(options.init_checkpoint)
    if vocab is None:
        raise ValueError("no vocabulary: pass --vocab (the vocab.txt the shards were "
                         "tokenised with)")
    if not os.path.isfile(vocab):
        raise FileNotFoundError(f"{vocab}: no such vocabulary file")
    return vocab


def resolve_masking(options: PretrainingOptions, max_seq_length: int) -> SpanMaskingConfig:
    masking = options.masking
    if masking is None:
        masking = SpanMaskingConfig()
    elif not isinstance(masking, SpanMaskingConfig):
        masking = SpanMaskingConfig.load(masking)
    if masking.max_seq_length == max_seq_length:
        return masking
    changes: dict[str, Any] = {"max_seq_length": max_seq_length}
    if masking.max_predictions is not None and masking.max_predictions > max_seq_length:
        changes["max_predictions"] = None
    return masking.replace(**changes)


def resolve_plan(options: PretrainingOptions) -> TrainingPlan:
    """Checks and resolves everything that needs no TensorFlow device."""
    data_files = resolve_data_files(options.data)
    summary = read_data_summary(data_files)
    vocab_file = resolve_vocab(options, summary, data_files)
    if options.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {options.recipe!r}; choose from {sorted(RECIPES)}")
    recipe = RECIPES[options.recipe]
    data_length = summary.get("max_seq_length")
    max_seq_length = given_or(options.max_seq_length, data_length or recipe.max_seq_length)
    if data_length and max_seq_length < data_length:
        raise ValueError(f"--max-seq-length {max_seq_length} is shorter than the shards' "
                         f"records ({data_length} tokens, from the data summary)")
    optimizer_args = recipe.optimizer_args()
    overrides = {"peak_learning_rate": options.learning_rate,
                 "warmup_steps": options.warmup_steps, "weight_decay": options.weight_decay,
                 "epsilon": options.adam_epsilon, "clip_norm": options.clip_norm}
    optimizer_args.update({k: v for k, v in overrides.items() if v is not None})
    train_steps = given_or(options.train_steps, recipe.total_steps)
    global_batch_size = given_or(options.global_batch_size, recipe.global_batch_size)
    check_positive(train_steps=train_steps, global_batch_size=global_batch_size,
                   max_seq_length=max_seq_length,
                   save_every=options.save_every, keep_checkpoints=options.keep_checkpoints,
                   log_every=options.log_every, steps_per_execution=options.steps_per_execution,
                   shuffle_buffer=options.shuffle_buffer)
    if options.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {options.precision!r}; choose from "
                         f"{sorted(PRECISIONS)}")
    return TrainingPlan(
        data_files=tuple(data_files), vocab_file=vocab_file,
        vocab_entries=count_vocab_entries(vocab_file),
        masking=resolve_masking(options, max_seq_length), train_steps=train_steps,
        global_batch_size=global_batch_size, optimizer_args=optimizer_args,
        seed=options.seed, shuffle_buffer=options.shuffle_buffer, precision=options.precision)


def given_or(value, default):
    return default if value is None else value


def check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------- model

def requested_config(options: PretrainingOptions, vocab_entries: int) -> SpanBertConfig | None:
    """--config as a SpanBertConfig (a preset gets the vocab's size), or None."""
    config = options.config
    if config is None or isinstance(config, SpanBertConfig):
        return config
    if config in PRESETS:
        return SpanBertConfig.preset(config, vocab_size=vocab_entries)
    return SpanBertConfig.load(config)


def architecture_differences(first: SpanBertConfig, second: SpanBertConfig) -> list[str]:
    a, b = first.to_dict(), second.to_dict()
    return [f"{name}: {a[name]!r} vs {b[name]!r}" for name in a
            if name not in TRAINING_ONLY_FIELDS and a[name] != b[name]]


def merge_with_checkpoint_config(requested: SpanBertConfig | None,
                                 loaded: SpanBertConfig, source: str) -> SpanBertConfig:
    if requested is None:
        return loaded
    differences = architecture_differences(requested, loaded)
    if differences:
        raise ValueError(
            f"--config does not match the initial checkpoint {source} "
            f"(--config vs checkpoint): {'; '.join(differences)}. Leave --config out to use "
            f"the checkpoint's config, or start from scratch without --init-checkpoint")
    return requested


def check_vocab_fits(config: SpanBertConfig, plan: TrainingPlan, source: str) -> None:
    if plan.vocab_entries > config.vocab_size:
        raise ValueError(f"{plan.vocab_file} has {plan.vocab_entries} entries but the model "
                         f"({source}) has vocab_size {config.vocab_size}")
    if plan.masking.max_seq_length > config.max_position_embeddings:
        raise ValueError(f"max_seq_length {plan.masking.max_seq_length} exceeds the model's "
                         f"max_position_embeddings {config.max_position_embeddings}")


def same_vocab(first: str, second: str) -> bool:
    with open(first, encoding="utf-8") as a, open(second, encoding="utf-8") as b:
        return [line.rstrip("\r\n") for line in a] == [line.rstrip("\r\n") for line in b]


def build_model(options: PretrainingOptions, plan: TrainingPlan,
                strategy: tf.distribute.Strategy,
                say: Callable[[str], None]) -> SpanBertPretrainer:
    """The pretrainer, created under the strategy; initialised from a checkpoint if asked."""
    requested = requested_config(options, plan.vocab_entries)
    if not options.init_checkpoint:
        config = requested or SpanBertConfig.preset("base", vocab_size=plan.vocab_entries)
        check_vocab_fits(config, plan, "--config")
        keras.utils.set_random_seed(plan.seed)
        with strategy.scope():
            return SpanBertPretrainer(config)
    source, report = load_checkpoint(options.init_checkpoint, format=options.init_format)
    config = merge_with_checkpoint_config(requested, source.config, options.init_checkpoint)
    check_vocab_fits(config, plan, options.init_checkpoint)
    shipped_vocab = checkpoint_vocab(options.init_checkpoint)
    if shipped_vocab and not same_vocab(shipped_vocab, plan.vocab_file):
        raise ValueError(f"the shards' vocabulary {plan.vocab_file} differs from the initial "
                         f"checkpoint's {shipped_vocab}: token ids would not mean the same")
    say(report.summary())
    keras.utils.set_random_seed(plan.seed)
    with strategy.scope():
        model = SpanBertPretrainer(config)
    model.set_weights(source.get_weights())
    return model


def compile_model(model: SpanBertPretrainer, plan: TrainingPlan, options: PretrainingOptions,
                  strategy: tf.distribute.Strategy) -> None:
    with strategy.scope():
        optimizer = create_optimizer(total_steps=plan.train_steps, **plan.optimizer_args)
        model.compile(optimizer=optimizer, steps_per_execution=options.steps_per_execution,
                      jit_compile=options.xla)
        model.optimizer.build(model.trainable_variables)
    skip_symbolic_build(model)
    model.train_function = multi_step_train_function(model, options.steps_per_execution,
                                                     options.xla)


def skip_symbolic_build(model: SpanBertPretrainer) -> None:
    """Turns off the first-batch build that Keras 3 `fit` runs under a strategy.

    `_maybe_symbolic_build` pulls a batch from a throwaway iterator and reduces it across
    replicas to build an unbuilt model; with MultiWorkerMirroredStrategy and dict inputs
    that reduce fails (keras-team/keras#20329). Model and optimizer are fully built
    here, so the step has nothing to build.
    """
    unbuilt = [layer.name for layer in model._flatten_layers() if not layer.built]
    if unbuilt or not model.optimizer.built:
        raise RuntimeError(f"the pretrainer should be built before fit; unbuilt: {unbuilt}")
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def multi_step_train_function(model: SpanBertPretrainer, steps_per_execution: int,
                              jit_compile: bool) -> Callable:
    """The function `fit` calls once per execution: `steps_per_execution` train steps.

    `fit` uses a prebuilt `model.train_function` as it is. Keras 3.15's own version
    fails under tf.distribute in two ways this one avoids:
    - with steps_per_execution > 1 it wraps every step in a `tf.cond` (for datasets
      that may run out), and an optimizer update that does a `merge_call` (any
      distributed update) fails inside it under MirroredStrategy (keras-team/keras#19246).
      The pretraining stream is infinite and the step count a multiple of
      steps_per_execution, so a plain loop of steps does;
    - it reduces the step's logs with `strategy.reduce("MEAN", log, axis=0)`, which fails
      on scalar logs under MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388);
      here they are reduced without an axis.
    """
    strategy = model.distribute_strategy

    def run_step(data):
        logs = strategy.run(model.train_step, args=(data,))
        return {name: strategy.reduce("MEAN", value, axis=None) for name, value in logs.items()}

    one_step = tf.function(run_step, jit_compile=jit_compile, reduce_retracing=True)

    @tf.function(reduce_retracing=True)
    def train_function(iterator):
        logs = one_step(next(iterator))
        for _ in tf.range(steps_per_execution - 1):
            logs = one_step(next(iterator))
        return logs

    return train_function


# ---------------------------------------------------------------- data

def special_token_ids(plan: TrainingPlan) -> SpecialTokenIds:
    return SpecialTokenIds.from_vocab(plan.vocab_file)


def distributed_dataset(plan: TrainingPlan, strategy: tf.distribute.Strategy,
                        examples_seen: int) -> tf.distribute.DistributedDataset:
    """Per-replica batches from every input pipeline, each starting where it stopped."""
    special_ids = special_token_ids(plan)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch_size = context.get_per_replica_batch_size(plan.global_batch_size)
        start = examples_seen // context.num_input_pipelines
        return make_pretraining_dataset(
            list(plan.data_files), plan.masking, special_ids, batch_size=batch_size,
            seed=plan.seed, shuffle_buffer=plan.shuffle_buffer, input_context=context,
            repeat=True, start_example=start)

    return strategy.distribute_datasets_from_function(dataset_fn)


# ---------------------------------------------------------------- the run

def worker_role(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """(is_chief, worker id) of this process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or tf_config_workers() <= 1:
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return is_chief, task_id


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    # tf.distribute.MultiWorkerMirroredStrategy's class is named CollectiveAllReduceStrategy.
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "MirroredStrategy"
    return "One device"


def check_resume_compatible(model_dir: str, record: dict[str, Any]) -> None:
    """Refuses to resume a run whose model or data stream settings changed."""
    path = os.path.join(model_dir, RUN_FILE)
    if not os.path.isfile(path) or tf.train.latest_checkpoint(
            os.path.join(model_dir, CHECKPOINT_DIR)) is None:
        return
    with open(path, encoding="utf-8") as handle:
        previous = json.load(handle)
    old_config = SpanBertConfig.from_dict(previous["config"])
    new_config = SpanBertConfig.from_dict(record["config"])
    differences = architecture_differences(new_config, old_config)
    if differences:
        raise ValueError(f"{model_dir} holds a run of another model (now vs recorded): "
                         f"{'; '.join(differences)}. Use a new --model-dir")
    changed = [name for name in STREAM_FIELDS if previous.get(name) != record.get(name)]
    if changed:
        details = "; ".join(f"{name}: {record.get(name)!r} vs {previous.get(name)!r}"
                            for name in changed)
        raise ValueError(f"cannot resume {model_dir}: the data stream settings changed "
                         f"(now vs recorded) {details}. Resume with the same settings or "
                         f"use a new --model-dir")


def export_final(model: SpanBertPretrainer, plan: TrainingPlan, model_dir: str, step: int,
                 is_chief: bool, worker_id: int) -> str:
    """Writes MODEL_DIR/final (native + .keras) atomically: temp dir, then rename."""
    final = os.path.join(model_dir, FINAL_DIR)
    staging = os.path.join(model_dir, f".{FINAL_DIR}-tmp-{worker_id}")
    shutil.rmtree(staging, ignore_errors=True)
    save_checkpoint(staging, model, vocab_file=plan.vocab_file,
                    source={"pretrained_steps": step, "data_files": len(plan.data_files)})
    model.save(os.path.join(staging, KERAS_FILE))
    if not is_chief:
        shutil.rmtree(staging, ignore_errors=True)
        return final
    previous = os.path.join(model_dir, f".{FINAL_DIR}-old")
    shutil.rmtree(previous, ignore_errors=True)
    if os.path.exists(final):
        os.replace(final, previous)
    os.replace(staging, final)
    shutil.rmtree(previous, ignore_errors=True)
    return final


def run_pretraining(options: PretrainingOptions,
                    print_fn: Callable[[str], None] = print) -> PretrainingResult:
    """Runs (or resumes) pretraining; see the module docstring."""
    plan = resolve_plan(options)
    strategy = create_strategy(options.cpu_replicas)
    per_replica = per_replica_batch_size(plan.global_batch_size, strategy)
    if options.xla and strategy.num_replicas_in_sync > 1:
        # The optimizer updates every replica's copy of a variable from one replica's
        # step; XLA cannot compile access to variables on another device.
        raise ValueError(f"--xla needs a single replica; {strategy_name(strategy)} has "
                         f"{strategy.num_replicas_in_sync} (XLA cannot compile the "
                         f"cross-device variable updates of a distributed step)")
    is_chief, worker_id = worker_role(strategy)
    say = print_fn if is_chief else (lambda message: None)
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(PRECISIONS[plan.precision])
    try:
        return train(options, plan, strategy, per_replica, is_chief, worker_id, say)
    finally:
        keras.mixed_precision.set_dtype_policy(policy)


def train(options: PretrainingOptions, plan: TrainingPlan, strategy: tf.distribute.Strategy,
          per_replica: int, is_chief: bool, worker_id: int,
          say: Callable[[str], None]) -> PretrainingResult:
    model = build_model(options, plan, strategy, say)
    record = plan.record(model.config, input_pipelines=max(1, tf_config_workers()))
    check_resume_compatible(options.model_dir, record)
    compile_model(model, plan, options, strategy)
    state = cb.TrainingCheckpoint(os.path.join(options.model_dir, CHECKPOINT_DIR), model,
                                  max_to_keep=options.keep_checkpoints, is_chief=is_chief,
                                  worker_id=worker_id)
    start_step = restore(state, options, say)
    remaining = plan.train_steps - start_step
    if remaining > 0 and remaining % options.steps_per_execution:
        raise ValueError(f"{remaining} steps remain, not a multiple of --steps-per-execution "
                         f"{options.steps_per_execution}")
    if is_chief:
        os.makedirs(options.model_dir, exist_ok=True)
        cb.atomic_write_text(os.path.join(options.model_dir, RUN_FILE),
                             json.dumps(record, indent=2, sort_keys=True) + "\n")
    say(f"{strategy_name(strategy)}: {strategy.num_replicas_in_sync} replica(s), global "
        f"batch {plan.global_batch_size} ({per_replica} per replica), sequence length "
        f"{plan.masking.max_seq_length}, steps {start_step} -> {plan.train_steps}, "
        f"precision {plan.precision}{', XLA' if options.xla else ''}")

    examples_at_start = int(state.examples_seen.numpy())
    position = cb.DataPosition(model, plan.global_batch_size, examples_at_start)
    callbacks = TrainingCallbacks(options, plan, state, position, is_chief, say)
    if remaining > 0:
        model.fit(distributed_dataset(plan, strategy, examples_at_start), epochs=1,
                  steps_per_epoch=remaining, callbacks=callbacks.in_order(), verbose=0,
                  shuffle=False)
    else:
        say(f"nothing to train: the checkpoint is at step {start_step}, --train-steps is "
            f"{plan.train_steps}")
    final_step = cb.optimizer_step(model)
    status = callbacks.status()
    export_dir = None
    if status == "completed":
        if state.last_saved_step != final_step:
            state.save(position.examples_seen())
        export_dir = export_final(model, plan, options.model_dir, final_step, is_chief,
                                  worker_id)
        say(f"finished at step {final_step}; final model written to {export_dir}")
    return PretrainingResult(
        status=status, start_step=start_step, final_step=final_step,
        examples_seen=position.examples_seen(), checkpoint=state.latest(),
        export_dir=export_dir, history=callbacks.logger.rows, model=model)


def restore(state: cb.TrainingCheckpoint, options: PretrainingOptions,
            say: Callable[[str], None]) -> int:
    """Restores the latest checkpoint of the model directory; returns the start step."""
    state.remove_partial_writes()
    step = state.restore_latest()
    if step is None:
        if options.init_checkpoint:
            say(f"initialised from {options.init_checkpoint}")
        return 0
    say(f"resumed from {state.latest()} at step {step} (optimizer iterations "
        f"{cb.optimizer_step(state.model)}, learning rate "
        f"{cb.current_learning_rate(state.model):.6e}, examples consumed "
        f"{int(state.examples_seen.numpy())})")
    if options.init_checkpoint:
        say("(--init-checkpoint only initialises a fresh run; the resumed weights are used)")
    return step


class TrainingCallbacks:
    """The callbacks of a run, and what they tell about how it ended."""

    def __init__(self, options: PretrainingOptions, plan: TrainingPlan,
                 state: cb.TrainingCheckpoint, position: cb.DataPosition, is_chief: bool,
                 say: Callable[[str], None]):
        self.nan_guard = cb.NanGuard(state, print_fn=say)
        self.checkpointer = cb.PeriodicCheckpoint(state, position, save_every=options.save_every,
                                                  print_fn=say)
        # Multi-worker jobs rely on the periodic checkpoints: a SIGTERM reaches one
        # worker, and a save must involve all of them.
        self.preemption = (cb.PreemptionGuard(self.checkpointer, print_fn=say)
                           if tf_config_workers() <= 1 else None)
        fault = cb.parse_fault()
        interrupted = (lambda: self.preemption.requested) if self.preemption else (
            lambda: False)
        self.fault = cb.FaultInjection(fault, state, interrupted) if fault else None
        self.logger = cb.TrainingLogger(
            options.log_every, plan.train_steps, plan.global_batch_size,
            plan.masking.max_seq_length,
            log_dir=os.path.join(options.model_dir, "logs") if is_chief else None,
            metrics_file=os.path.join(options.model_dir, "metrics.jsonl") if is_chief else None,
            progress=options.progress and is_chief, print_fn=say)

    def in_order(self) -> list[keras.callbacks.Callback]:
        # Within one batch end: a non-finite step is flagged before the periodic save,
        # and a test pause happens before a SIGTERM is acted upon.
        ordered = [self.nan_guard, self.checkpointer, self.fault, self.preemption, self.logger]
        return [callback for callback in ordered if callback is not None]

    def status(self) -> str:
        if self.nan_guard.stopped_at_step is not None or self.checkpointer.unhealthy:
            return "nan"
        if self.preemption is not None and self.preemption.requested:
            return "preempted"
        return "completed"
