"""Named starting points for a run: small tables of ModelConfig and TrainConfig values.

A preset fills in every option it names; options given explicitly override it; the preset's
name is recorded in the run's TrainConfig (`preset`). `seed` is the reference system's
configuration (docs: GRU 1024, embedding 256, windows of 100, batch 64, Adam 1e-3, 45 epochs,
no dropout, no held-out-driven stopping), spelled out value by value, so it stays the same
when the defaults change.

`tuned` is the best recipe measured on this project's 2-core machine (the ablation in
benchmarks/RESULTS.md says what each of its options earns). `charnn train` without --preset uses
DEFAULT_PRESET (`tuned`): to change the command's defaults, add a preset here and point
DEFAULT_PRESET at it. The dataclasses' own defaults stay the reference's, so library callers who
build a TrainConfig themselves get exactly what they ask for.

    options = with_preset("seed", {"hidden_size": 512})  # the seed recipe with a smaller GRU
"""

from dataclasses import dataclass, field
from typing import Any

from charnn.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    description: str
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields


# The reference system (docs: Embedding 256 -> GRU 1024, Adam 1e-3), spelled out value by value: its model ...
_SEED_MODEL = {
    "embedding_dim": 256,
    "hidden_size": 1024,
    "cell": "gru",
    "num_layers": 1,
    "dropout": 0.0,
    "variational_dropout": False,
    "weight_drop": 0.0,
    "embedding_dropout": 0.0,
}

# ... and its training, likewise.
_SEED_TRAIN = {
    "seq_len": 100,
    "batch_size": 64,
    "epochs": 45,
    "lr": 1e-3,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "grad_clip": None,
    "patience": None,
    "eval_every": None,
    "stateful": False,
    "seq_len_jitter": 0.0,
    "ema": None,
    "ema_init_share": 0.1,
}

PRESETS: dict[str, Preset] = {
    "seed": Preset(
        "the reference system: GRU 1024, Adam 1e-3, windows of 100 from zero state, no regularisation",
        model=_SEED_MODEL,
        train=_SEED_TRAIN,
    ),
    "tuned": Preset(
        "the best recipe measured here (benchmarks/RESULTS.md, issue 13): the reference model with dropout, "
        "a higher constant rate with an average of the weights, clipping and early stopping",
        # The reference model, regularised: under the weight average 0.15 did as well as 0.25 or better on 4 texts.
        model={**_SEED_MODEL, "dropout": 0.15},
        # The rate stays constant: the weight average anneals, and it beat a cosine on all four texts measured.
        train={**_SEED_TRAIN, "lr": 2e-3, "warmup_steps": 100, "grad_clip": 1.0, "patience": 3, "ema": 0.998},
    ),
}

# What `charnn train` starts from when no --preset is given.
DEFAULT_PRESET = "tuned"


def with_preset(name: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """The preset's values (None: DEFAULT_PRESET's) overridden by `options`, with `preset` set to its name."""
    name = DEFAULT_PRESET if name is None else name
    if name not in PRESETS:
        raise ConfigError(f"`preset` must be one of {', '.join(PRESETS)}, got {name!r}")
    preset = PRESETS[name]
    return {**preset.model, **preset.train, **options, "preset": name}
