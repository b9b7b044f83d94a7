"""Named starting points for a run: what each changes from ModelConfig's and TrainConfig's defaults.

A preset fills in every option it names; options given explicitly override it; the preset's
name is recorded in the run's TrainConfig (`preset`). The dataclasses' defaults are the reference
system's configuration (docs: GRU 1024, embedding 256, windows of 100, batch 64, Adam 1e-3, 45
epochs, no dropout, no held-out-driven stopping), so `seed` changes nothing, and library callers
who build a TrainConfig themselves get exactly what they ask for.

`tuned` is the best recipe measured on this project's machine (the ablation in
docs/results.md says what each of its options earns). `charnn train` without --preset uses
DEFAULT_PRESET (`tuned`): to change the command's defaults, add a preset here and point
DEFAULT_PRESET at it.

    options = with_preset("seed", {"hidden_size": 512})  # the seed recipe with a smaller GRU
"""

from dataclasses import dataclass, field
from typing import Any

from charnn.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    description: str
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields that differ from its defaults
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields, likewise


PRESETS: dict[str, Preset] = {
    "seed": Preset("the reference system: GRU 1024, Adam 1e-3, windows of 100 from zero state, no regularisation"),
    "tuned": Preset(
        "the best recipe measured here (docs/results.md): the reference model with dropout, "
        "a higher constant rate with an average of the weights, clipping and early stopping",
        # The reference model, regularised.
        model={"dropout": 0.15},
        # The rate stays constant: the weight average anneals (docs/results.md).
        train={"lr": 2e-3, "warmup_steps": 100, "grad_clip": 1.0, "patience": 3, "ema": 0.998},
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
