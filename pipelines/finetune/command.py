"""`spanbert-tf finetune TASK` and `spanbert-tf evaluate TASK`.

Both commands take the task as a sub-subcommand. A task is a module in `TASKS`
providing:

    NAME                      the sub-subcommand name
    HELP                      one line for `--help`
    add_arguments(parser)     the finetune flags (calls trainer.add_training_arguments)
    add_evaluate_arguments(parser)   optional: task flags of `evaluate` beyond the shared
                                     --model-dir/--eval-file/--output-dir/--batch-size
    finetune(args) -> dict    train, evaluate on --dev-file if given, save; returns metrics
    evaluate(args) -> dict    predict --eval-file with --model-dir; returns metrics

A task module that cannot be imported because it does not exist is left out; any other
import error is raised.

Example:
    $ spanbert-tf finetune classification --init-checkpoint minilm/ --output-dir sst2/ \\
          --train-file train.tsv --dev-file dev.tsv --max-steps 200
    $ spanbert-tf evaluate classification --model-dir sst2/ --eval-file dev.tsv \\
          --output-dir sst2-eval/
"""

from __future__ import annotations

import argparse
import importlib
import json
from types import ModuleType

from pipelines.finetune.trainer import add_evaluation_arguments

TASKS = {
    "classification": "pipelines.finetune.classification",
    "ner": "pipelines.finetune.ner",
    "tacred": "pipelines.finetune.tacred",
    "qa": "pipelines.finetune.qa",
}

FINETUNE_DESCRIPTION = """\
Fine-tunes a pretrained SpanBERT (or any BERT) checkpoint on a task with Keras fit,
under the same strategy options as pretraining (--cpu-replicas, GPUs), with AdamW,
linear warm-up and decay (defaults: LR 2e-5, warm-up 10%, weight decay 0.01 except
biases/LayerNorm, batch 32). Evaluates on --dev-file when given and writes
OUTPUT_DIR/{model.keras, task.json, vocab.txt, config.json, metrics.json,
predictions.jsonl}. Run `spanbert-tf finetune TASK --help` for a task's flags."""

EVALUATE_DESCRIPTION = """\
Predicts --eval-file with a fine-tuned model directory and writes predictions.jsonl and
metrics.json (when the file has labels) to --output-dir."""


def task_modules() -> dict[str, ModuleType]:
    """The importable task modules, by task name."""
    modules = {}
    for name, module_name in TASKS.items():
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
    return modules


def register(subparsers: argparse._SubParsersAction) -> None:
    modules = task_modules()
    finetune = subparsers.add_parser(
        "finetune", help="fine-tune on a task (classification, NER, relations, QA)",
        description=FINETUNE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate = subparsers.add_parser(
        "evaluate", help="evaluate a fine-tuned model on a data file",
        description=EVALUATE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    finetune_tasks = finetune.add_subparsers(dest="task", metavar="TASK")
    evaluate_tasks = evaluate.add_subparsers(dest="task", metavar="TASK")
    for name, module in modules.items():
        parser = finetune_tasks.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(parser)
        parser.set_defaults(func=lambda args, module=module: report(module.finetune(args)))
        parser = evaluate_tasks.add_parser(name, help=module.HELP, description=module.HELP)
        add_evaluation_arguments(parser)
        if hasattr(module, "add_evaluate_arguments"):
            module.add_evaluate_arguments(parser)
        parser.set_defaults(func=lambda args, module=module: report(module.evaluate(args)))
    finetune.set_defaults(func=lambda args: finetune.print_help() or 2)
    evaluate.set_defaults(func=lambda args: evaluate.print_help() or 2)


def report(metrics: dict) -> int:
    print(json.dumps(metrics, indent=2, sort_keys=True, default=str), flush=True)
    return 0
