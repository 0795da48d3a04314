"""Reading PyTorch checkpoint files safely, without importing torch until needed.

`torch.load` always runs with `weights_only=True`: only tensors and plain containers
are rebuilt and no code from the file is executed. Old training checkpoints (fairseq)
also pickle objects of classes that are not importable here, such as the training
`args` namespace holding fairseq's `BertConfig`. With `allow_pickled_objects=True`
each such class is replaced by an inert `PickledObject` that only records the state it
is given, so the file still loads under `weights_only=True` and the state stays
readable (e.g. the config's `num_attention_heads`).

Example:
    >>> tensors = read_torch_state_dict("pytorch_model.bin")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

import numpy as np

from spanbert_tf.checkpoints.report import CheckpointError

UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
MAX_REPLACED_CLASSES = 100


def import_torch():
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            "reading a PyTorch checkpoint (.bin/.pt) needs torch, which is not installed: "
            "`pip install torch` (the CPU build is enough), or convert the weights to "
            "model.safetensors, which needs no torch") from None
    return torch


class PickledObject:
    """Inert stand-in for a pickled object whose class is not importable here.

    Its attributes are the pickled state (when that state is a dict); `state` and
    `args` keep anything else. It runs no code of the original class.
    """

    pickled_name = "?"

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state

    def __repr__(self) -> str:
        return f"PickledObject({self.pickled_name}, {sorted(vars(self))})"


def stand_in_for(full_name: str) -> type:
    name = full_name.rsplit(".", 1)[-1]
    return type(name, (PickledObject,), {"pickled_name": full_name})


def load_torch_file(path: str, allow_pickled_objects: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on CPU, optionally tolerating unknown classes."""
    torch = import_torch()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    allowed: list = [argparse.Namespace]
    for _ in range(MAX_REPLACED_CLASSES):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - torch wraps unpickling errors variously
            match = UNSAFE_GLOBAL.search(str(error))
            already = {entry[1] for entry in allowed if isinstance(entry, tuple)}
            if not allow_pickled_objects or match is None or match.group(1) in already:
                raise CheckpointError(load_failure(path, error, match)) from error
            allowed.append((stand_in_for(match.group(1)), match.group(1)))
    raise CheckpointError(f"{path}: pickles more than {MAX_REPLACED_CLASSES} unknown classes")


def load_failure(path: str, error: Exception, match: re.Match | None) -> str:
    if match is not None:
        return (f"{path}: the file pickles {match.group(1)}, which a weights-only load does "
                f"not import (only tensors and plain containers are allowed)")
    detail = " ".join(str(error).split())[:300]
    return (f"{path}: cannot be read as a weights-only PyTorch checkpoint "
            f"({type(error).__name__}: {detail})")


def to_numpy(value: Any, name: str, path: str) -> np.ndarray:
    torch = import_torch()
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(
            f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype != torch.float32:
        value = value.float()  # numpy has no bfloat16; fp16 is widened too
    return value.numpy()


def state_dict_to_numpy(state_dict: Any, path: str) -> dict[str, np.ndarray]:
    if not isinstance(state_dict, dict):
        raise CheckpointError(
            f"{path}: expected a state dict (name -> tensor), found {type(state_dict).__name__}")
    return {str(name): to_numpy(value, str(name), path) for name, value in state_dict.items()}


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a `pytorch_model.bin`-style file (a bare state dict) as numpy arrays."""
    return state_dict_to_numpy(load_torch_file(path), path)
