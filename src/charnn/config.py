"""Typed, frozen configuration. Validated on construction and saved as JSON beside the weights.

>>> ModelConfig(vocab_size=82).hidden_size
1024
"""

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from charnn.errors import ConfigError

CELLS = ("gru", "lstm", "rnn")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine", "plateau")
GENERATE_PRECISIONS = ("auto", "fp32", "bf16", "int8")  # weights when generating: see charnn.fast.step
# nanoGPT's protocol for shakespeare_char (charnn.scoring.evaluate.window_loss): eval_iters 200 batches of
# batch_size 64 windows of block_size 256.
NANOGPT_WINDOW = 256
NANOGPT_WINDOWS = 200 * 64
# Dynamic evaluation (charnn.scoring.evaluate.dynamic_loss): segments of 50 characters, in the range
# Krause et al. (2018) used, and two update rules with their (learning rate, decay). Chosen on the
# first 20,000 held-out characters of tinyshakespeare and Great Expectations (benchmarks/RESULTS.md):
# `rms`, Krause et al.'s, gained 0.077 and 0.044 nats/char there, plain `sgd` 0.051 and 0.028.
DYNAMIC_SEGMENT = 50
DYNAMIC_UPDATES = {"rms": (3e-5, 0.01), "sgd": (0.03, 0.0)}
DYNAMIC_UPDATE = "rms"
# The RMS update's gradient statistics: training batches they come from (30 gave the same
# figures as 100), and the floor under each weight's RMS, as a share of the average weight's.
DYNAMIC_RMS_BATCHES = 30
DYNAMIC_EPSILON = 0.01


def _check(condition: bool, message: str) -> None:
    # Messages name fields in backticks; each edge renders them (the CLI as --flags): errors.py.
    if not condition:
        raise ConfigError(message)


class JsonConfig:
    """Saving to and loading from JSON, shared by the configurations kept in checkpoints."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return _from_dict(cls, data)


@dataclass(frozen=True)
class ModelConfig(JsonConfig):
    """The network's shape: Embedding -> recurrent layers -> Linear to the vocabulary."""

    vocab_size: int
    embedding_dim: int = 256
    hidden_size: int = 1024
    cell: str = "gru"
    num_layers: int = 1
    dropout: float = 0.0
    variational_dropout: bool = False  # one dropout mask per sequence, reused at every time step
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden weights, one mask per batch
    embedding_dropout: float = 0.0  # whole characters' embedding rows, one mask per batch

    def __post_init__(self):
        _check(self.vocab_size >= 1, f"vocab_size must be at least 1, got {self.vocab_size}")
        _check(self.embedding_dim >= 1, f"`embedding_dim` must be at least 1, got {self.embedding_dim}")
        _check(self.hidden_size >= 1, f"`hidden_size` must be at least 1, got {self.hidden_size}")
        _check(self.cell in CELLS, f"`cell` must be one of {', '.join(CELLS)}, got {self.cell!r}")
        _check(self.num_layers >= 1, f"`num_layers` must be at least 1, got {self.num_layers}")
        _check(0.0 <= self.dropout < 1.0, f"`dropout` must be in [0, 1), got {self.dropout}")
        for name in ("weight_drop", "embedding_dropout"):
            value = getattr(self, name)
            _check(0.0 <= value < 1.0, f"`{name}` must be in [0, 1), got {value}")


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
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
    eval_every: int | None = None  # steps; None = once per epoch only
    patience: int | None = None  # evaluations without improvement before stopping
    checkpoint_every: int | None = None  # steps; None = once per epoch only
    keep_last: int | None = None  # numbered checkpoints kept; None = all
    grad_clip: float | None = None  # maximum global gradient norm
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    log_every_seconds: float = 30.0
    stateful: bool = False  # each batch row reads its own stream of the text, state carried between windows
    seq_len_jitter: float = 0.0  # stateful only: spread (characters) of a random window length; 0 = fixed
    ema: float | None = None  # decay of an exponential moving average of the weights; None = none
    ema_init_share: float = (
        0.1  # the run's initial weights' fixed share in the average it scores (charnn.training.average)
    )
    preset: str | None = None  # the named preset the options started from (charnn.presets), as a record

    def __post_init__(self):
        _check(self.seq_len >= 1, f"`seq_len` must be at least 1, got {self.seq_len}")
        _check(self.batch_size >= 1, f"`batch_size` must be at least 1, got {self.batch_size}")
        _check(self.epochs >= 1, f"`epochs` must be at least 1, got {self.epochs}")
        _check(self.max_steps is None or self.max_steps >= 1, f"`max_steps` must be at least 1, got {self.max_steps}")
        _check(
            self.time_limit is None or self.time_limit > 0,
            f"`time_limit` must be a positive number of minutes, got {self.time_limit}",
        )
        _check(self.lr > 0, f"`lr` must be positive, got {self.lr}")
        _check(self.device in DEVICES, f"`device` must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _check(
            self.precision in PRECISIONS,
            f"`precision` must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )
        _check(self.threads is None or self.threads >= 1, f"`threads` must be at least 1, got {self.threads}")
        _check(0.0 <= self.val_fraction < 1.0, f"`val_fraction` must be in [0, 1), got {self.val_fraction}")
        for name in ("eval_every", "patience", "checkpoint_every", "keep_last"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"`{name}` must be at least 1, got {value}")
        _check(self.grad_clip is None or self.grad_clip > 0, f"`grad_clip` must be positive, got {self.grad_clip}")
        _check(
            self.lr_schedule in LR_SCHEDULES,
            f"`lr_schedule` must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
        )
        _check(self.warmup_steps >= 0, f"`warmup_steps` must be 0 or more, got {self.warmup_steps}")
        _check(self.weight_decay >= 0, f"`weight_decay` must be 0 or more, got {self.weight_decay}")
        _check(self.log_every_seconds > 0, f"`log_every_seconds` must be positive, got {self.log_every_seconds}")
        _check(self.seq_len_jitter >= 0, f"`seq_len_jitter` must be 0 or more, got {self.seq_len_jitter}")
        _check(
            not self.seq_len_jitter or self.stateful,
            "`seq_len_jitter` needs `stateful` training (independent windows all have length `seq_len`)",
        )
        _check(self.ema is None or 0.0 < self.ema < 1.0, f"`ema` must be in (0, 1), got {self.ema}")
        _check(0.0 <= self.ema_init_share < 1.0, f"`ema_init_share` must be in [0, 1), got {self.ema_init_share}")


@dataclass(frozen=True)
class SampleConfig:
    """How to draw each next character. Temperature 0 means greedy (argmax)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        _check(self.temperature >= 0, f"`temperature` must be 0 or more, got {self.temperature}")
        _check(self.top_k is None or self.top_k >= 1, f"`top_k` must be at least 1, got {self.top_k}")
        _check(
            self.top_p is None or 0.0 < self.top_p <= 1.0,
            f"`top_p` must be in (0, 1], got {self.top_p}",
        )


@dataclass(frozen=True)
class ScoreConfig:
    """How to score: alternatives to report, and how the text goes through the model.

    With `streams` 1 every character is scored after the whole text before it. With more, each
    block of `streams` x `span` characters is cut into `streams` pieces scored side by side; the
    first continues from the state where the previous block ended, the others start from a zero
    state fed the `warmup` characters before them (an RNN's memory fades within a few hundred
    characters, so this changes the total by little: see benchmarks/RESULTS.md). A text no longer
    than `span` is one piece, scored exactly, whatever `streams`.
    """

    top_k: int = 5  # alternatives reported per character (0: none)
    streams: int = 1
    span: int = 4096  # characters per piece of a block
    warmup: int = 256
    chunk_size: int = 256  # characters each piece advances per forward pass: bounds memory
    # fp32: the plain model (`model.forward`), the figures of `charnn evaluate`. auto, int8, bf16:
    # the generation step of `charnn.fast.step` (auto: int8 where the CPU computes it fast, else fp32).
    precision: str = "fp32"

    def __post_init__(self):
        _check(self.top_k >= 0, f"`top_k` must be 0 or more, got {self.top_k}")
        _check(self.streams >= 1, f"`streams` must be at least 1, got {self.streams}")
        _check(self.span >= 1, f"`span` must be at least 1, got {self.span}")
        _check(self.warmup >= 0, f"`warmup` must be 0 or more, got {self.warmup}")
        _check(self.chunk_size >= 1, f"`chunk_size` must be at least 1, got {self.chunk_size}")
        _check(
            self.precision in GENERATE_PRECISIONS,
            f"precision must be one of {', '.join(GENERATE_PRECISIONS)}, got {self.precision!r}",
        )


@dataclass(frozen=True)
class ServeLimits:
    """What one request, and the server as a whole, may ask for (`charnn serve` flags)."""

    max_prompt_chars: int = 4000
    max_new_chars: int = 2000
    max_num_samples: int = 8
    max_streams: int = 64  # generation requests in flight at once, streaming or not

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check(value >= 1, f"`{f.name}` must be at least 1, got {value}")


def _from_dict(cls, data: dict[str, Any]):
    """Build `cls` from JSON, checking each value's type: the JSON may come from anywhere."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue  # the default; and keys unknown here (from a newer charnn) are ignored
        value = data[f.name]
        if not _has_type(value, f.type):
            raise ConfigError(f"{cls.__name__}.{f.name} has the wrong type: {value!r}")
        values[f.name] = value
    try:
        return cls(**values)
    except TypeError as error:
        raise ConfigError(f"incomplete {cls.__name__}: {error}") from None


def _has_type(value: Any, annotation: Any) -> bool:
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if option in (int, str, bool) and type(value) is option:
            return True
    return False
