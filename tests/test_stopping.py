"""The rules that end a run early, and the learning-rate schedule beside them."""

import math

from charnn.config import TrainConfig
from charnn.training.record import RunState
from charnn.training.schedule import Schedule, total_steps
from charnn.training.stopping import StoppingRules


def test_budgets_count_the_whole_run_and_a_signal_comes_after_them():
    rules = StoppingRules(TrainConfig(max_steps=10, time_limit=1.0), should_stop=lambda: "SIGTERM")
    assert rules.budget_spent(9, 59.0) is None
    assert rules.budget_spent(10, 0.0) == "max_steps"
    assert rules.budget_spent(3, 60.0) == "time_limit"
    assert rules.after_step(3, 1.0) == "SIGTERM" and rules.after_step(10, 1.0) == "max_steps"


def test_patience_waits_while_the_average_is_catching_up():
    rules = StoppingRules(TrainConfig(patience=2))
    s = RunState()
    assert rules.count_evaluation(s, 1.30, average_loss=1.40)  # the first evaluation is the best so far
    assert not rules.count_evaluation(s, 1.31, average_loss=1.32)  # the average fell 0.08: reaches 1.30 in time
    assert s.evals_since_best == 0 and s.last_ema_loss == 1.32
    assert not rules.count_evaluation(s, 1.31, average_loss=1.33)  # rising: counted
    assert not rules.count_evaluation(s, 1.31, average_loss=None)  # counted
    assert s.evals_since_best == 2 and rules.patience_exhausted(s)
    assert rules.count_evaluation(s, 1.2, average_loss=None) and s.evals_since_best == 0 and s.best_val_loss == 1.2


def test_the_schedule_warms_up_anneals_and_halves_on_a_plateau():
    config = TrainConfig(lr=1.0, warmup_steps=4, lr_schedule="cosine", seq_len=10, epochs=2, max_steps=100)
    assert total_steps(config, 80) == 100 and total_steps(config, 30) == 60
    schedule = Schedule(config, total_steps=100)
    assert schedule.rate(RunState(step=0), 0.0, window=10) == 0.25  # a quarter of the warm-up, at the top
    assert math.isclose(schedule.rate(RunState(step=100), 0.0, window=10), 0.1)  # annealed to a tenth
    assert schedule.rate(RunState(step=0), 0.0, window=20) == 0.5  # a longer window takes a longer step
    plateau = Schedule(TrainConfig(lr=1.0, lr_schedule="plateau"), total_steps=100)
    s = RunState()
    for _ in range(8):
        plateau.after_evaluation(s, improved=False)
    plateau.after_evaluation(s, improved=True)
    assert s.lr_factor == 1 / 64 and plateau.rate(s, 0.0, window=plateau.config.seq_len) == 1 / 64
