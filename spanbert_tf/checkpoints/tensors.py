"""A foreign checkpoint's tensors, taken one by one so that nothing goes unaccounted for.

`TensorSet` hands out tensors by name with a shape check and records every tensor it
hands out or skips in a `CheckpointReport`. Whatever is left at the end is an
unexpected tensor and fails the import (`check_all_used`): nothing is silently dropped.

Example:
    >>> import numpy as np
    >>> from spanbert_tf import SpanBertConfig
    >>> from spanbert_tf.checkpoints.report import CheckpointReport
    >>> report = CheckpointReport("demo", "hf", SpanBertConfig.preset("tiny", vocab_size=10))
    >>> tensors = TensorSet({"a.weight": np.zeros((2, 3)), "b.gamma": np.ones(3)}, report)
    >>> tensors = tensors.with_new_layer_norm_names()
    >>> tensors.take("a.weight", (2, 3)).shape, sorted(tensors.remaining())
    ((2, 3), ['b.weight'])
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np

from spanbert_tf.checkpoints.report import CheckpointError, CheckpointReport


def format_shape(shape: Iterable[int]) -> str:
    return str(tuple(int(d) for d in shape))


def layer_norm_new_name(name: str) -> str:
    """Old BERT code named LayerNorm parameters `gamma`/`beta`; today they are `weight`/`bias`."""
    for old, new in ((".gamma", ".weight"), (".beta", ".bias")):
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def layer_norm_old_name(name: str) -> str:
    if "LayerNorm." not in name and "layer_norm" not in name:
        return name
    for new, old in ((".weight", ".gamma"), (".bias", ".beta")):
        if name.endswith(new):
            return name[: -len(new)] + old
    return name


class TensorSet:
    """Named arrays of a checkpoint, consumed by `take` / `skip`.

    Args:
        tensors: name -> array (numpy, any float dtype) as stored in the checkpoint.
        report: where loaded and skipped tensors are recorded.
        original_names: canonical name -> name as stored, for error messages after
            renaming (`renamed`).
    """

    def __init__(self, tensors: Mapping[str, np.ndarray], report: CheckpointReport,
                 original_names: Mapping[str, str] | None = None,
                 restore: Callable[[str], str] | None = None):
        self.tensors = dict(tensors)
        self.report = report
        self.original_names = dict(original_names or {})
        self.restore = restore or (lambda name: name)
        self.used: set[str] = set()

    def without_prefix(self, prefix: str) -> "TensorSet":
        """Drops `prefix` where present. Names of missing tensors get it back in messages
        when their first component was seen under the prefix (e.g. `bert.encoder...`)."""
        stripped = {name[len(prefix):].split(".", 1)[0] for name in self.tensors
                    if name.startswith(prefix)}

        def restore(name: str) -> str:
            return prefix + name if name.split(".", 1)[0] in stripped else name

        return self.renamed(lambda name: name[len(prefix):] if name.startswith(prefix) else name,
                            restore=restore)

    def with_new_layer_norm_names(self) -> "TensorSet":
        """Renames `gamma`/`beta` to `weight`/`bias`; missing LayerNorm parameters are
        then named the old way in messages if the checkpoint uses the old names."""
        uses_old = any(layer_norm_new_name(name) != name for name in self.tensors)
        return self.renamed(layer_norm_new_name,
                            restore=layer_norm_old_name if uses_old else None)

    def renamed(self, rename: Callable[[str], str],
                restore: Callable[[str], str] | None = None) -> "TensorSet":
        """A new set whose names are `rename(name)`; two names mapping to one is an error.

        `restore` maps a new-style name back to the checkpoint's style; it names tensors
        that are missing (present ones keep their exact stored name)."""
        tensors: dict[str, np.ndarray] = {}
        originals: dict[str, str] = {}
        for name, value in self.tensors.items():
            new_name = rename(name)
            if new_name in tensors:
                raise CheckpointError(
                    f"{self.report.source}: tensors {originals[new_name]!r} and "
                    f"{self.original(name)!r} both map to {new_name!r}; the checkpoint holds "
                    f"the same weight twice under different names")
            tensors[new_name] = value
            originals[new_name] = self.original(name)
        outer = self.restore
        inner = restore or (lambda n: n)
        return TensorSet(tensors, self.report, originals, restore=lambda n: outer(inner(n)))

    def original(self, name: str) -> str:
        """The name as stored in the checkpoint (or, if absent, as it would be stored)."""
        if name in self.original_names:
            return self.original_names[name]
        return self.restore(name)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in np.shape(self.tensors[name]))

    def names(self, prefix: str = "") -> list[str]:
        return sorted(name for name in self.tensors if name.startswith(prefix))

    def take(self, name: str, expected_shape: Iterable[int]) -> np.ndarray:
        """Returns the tensor as float32 after checking it exists and has `expected_shape`."""
        expected = tuple(int(d) for d in expected_shape)
        if name not in self.tensors:
            raise CheckpointError(
                f"{self.report.source}: tensor {self.original(name)!r} is missing: expected "
                f"shape {format_shape(expected)}, found no such tensor")
        found = self.shape(name)
        if found != expected:
            raise CheckpointError(
                f"{self.report.source}: tensor {self.original(name)!r} has the wrong shape: "
                f"expected {format_shape(expected)}, found {format_shape(found)}")
        self.used.add(name)
        self.report.add_loaded(self.original(name), found)
        return np.asarray(self.tensors[name], dtype=np.float32)

    def skip(self, name: str, reason: str) -> None:
        self.used.add(name)
        self.report.add_skipped(self.original(name), reason)

    def skip_prefix(self, prefix: str, reason: str) -> None:
        for name in self.names(prefix):
            self.skip(name, reason)

    def remaining(self) -> list[str]:
        return sorted(set(self.tensors) - self.used)

    def check_all_used(self, expected_contents: str) -> None:
        """Fails naming every tensor that was neither loaded nor deliberately skipped."""
        left = self.remaining()
        if left:
            listed = ", ".join(
                f"{self.original(name)!r} {format_shape(self.shape(name))}" for name in left[:20])
            more = f" and {len(left) - 20} more" if len(left) > 20 else ""
            raise CheckpointError(
                f"{self.report.source}: {len(left)} unexpected tensor(s) that are not part of "
                f"{expected_contents}: {listed}{more}")

    def check_tied(self, name: str, tied_to: np.ndarray, tied_name: str) -> None:
        """Accepts `name` only as a copy of a weight our model ties (decoder = embeddings)."""
        if name not in self.tensors:
            return
        found = self.shape(name)
        if found != tuple(tied_to.shape):
            raise CheckpointError(
                f"{self.report.source}: tensor {self.original(name)!r} has the wrong shape: "
                f"expected {format_shape(tied_to.shape)} (tied to {tied_name}), found "
                f"{format_shape(found)}")
        value = np.asarray(self.tensors[name], dtype=np.float32)
        if not np.array_equal(value, tied_to):
            difference = float(np.max(np.abs(value - tied_to)))
            raise CheckpointError(
                f"{self.report.source}: tensor {self.original(name)!r} differs from {tied_name} "
                f"(max abs difference {difference:.3g}); this model ties them, so an untied "
                f"decoder cannot be imported")
        self.skip(name, f"tied to {tied_name} (checked equal)")
