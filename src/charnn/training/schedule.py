"""The learning rate of each step: warm-up, then constant, a cosine to a tenth, or halved on each
plateau of the held-out loss; a window longer or shorter than `seq_len` scales its step."""

import math

from charnn.config import TrainConfig
from charnn.training.record import RunState

PLATEAU_FLOOR = 1 / 64  # the plateau schedule halves the rate no further than this


def run_progress(step: int, total_steps: int, elapsed: float, time_limit: float | None) -> float:
    """How far through its budget a run is, 0 to 1: steps, or the clock (`time_limit` minutes) when that ends it first.

    The cosine schedule anneals along it, so a run stopped by --time-limit ends at its lowest rate too.
    """
    progress = step / max(1, total_steps)
    if time_limit is not None:
        progress = max(progress, elapsed / (time_limit * 60))
    return min(1.0, progress)


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The steps a run takes if nothing stops it early: its epochs, or `max_steps` if fewer."""
    steps = config.epochs * steps_per_epoch
    return steps if config.max_steps is None else min(steps, config.max_steps)


class Schedule:
    """`TrainConfig.lr_schedule` over a run of `total_steps` steps."""

    def __init__(self, config: TrainConfig, total_steps: int) -> None:
        self.config, self.total_steps = config, total_steps

    def factor(self, s: RunState, run_seconds: float) -> float:
        """The multiplier of `lr` for the step after `s.step`, `run_seconds` into the run."""
        config = self.config
        warmup = min(1.0, (s.step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if config.lr_schedule == "cosine":
            progress = run_progress(s.step, self.total_steps, run_seconds, config.time_limit)
            return warmup * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        if config.lr_schedule == "plateau":
            return warmup * s.lr_factor
        return warmup

    def rate(self, s: RunState, run_seconds: float, window: int) -> float:
        """The learning rate of the next step, on a window of `window` characters."""
        lr = self.config.lr * self.factor(s, run_seconds)
        if window != self.config.seq_len:  # in proportion to its length (AWD-LSTM's rule)
            lr *= window / self.config.seq_len
        return lr

    def after_evaluation(self, s: RunState, improved: bool) -> None:
        """The plateau schedule halves its rate after each evaluation that is not a new best."""
        if self.config.lr_schedule == "plateau" and not improved:
            s.lr_factor = max(s.lr_factor / 2, PLATEAU_FLOOR)
