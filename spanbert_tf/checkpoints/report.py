"""What a checkpoint import did: tensors loaded, tensors skipped and why, fresh heads.

Example:
    >>> from spanbert_tf import SpanBertConfig
    >>> report = CheckpointReport("ckpt/", "hf", SpanBertConfig.preset("tiny", vocab_size=100))
    >>> report.add_loaded("embeddings.word_embeddings.weight", (100, 64))
    >>> report.add_skipped("pooler.dense.weight", "pooler: SpanBERT has no pooler")
    >>> report.fresh.append("sbo_head")
    >>> print(report.summary().splitlines()[0])
    Imported ckpt/ (format hf): 1 tensors loaded, 1 skipped
"""

from __future__ import annotations

import dataclasses

from spanbert_tf.config import SpanBertConfig

HEADS = ("mlm_head", "sbo_head")


class CheckpointError(ValueError):
    """A checkpoint does not match the model: missing, mis-shaped or unexpected tensors,
    or an architecture setting this library does not implement."""


@dataclasses.dataclass
class CheckpointReport:
    """The outcome of loading one checkpoint.

    Attributes:
        source: path the weights came from.
        format: "hf", "fairseq" or "native".
        config: the architecture the model was built with (set once it is known).
        loaded: (tensor name in the source, shape) of every tensor copied into the model.
        skipped: (tensor name, reason) of every source tensor deliberately not copied.
        fresh: heads ("mlm_head", "sbo_head") left at their random initialisation because
            the source has no weights for them.
        notes: anything else the user should know (e.g. an inferred setting).
    """

    source: str
    format: str
    config: SpanBertConfig | None = None
    loaded: list[tuple[str, tuple[int, ...]]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    fresh: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add_loaded(self, name: str, shape) -> None:
        self.loaded.append((name, tuple(int(d) for d in shape)))

    def add_skipped(self, name: str, reason: str) -> None:
        self.skipped.append((name, reason))

    @property
    def heads_loaded(self) -> tuple[str, ...]:
        """The heads whose weights came from the checkpoint."""
        return tuple(head for head in HEADS if head not in self.fresh)

    def summary(self) -> str:
        """A human-readable account, one fact per line."""
        lines = [f"Imported {self.source} (format {self.format}): {len(self.loaded)} tensors "
                 f"loaded, {len(self.skipped)} skipped"]
        c = self.config
        if c is not None:
            lines.append(f"  architecture: {c.num_layers} layers, hidden {c.hidden_size}, "
                         f"{c.num_heads} heads, FFN {c.intermediate_size}, vocab {c.vocab_size}")
        for name, reason in self.skipped:
            lines.append(f"  skipped {name}: {reason}")
        heads = ", ".join(self.heads_loaded) or "none"
        lines.append(f"  heads loaded: {heads}")
        for head in self.fresh:
            lines.append(f"  {head}: not in the checkpoint, freshly initialised")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)
