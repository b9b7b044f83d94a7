"""When a run stops: its budgets (`max_steps`, `time_limit`), patience on the held-out loss, and
a signal polled after every step. Each reason is a string every process agrees on
(`charnn.training.distributed.STOP_REASONS`)."""

from collections.abc import Callable

from charnn.config import TrainConfig
from charnn.training.record import RunState

StopCheck = Callable[[], str | None]


def catching_up(loss: float, last_loss: float, best: float, evaluations: int) -> bool:
    """Whether a loss falling at the pace of its last fall reaches `best` within `evaluations` more.

    Patience asks it of the weight average, which lags the raw weights by hundreds of steps: when
    they begin to memorise, the average may still be on its way below their best.
    """
    pace = last_loss - loss
    return pace > 0 and loss - best <= pace * evaluations


class StoppingRules:
    """The rules that end a run before its last epoch; `should_stop` returns a signal's name, if any."""

    def __init__(self, config: TrainConfig, should_stop: StopCheck | None = None) -> None:
        self.max_steps, self.time_limit, self.patience = config.max_steps, config.time_limit, config.patience
        self.should_stop = should_stop or (lambda: None)

    def budget_spent(self, step: int, run_seconds: float) -> str | None:
        """Why to stop once the run has used up a budget, else None; both count the whole run."""
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        if self.time_limit is not None and run_seconds >= self.time_limit * 60:
            return "time_limit"
        return None

    def after_step(self, step: int, run_seconds: float) -> str | None:
        return self.budget_spent(step, run_seconds) or self.should_stop()

    def count_evaluation(self, s: RunState, val_loss: float, average_loss: float | None) -> bool:
        """Keep the best loss and patience's count in `s`; whether `val_loss` is a new best.

        `average_loss` is the weight average's (None without one): while it is falling fast enough to
        overtake the best the raw weights reached before they began to memorise, patience waits for it.
        """
        average_catching_up = False
        if average_loss is not None:
            if s.last_ema_loss is not None and s.best_val_loss is not None:
                average_catching_up = catching_up(average_loss, s.last_ema_loss, s.best_val_loss, self.patience or 1)
            s.last_ema_loss = average_loss
        if s.best_val_loss is None or val_loss < s.best_val_loss:
            s.best_val_loss, s.best_step, s.evals_since_best = val_loss, s.step, 0
            return True
        if not average_catching_up:
            s.evals_since_best += 1
        return False

    def patience_exhausted(self, s: RunState) -> bool:
        return self.patience is not None and s.evals_since_best >= self.patience
