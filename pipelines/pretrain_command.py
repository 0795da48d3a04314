"""`spanbert-tf pretrain`: distributed, resumable SpanBERT pretraining.

Example:
    $ spanbert-tf pretrain --data shards/ --model-dir runs/tiny --config tiny \\
          --train-steps 2000 --global-batch-size 32 --learning-rate 5e-4 --warmup-steps 200 \\
          --cpu-replicas 2
"""

from __future__ import annotations

import argparse

from pipelines.optimization import RECIPES

DESCRIPTION = """\
Pretrains SpanBERT (MLM + span boundary objective) on TFRecord shards written by
prepare-pretraining, with Keras fit under a tf.distribute strategy:
MultiWorkerMirroredStrategy when TF_CONFIG names several workers, MirroredStrategy over
all local GPUs, over N logical CPU devices with --cpu-replicas N, or one device. The
global batch is split evenly over the replicas.

Preemption safe: checkpoints (weights, optimizer step and moments, data stream position)
are written atomically to MODEL_DIR/checkpoints every --save-every steps, keeping the
last --keep-checkpoints. Killed at any moment (SIGTERM saves first; SIGKILL loses the
steps since the last checkpoint) and started again with the same command, the run
resumes at the checkpoint's step with the same learning-rate schedule position and
continues the span-masking stream where it stopped. A NaN/inf loss stops the run and
keeps the last good checkpoint.

Writes TensorBoard logs to MODEL_DIR/logs (losses, accuracies, learning rate,
examples/s, tokens/s), MODEL_DIR/metrics.jsonl, and the final model to MODEL_DIR/final
(spanbert-tf checkpoint with config.json and vocab.txt, plus pretrainer.keras).
Exit status: 0 done, 1 error or NaN stop, 143 stopped by SIGTERM (run again to resume)."""

RECIPE_HELP = "; ".join(
    f"{name}: peak LR {r.peak_learning_rate:g}, warmup {r.warmup_steps}, {r.total_steps} steps, "
    f"batch {r.global_batch_size} x {r.max_seq_length}" for name, r in RECIPES.items())


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain", help="pretrain SpanBERT (distributed, resumable)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data and model")
    data.add_argument("--data", required=True, metavar="PATH",
                      help="directory of TFRecord shards (prepare-pretraining output), a "
                           "glob, or comma-separated shard files")
    data.add_argument("--model-dir", required=True, metavar="DIR",
                      help="checkpoints, logs and the final model; a run in DIR resumes")
    data.add_argument("--config", metavar="PRESET|FILE", default=None,
                      help="model: preset tiny/base/large (vocab size taken from the vocab) "
                           "or a SpanBertConfig JSON (default: the --init-checkpoint's "
                           "config, else base)")
    data.add_argument("--vocab", metavar="FILE", default=None,
                      help="vocab.txt the shards were tokenised with (default: from the "
                           "data summary, else the --init-checkpoint's vocab.txt)")
    data.add_argument("--init-checkpoint", metavar="PATH", default=None,
                      help="start from this checkpoint (spanbert-tf, Hugging Face or "
                           "fairseq), including its MLM/SBO heads when present")
    data.add_argument("--init-format", choices=("auto", "native", "hf", "fairseq"),
                      default="auto", help="format of --init-checkpoint (default: auto)")
    data.add_argument("--masking-config", metavar="FILE", default=None,
                      help="SpanMaskingConfig JSON (default: the official SpanBERT masking)")
    data.add_argument("--max-seq-length", type=int, default=None,
                      help="sequence length (default: the data summary's, else the recipe's)")
    data.add_argument("--seed", type=int, default=0,
                      help="seed of the initialisation and of the data stream (default: 0)")
    data.add_argument("--shuffle-buffer", type=int, default=10_000,
                      help="examples in each input pipeline's shuffle buffer (default: 10000)")

    schedule = parser.add_argument_group("optimisation (AdamW, warm-up + linear decay)")
    schedule.add_argument("--recipe", choices=sorted(RECIPES), default="spanbert-base",
                          help=f"paper recipe the flags below override ({RECIPE_HELP}); "
                               f"default: spanbert-base")
    schedule.add_argument("--train-steps", type=int, default=None, help="total optimizer steps")
    schedule.add_argument("--global-batch-size", type=int, default=None,
                          help="sequences per step over all replicas")
    schedule.add_argument("--learning-rate", type=float, default=None, help="peak learning rate")
    schedule.add_argument("--warmup-steps", type=int, default=None)
    schedule.add_argument("--weight-decay", type=float, default=None,
                          help="decoupled weight decay (not on biases and LayerNorm)")
    schedule.add_argument("--adam-epsilon", type=float, default=None)
    schedule.add_argument("--clip-norm", type=float, default=None,
                          help="global gradient-norm clip (0 disables)")

    run = parser.add_argument_group("execution")
    run.add_argument("--precision", choices=("fp32", "mixed_float16", "mixed_bfloat16"),
                     default="fp32", help="compute precision (default: fp32)")
    run.add_argument("--xla", action="store_true",
                     help="compile the training step with XLA (one replica only)")
    run.add_argument("--steps-per-execution", type=int, default=1,
                     help="steps per tf.function call; larger helps small models (default: 1)")
    run.add_argument("--cpu-replicas", type=int, default=0, metavar="N",
                     help="without GPUs: N logical CPU devices under MirroredStrategy")
    run.add_argument("--save-every", type=int, default=1000,
                     help="checkpoint period in steps (default: 1000)")
    run.add_argument("--keep-checkpoints", type=int, default=3,
                     help="recent checkpoints to keep (default: 3)")
    run.add_argument("--log-every", type=int, default=100,
                     help="logging window in steps (default: 100)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from pipelines.pretrain import PretrainingOptions, run_pretraining

    options = PretrainingOptions(
        data=args.data, model_dir=args.model_dir, config=args.config,
        init_checkpoint=args.init_checkpoint, init_format=args.init_format, vocab=args.vocab,
        recipe=args.recipe, train_steps=args.train_steps,
        global_batch_size=args.global_batch_size, max_seq_length=args.max_seq_length,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, adam_epsilon=args.adam_epsilon,
        clip_norm=args.clip_norm, masking=args.masking_config, seed=args.seed,
        shuffle_buffer=args.shuffle_buffer, save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints, log_every=args.log_every,
        steps_per_execution=args.steps_per_execution, precision=args.precision,
        xla=args.xla, cpu_replicas=args.cpu_replicas, progress=not args.no_progress)
    result = run_pretraining(options, print_fn=lambda message: print(message, flush=True))
    return result.exit_code
