"""SpanBERT model configuration.

`SpanBertConfig` holds every architecture number of the encoder and of the two
pretraining heads (DESIGN.md section 3). It validates itself on construction, so an
inconsistent config fails before any weight is built.

Example:
    >>> from spanbert_tf import SpanBertConfig
    >>> config = SpanBertConfig.preset("base")
    >>> config.hidden_size, config.num_layers, config.num_heads
    (768, 12, 12)
    >>> tiny = SpanBertConfig.preset("tiny", vocab_size=1000)
    >>> SpanBertConfig.from_json(tiny.to_json()) == tiny
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

SUPPORTED_ACTIVATIONS = ("gelu",)


@dataclasses.dataclass(frozen=True)
class SpanBertConfig:
    """Architecture of a SpanBERT encoder and its MLM / SBO heads.

    Attributes:
        vocab_size: WordPiece vocabulary size (28,996 for cased BERT).
        hidden_size: width H of every transformer layer.
        num_layers: number of transformer layers.
        num_heads: attention heads; must divide `hidden_size`.
        intermediate_size: width of the feed-forward inner layer.
        max_position_embeddings: longest input the learned positions cover.
        type_vocab_size: number of segment (token type) ids.
        hidden_dropout: dropout on embeddings and every residual branch.
        attention_dropout: dropout on attention probabilities.
        initializer_range: stddev of the truncated-normal weight init.
        layer_norm_epsilon: LayerNorm epsilon (BERT: 1e-12).
        hidden_act: feed-forward activation; "gelu" is BERT's exact erf GeLU.
        sbo_position_size: size of the SBO relative-position embedding (paper: 200).
        sbo_max_targets: SBO targets per span, i.e. relative positions (paper: 15).
        sbo_weight: weight of the SBO loss beside the MLM loss (paper: 1.0); 0 trains
            MLM only and skips the SBO head.
        pad_token_id: id of [PAD].
    """

    vocab_size: int = 28996
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02
    layer_norm_epsilon: float = 1e-12
    hidden_act: str = "gelu"
    sbo_position_size: int = 200
    sbo_max_targets: int = 15
    sbo_weight: float = 1.0
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        positive = (
            "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "sbo_position_size", "sbo_max_targets",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SpanBertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"SpanBertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"SpanBertConfig.{name} must be in [0, 1), got {value!r}")
        if self.initializer_range <= 0 or self.layer_norm_epsilon <= 0:
            raise ValueError("SpanBertConfig.initializer_range and layer_norm_epsilon must be > 0")
        if self.sbo_weight < 0:
            raise ValueError(f"SpanBertConfig.sbo_weight must be >= 0, got {self.sbo_weight!r}")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"SpanBertConfig.hidden_act {self.hidden_act!r} is not supported; "
                f"use one of {SUPPORTED_ACTIVATIONS}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"SpanBertConfig.pad_token_id ({self.pad_token_id}) must lie in [0, vocab_size)"
            )

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "SpanBertConfig":
        """Returns the named preset ("tiny", "base", "large") with optional overrides."""
        if name not in PRESETS:
            raise ValueError(f"Unknown SpanBERT preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SpanBertConfig":
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown SpanBertConfig field(s) {unknown}; known fields are {sorted(known)}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "SpanBertConfig":
        return self.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_json(cls, text: str) -> "SpanBertConfig":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"SpanBertConfig JSON is not valid: {error}") from None
        if not isinstance(values, dict):
            raise ValueError("SpanBertConfig JSON must be an object")
        return cls.from_dict(values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SpanBertConfig":
        """Reads a config written by `save`, or a preset name ("tiny", "base", "large")."""
        path = os.fspath(path)
        if path in PRESETS:
            return cls.preset(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such config file (or preset {sorted(PRESETS)})")
        with open(path, encoding="utf-8") as handle:
            try:
                return cls.from_json(handle.read())
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json() + "\n")


PRESETS: dict[str, dict[str, Any]] = {
    # For tests and the demo: small enough to train in seconds on a CPU.
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                 max_position_embeddings=512, sbo_position_size=32),
    # SpanBERT-base / -large: BERT-base / -large shapes, cased vocab (DESIGN.md section 3).
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
}
