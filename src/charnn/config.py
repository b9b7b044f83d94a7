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
# Dynamic evaluation (charnn.scoring.dynamic.dynamic_loss): segments of 50 characters, in the range
# Krause et al. (2018) used, and two update rules with their (learning rate, decay). Chosen on the
# first 20,000 held-out characters of two texts; the figures are in docs/results.md.
DYNAMIC_SEGMENT = 50
DYNAMIC_UPDATES = {"rms": (3e-5, 0.01), "sgd": (0.03, 0.0)}
DYNAMIC_UPDATE = "rms"
# The RMS update's gradient statistics: training batches they come from (30 gave the same
# figures as 100), and the floor under each weight's RMS, as a share of the average weight's.
DYNAMIC_RMS_BATCHES = 30
DYNAMIC_EPSILON = 0.01


def _option(default, help: str, choices: tuple[str, ...] | None = None):
    """A field with the help (and the choices) its command-line flag shows (charnn.cli.flags).

    Help names other fields in backticks, as error messages do; the CLI shows them as flags.
    """
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


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
    embedding_dim: int = _option(256, "size of each character's embedding")
    hidden_size: int = _option(1024, "units in each recurrent layer")
    cell: str = _option("gru", "recurrent cell", CELLS)
    num_layers: int = _option(1, "stacked recurrent layers")
    dropout: float = _option(0.0, "dropout between layers and before the output")
    variational_dropout: bool = _option(False, "`dropout` with one mask per sequence, the same at every time step")
    weight_drop: float = _option(
        0.0, "DropConnect on the recurrent (hidden-to-hidden) weights: share of them dropped, one mask per batch"
    )
    embedding_dropout: float = _option(0.0, "share of characters whose whole embedding is dropped, one mask per batch")

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

    seq_len: int = _option(100, "characters per training window")
    batch_size: int = _option(64, "windows per batch")
    epochs: int = _option(45, "passes over the training text")
    max_steps: int | None = _option(None, "stop after this many optimizer steps (writes a checkpoint)")
    time_limit: float | None = _option(
        None, "stop after this many minutes in all, a resumed run's earlier ones counted (writes a checkpoint)"
    )
    lr: float = _option(1e-3, "Adam learning rate")
    seed: int = _option(0, "random seed for initialisation and data order")
    device: str = _option("auto", "where to train: auto picks CUDA when present", DEVICES)
    precision: str = _option("auto", "compute precision: auto picks bf16 where the hardware has it", PRECISIONS)
    threads: int | None = _option(
        None,
        "CPU threads for PyTorch (default: `charnn train` takes the cores other "
        "processes leave free when it starts; the library, all cores)",
    )
    val_fraction: float = _option(0.1, "share of the text, at its end, held out for validation")
    eval_every: int | None = _option(None, "also evaluate on the held-out text every N steps")
    patience: int | None = _option(
        None,
        "stop after N evaluations without a better validation loss (with `ema`, not counting one at "
        "which the average falls fast enough to reach the best within N more)",
    )
    checkpoint_every: int | None = _option(None, "also write a checkpoint every N steps")
    keep_last: int | None = _option(None, "keep only the newest K numbered checkpoints (best is always kept)")
    grad_clip: float | None = _option(None, "clip gradients to this global norm")
    lr_schedule: str = _option(
        "constant",
        "learning-rate schedule after warm-up: cosine falls to a tenth by the end of the run (its epochs, "
        "`max_steps` or `time_limit`, whichever ends it first); plateau halves it at each evaluation that is no "
        "better",
        LR_SCHEDULES,
    )
    warmup_steps: int = _option(0, "steps of linear learning-rate warm-up")
    weight_decay: float = _option(0.0, "decoupled weight decay (AdamW)")
    log_every_seconds: float = _option(30.0, "seconds between progress lines and metrics records")
    stateful: bool = _option(
        False, "truncated BPTT: each batch row reads its own stretch of the text, state carried between windows"
    )
    seq_len_jitter: float = _option(
        0.0, "with `stateful`: random window lengths around `seq_len` with this spread (AWD-LSTM)"
    )
    ema: float | None = _option(
        None,
        "also keep an exponential moving average of the weights with this decay (e.g. 0.999); "
        "best keeps whichever scores better",
    )
    # The share the average the run scores keeps of its initial weights (charnn.training.average).
    ema_init_share: float = _option(
        0.1,
        "with `ema`: share of the run's initial weights mixed into the average it scores "
        "(a pull towards them that regularises; 0 = the plain average)",
    )
    # The named preset the options started from (charnn.presets), kept as a record.
    preset: str | None = _option(
        None, "start from a named configuration; flags given override it (seed = the reference system)"
    )

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


# A logit bias of BAN or less is a ban: the character is never drawn (OpenAI's -100 means the same).
BAN = -100.0


@dataclass(frozen=True)
class SampleConfig:
    """How to draw each next character. Temperature 0 means greedy (argmax).

    `logit_bias` holds (vocabulary index, value) pairs added to the logits before anything else,
    as OpenAI's `logit_bias` is: a value from -100 to 100, and -100 bans the character outright
    (`charnn.constraints` turns sets of characters to ban or allow into such pairs).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self):
        _check(self.temperature >= 0, f"`temperature` must be 0 or more, got {self.temperature}")
        _check(self.top_k is None or self.top_k >= 1, f"`top_k` must be at least 1, got {self.top_k}")
        _check(
            self.top_p is None or 0.0 < self.top_p <= 1.0,
            f"`top_p` must be in (0, 1], got {self.top_p}",
        )
        for index, value in self.logit_bias:
            _check(isinstance(index, int) and index >= 0, f"`logit_bias` keys are vocabulary indices, got {index!r}")
            _check(BAN <= value <= -BAN, f"`logit_bias` values must be from -100 to 100, got {value}")


@dataclass(frozen=True)
class ScoreConfig:
    """How to score: alternatives to report, and how the text goes through the model.

    With `streams` 1 every character is scored after the whole text before it. With more, each
    block of `streams` x `span` characters is cut into `streams` pieces scored side by side; the
    first continues from the state where the previous block ended, the others start from a zero
    state fed the `warmup` characters before them (an RNN's memory fades within a few hundred
    characters, so this changes the total by little: see docs/results.md). A text no longer
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

    max_prompt_chars: int = _option(4000, "longest prompt a request may send")
    max_new_chars: int = _option(2000, "most new characters a request may ask for, per sample")
    max_num_samples: int = _option(8, "most samples one request may ask for")
    max_streams: int = _option(64, "generation requests in flight at once (streaming or not); more get HTTP 429")

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
