"""What a run reports and what it records: its events, its result, its counters (`RunState`) and
the training record each checkpoint keeps of them, from which a resumed run reads them back."""

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from charnn.config import TrainConfig
from charnn.scoring.evaluate import NATS_TO_BITS


@dataclass
class Event:
    """What the trainer reports. kind: start, step, log, eval, epoch, checkpoint, warning or stop."""

    kind: str
    epoch: int  # 1-based epoch in progress
    step: int  # optimizer steps done in the whole run
    total_steps: int
    steps_per_epoch: int
    loss: float = math.nan  # mean training loss of this epoch so far (nats per character)
    val_loss: float | None = None
    chars_per_sec: float = 0.0
    elapsed: float = 0.0
    eta: float | None = None  # seconds
    path: Path | None = None
    message: str = ""


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    best_val_loss: float | None = None
    stopped_by: str = "epochs"  # epochs, max_steps, time_limit, patience, or a signal's name


@dataclass
class RunState:
    """The counters of a run; saved in each checkpoint's training record and restored on resume."""

    epoch: int = 1  # the epoch in progress, or the last one completed when epoch_complete
    epoch_complete: bool = False
    step: int = 0
    step_in_epoch: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    losses: list[float] = field(default_factory=list)  # mean training loss of each completed epoch
    val_losses: list[float | None] = field(default_factory=list)
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    lr_factor: float = 1.0  # the plateau schedule's multiplier
    last_eval: tuple[float, float] | None = None  # (train loss, val loss) at the previous evaluation
    last_ema_loss: float | None = None  # the averaged weights' val loss at the previous evaluation
    warned_overfitting: bool = False
    elapsed: float = 0.0  # seconds of training before this invocation
    stream_position: int | None = None  # stateful training: where the streams' next window starts

    @property
    def epoch_loss(self) -> float:
        """The mean training loss of this epoch so far."""
        return self.epoch_loss_sum / self.epoch_loss_count if self.epoch_loss_count else math.nan

    def start_epoch(self, epoch: int) -> None:
        """Begin `epoch`, unless it is the one in progress (a resumed run goes on where it stopped)."""
        if self.epoch != epoch or self.epoch_complete:
            self.epoch, self.epoch_complete = epoch, False
            self.step_in_epoch, self.epoch_loss_sum, self.epoch_loss_count = 0, 0.0, 0

    def count_step(self, loss: float) -> None:
        self.step += 1
        self.step_in_epoch += 1
        self.epoch_loss_sum += loss
        self.epoch_loss_count += 1

    @classmethod
    def from_record(cls, training: dict[str, Any]) -> "RunState":
        """The state a checkpoint's training record holds (see `training_record`).

        Records written before each figure was stored once hold the whole state under "state".
        """
        state = dict(training["state"])
        if "last_eval" not in state:
            train_loss = state.pop("last_eval_train_loss")
            state["last_eval"] = None if train_loss is None else (train_loss, training["val_loss"])
        for name in _RECORD_TOP:
            state.setdefault(name, training[name])
        state.setdefault("elapsed", training["elapsed_seconds"])
        return cls(**state)


# The state's figures that a training record keeps at its top, where `charnn info` and readers
# of checkpoint.json find them; the rest of the state goes under "state".
_RECORD_TOP = ("epoch", "step", "losses", "val_losses", "best_val_loss")


def training_record(
    s: RunState, config: TrainConfig, dtype: torch.dtype, elapsed: float, init_from: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A checkpoint's training record: each figure once; `RunState.from_record` reads it back.

    `init_from` is a fine-tuning run's parent (see `charnn.training.finetune`); a run from scratch has none.
    """
    val_loss = s.last_eval[1] if s.last_eval else None  # the latest evaluation's
    state = {k: v for k, v in dataclasses.asdict(s).items() if k not in (*_RECORD_TOP, "elapsed", "last_eval")}
    state["last_eval_train_loss"] = s.last_eval[0] if s.last_eval else None
    record = {
        "epoch": s.epoch,
        "step": s.step,
        "loss": s.epoch_loss,
        "val_loss": val_loss,
        "val_bpc": val_loss * NATS_TO_BITS if val_loss is not None else None,
        "losses": s.losses,
        "val_losses": s.val_losses,
        "best_val_loss": s.best_val_loss,
        "characters_seen": s.step * config.batch_size * config.seq_len,
        "elapsed_seconds": elapsed,
        "precision": str(dtype).removeprefix("torch."),
        "config": config.to_dict(),
        "state": state,
    }
    if init_from is not None:
        record["init_from"] = init_from
    return record


def metrics_entry(
    event: Event, config: TrainConfig, recent_losses: list[float], val_detail: dict[str, float]
) -> dict[str, Any]:
    """The line of metrics.jsonl that records `event` (an evaluation's when it has a val_loss)."""
    entry = {"kind": event.kind, "epoch": event.epoch, "step": event.step, "loss": event.loss,
             "chars_per_sec": round(event.chars_per_sec, 1), "elapsed": round(event.elapsed, 2),
             "characters_seen": event.step * config.batch_size * config.seq_len}  # fmt: skip
    if recent_losses:
        # The epoch's running mean lags; the plot wants the loss of the latest steps.
        entry["recent_loss"] = sum(recent_losses) / len(recent_losses)
    if event.val_loss is not None:
        entry["val_loss"] = event.val_loss
        entry["val_bpc"] = event.val_loss * NATS_TO_BITS
        entry.update(val_detail)
    return entry


class Clock:
    """A run's time: this invocation's, for the rate and the ETA (this machine's, now), and the whole
    run's, earlier invocations included, which `time_limit` counts, as `max_steps` counts all the run's
    steps, so a resumed run keeps its budget and its cosine. It starts when it is made."""

    def __init__(self, state: RunState, config: TrainConfig, total_steps: int, steps_per_epoch: int) -> None:
        self.state, self.config, self.total_steps, self.steps_per_epoch = state, config, total_steps, steps_per_epoch
        self.steps_at_start = state.step
        self.started = self.last_log = time.perf_counter()

    def run_seconds(self, now: float | None = None) -> float:
        """Seconds of training in the whole run."""
        return self.state.elapsed + (time.perf_counter() if now is None else now) - self.started

    def log_due(self, now: float) -> bool:
        """Whether `log_every_seconds` have passed since the last log line; if so, this is one."""
        if now - self.last_log < self.config.log_every_seconds:
            return False
        self.last_log = now
        return True

    def event(self, kind: str, loss: float, val_loss: float | None = None, **extra) -> Event:
        """An event of the run as it stands, with its rate and ETA."""
        s, config = self.state, self.config
        now = time.perf_counter()
        elapsed = now - self.started
        done = s.step - self.steps_at_start
        rate = done * config.batch_size * config.seq_len / elapsed if elapsed > 0 else 0.0
        eta = (self.total_steps - s.step) * elapsed / done if done else None
        if config.time_limit is not None:
            left = max(0.0, config.time_limit * 60 - self.run_seconds(now))
            eta = left if eta is None else min(eta, left)
        return Event(kind, s.epoch, s.step, self.total_steps, self.steps_per_epoch, loss, val_loss,
                     chars_per_sec=rate, elapsed=self.run_seconds(now), eta=eta, **extra)  # fmt: skip
