"""Resuming a run from its newest numbered checkpoint, as if it had never stopped.

    result = resume("runs/ge", {"epochs": 2})

Everything a run needs to continue is in each numbered checkpoint: weights, optimizer, schedule,
random states and the position in the data order (which depends only on the seed and the epoch);
with stateful training the streams' position and the state carried into the next window, and with
`ema` the averaged weights and the initial ones. So a run interrupted and resumed on a CPU in fp32
ends with the same weights, bit for bit, as one that never stopped.
"""

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from charnn import checkpoint, run_folder
from charnn.config import ModelConfig, TrainConfig
from charnn.data import dataset
from charnn.errors import CheckpointError, ConfigError, RunDirError
from charnn.hardware import resolve_device, resolve_precision
from charnn.training import distributed
from charnn.training.record import RunState, TrainResult
from charnn.training.stopping import StopCheck
from charnn.training.trainer import EventHandler, Resumed, Trainer, check_processes

# Options that may differ when a run is resumed: they say when to stop or how to report,
# not what is computed.
RESUMABLE_OPTIONS = ("epochs", "max_steps", "time_limit", "threads", "log_every_seconds", "patience", "keep_last")


def resume(
    run_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    on_event: EventHandler | None = None,
    should_stop: StopCheck | None = None,
) -> TrainResult:
    """Continue the run in `run_dir` from its newest complete checkpoint.

    The corpus, model and options come from the run; `overrides` (TrainConfig or ModelConfig
    fields) may change only the options in RESUMABLE_OPTIONS (when to stop, how to report);
    any other that differs is refused.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"no such run folder: {run_dir}")
    group = distributed.from_env()
    with distributed.session(group), run_folder.existing_run(run_dir) if group.is_main else contextlib.nullcontext():
        distributed.barrier(group)
        return _resume(run_dir, overrides or {}, on_event, should_stop, group)


def _resume(run_dir, overrides, on_event, should_stop, group) -> TrainResult:
    path = run_folder.newest_resumable(run_dir)
    training = checkpoint.read_metadata(path).get("training", {})
    try:
        saved = TrainConfig.from_dict(training["config"])
        state = RunState.from_record(training)
    except (KeyError, TypeError, ValueError) as error:  # ConfigError is a ValueError
        raise CheckpointError(f"checkpoint {path}: its training record is incomplete ({error})") from None
    model_fields = ModelConfig.__dataclass_fields__
    config = _merge_options(saved, {k: v for k, v in overrides.items() if k not in model_fields})
    device = distributed.device_for(group, resolve_device(config.device))
    ckpt = checkpoint.read_checkpoint(path, device)
    _refuse_model_changes(ckpt.config, {k: v for k, v in overrides.items() if k in model_fields})
    trainer_state = checkpoint.load_trainer_state(path)
    data = dataset.find_again(ckpt.corpus, config.val_fraction, ckpt.vocab)
    dtype = resolve_precision(config.precision, device)
    data = dataset.split(data, vocab=ckpt.vocab, val_fraction=config.val_fraction)  # prepared data's split: the run's
    check_processes(data, config, group)
    if group.is_main:
        run_folder.truncate_metrics(run_dir, state.step)
    resumed = Resumed(path, state, trainer_state)
    trainer = Trainer(data, ckpt.model.train(), config, run_dir, device, dtype, group, on_event, should_stop,
                      resumed=resumed, init_from=training.get("init_from"))  # fmt: skip
    return trainer.run()


def _merge_options(saved: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """The run's options with `overrides` of those in RESUMABLE_OPTIONS; any other that differs is refused."""
    conflicts = [
        f"`{name}` {value} (the run has {getattr(saved, name)})"
        for name, value in overrides.items()
        if name not in RESUMABLE_OPTIONS and getattr(saved, name) != value
    ]
    if conflicts:
        raise ConfigError(
            "a resumed run keeps its options; these differ: " + "; ".join(conflicts) + ". Start a new run instead"
        )
    return dataclasses.replace(saved, **{k: v for k, v in overrides.items() if k in RESUMABLE_OPTIONS})


def _refuse_model_changes(model: ModelConfig, overrides: dict[str, Any]) -> None:
    conflicts = [f"`{k}` {v} (the run has {getattr(model, k)})" for k, v in overrides.items() if getattr(model, k) != v]
    if conflicts:
        raise ConfigError("a resumed run keeps its model; these differ: " + "; ".join(conflicts))
