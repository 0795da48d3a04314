"""Subprocess entry point of the multi-worker test: one worker of a TF_CONFIG cluster.

Usage: python tests/pretrain_worker.py OPTIONS_JSON WEIGHTS_NPZ
Runs `run_pretraining` with the given options and saves the worker's final weights.
"""

import json
import sys

import numpy as np

from pipelines.pretrain import PretrainingOptions, run_pretraining


def main(options_json: str, weights_path: str) -> int:
    result = run_pretraining(PretrainingOptions(**json.loads(options_json)))
    np.savez(weights_path, *[np.asarray(w.numpy()) for w in result.model.weights])
    print(json.dumps({"status": result.status, "final_step": result.final_step,
                      "replicas": result.model.distribute_strategy.num_replicas_in_sync}),
          flush=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
