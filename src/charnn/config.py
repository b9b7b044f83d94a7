"""Typed, frozen configuration. Validated on construction and saved as JSON beside the weights.

>>> ModelConfig(vocab_size=82).hidden_size
1024
"""

import dataclasses
from dataclasses import dataclass
from typing import Any

from charnn.errors import ConfigError

CELLS = ("gru", "lstm", "rnn")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
GENERATE_PRECISIONS = ("auto", "fp32", "bf16", "int8")  # weights when generating: see charnn.stepper


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelConfig:
    """The network's shape: Embedding -> recurrent layers -> Linear to the vocabulary."""

    vocab_size: int
    embedding_dim: int = 256
    hidden_size: int = 1024
    cell: str = "gru"
    num_layers: int = 1
    dropout: float = 0.0

    def __post_init__(self):
        _check(self.vocab_size >= 1, f"vocab_size must be at least 1, got {self.vocab_size}")
        _check(self.embedding_dim >= 1, f"--embedding-dim must be at least 1, got {self.embedding_dim}")
        _check(self.hidden_size >= 1, f"--hidden-size must be at least 1, got {self.hidden_size}")
        _check(self.cell in CELLS, f"--cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        _check(self.num_layers >= 1, f"--num-layers must be at least 1, got {self.num_layers}")
        _check(0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults are the reference system's: windows of 100, batch 64, Adam 1e-3."""

    seq_len: int = 100
    batch_size: int = 64
    epochs: int = 45
    max_steps: int | None = None
    time_limit: float | None = None  # minutes
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    val_fraction: float = 0.1
    log_every_seconds: float = 30.0

    def __post_init__(self):
        _check(self.seq_len >= 1, f"--seq-len must be at least 1, got {self.seq_len}")
        _check(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        _check(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        _check(self.max_steps is None or self.max_steps >= 1, f"--max-steps must be at least 1, got {self.max_steps}")
        _check(
            self.time_limit is None or self.time_limit > 0,
            f"--time-limit must be a positive number of minutes, got {self.time_limit}",
        )
        _check(self.lr > 0, f"--lr must be positive, got {self.lr}")
        _check(self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _check(
            self.precision in PRECISIONS,
            f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )
        _check(self.threads is None or self.threads >= 1, f"--threads must be at least 1, got {self.threads}")
        _check(0.0 <= self.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        _check(self.log_every_seconds > 0, "log_every_seconds must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class SampleConfig:
    """How to draw each next character. Temperature 0 means greedy (argmax)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        _check(self.temperature >= 0, f"--temperature must be 0 or more, got {self.temperature}")
        _check(self.top_k is None or self.top_k >= 1, f"--top-k must be at least 1, got {self.top_k}")
        _check(
            self.top_p is None or 0.0 < self.top_p <= 1.0,
            f"--top-p must be in (0, 1], got {self.top_p}",
        )


def _from_dict(cls, data: dict[str, Any]):
    # Unknown keys come from a newer charnn; ignoring them keeps old readers working.
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as error:
        raise ConfigError(f"incomplete {cls.__name__}: {error}") from None
