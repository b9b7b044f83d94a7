"""Presets: `seed` is the reference system's configuration, `tuned` the default; flags override a preset."""

import dataclasses

import pytest

from charnn.config import ModelConfig, TrainConfig
from charnn.errors import ConfigError
from charnn.presets import DEFAULT_PRESET, PRESETS, with_preset


def _configs(options):
    model = {f.name for f in dataclasses.fields(ModelConfig)}
    train = {f.name for f in dataclasses.fields(TrainConfig)}
    return (ModelConfig(vocab_size=82, **{k: v for k, v in options.items() if k in model}),
            TrainConfig(**{k: v for k, v in options.items() if k in train}))  # fmt: skip


def test_seed_is_the_reference_system():
    model, train = _configs(with_preset("seed", {}))
    # docs/seed-system.md: Embedding 256 -> GRU 1024 -> Dense; windows of 100, batch 64, Adam 1e-3, 45 epochs.
    assert (model.embedding_dim, model.hidden_size, model.cell, model.num_layers) == (256, 1024, "gru", 1)
    assert (train.seq_len, train.batch_size, train.lr, train.epochs, train.lr_schedule) == (
        100,
        64,
        1e-3,
        45,
        "constant",
    )
    assert model.dropout == model.weight_drop == model.embedding_dropout == 0 and not model.variational_dropout
    assert not train.stateful and train.ema is None and train.grad_clip is None and train.patience is None
    # The dataclasses' defaults are the reference's, and the preset changes none of them.
    assert model == ModelConfig(vocab_size=82)
    assert dataclasses.replace(train, preset=None) == TrainConfig()
    assert train.preset == "seed"


def test_options_given_override_the_preset_and_the_default_preset_applies_without_one():
    _, train = _configs(with_preset("seed", {"lr": 0.01, "stateful": True}))
    assert train.lr == 0.01 and train.stateful and train.batch_size == 64
    assert with_preset(None, {})["preset"] == DEFAULT_PRESET in PRESETS
    with pytest.raises(ConfigError, match="`preset` must be one of seed, tuned"):
        with_preset("fastest", {})


def test_the_default_is_the_tuned_recipe_on_the_reference_model():
    model, train = _configs(with_preset(None, {}))
    assert train.preset == DEFAULT_PRESET == "tuned"
    assert (model.embedding_dim, model.hidden_size, model.cell, model.num_layers) == (256, 1024, "gru", 1)
    # What the measurements chose (docs/results.md): regularised, averaged, stopped early.
    assert model.dropout > 0 and train.grad_clip and train.ema and train.patience and train.lr_schedule == "constant"


def test_a_preset_names_only_what_it_changes_from_the_dataclass_defaults():
    defaults = {f.name: f.default for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls)}
    for name, preset in PRESETS.items():
        for field, value in {**preset.model, **preset.train}.items():
            assert defaults[field] != value, f"preset {name} repeats the default of {field}"
