"""The training loop: `train` starts a new run, and a `Trainer` runs it until a stop.

Library code does not print: progress goes to an `on_event` callback (the CLI draws a bar or log
lines from it), and the history comes back as the return value. Checkpoints and metrics go into
the run folder through `charnn.run_folder`. Each rule around the loop has a module of its own:
the learning rate (`schedule`), when to stop (`stopping`), the weight average (`average`), the
run's counters and records (`record`), the state saved for resuming (`trainer_state`);
`resuming` and `finetuning` start a `Trainer` from a checkpoint. Started by torchrun, every
process runs the same code: `distributed` wraps the model in DDP, gives each process its share
of every batch and keeps the writing to rank 0.
"""

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from charnn import run_folder
from charnn.config import ModelConfig, TrainConfig
from charnn.data import dataset
from charnn.data.batches import Batches, Streams
from charnn.data.corpus import Corpus
from charnn.data.dataset import Dataset
from charnn.data.prepare import PreparedData
from charnn.errors import ConfigError, TrainingError
from charnn.fast import recurrence
from charnn.hardware import autocast, precision_note, resolve_device, resolve_precision
from charnn.model import CharRNN, map_state
from charnn.scoring.evaluate import loss_sums, model_loss
from charnn.training import distributed, trainer_state
from charnn.training.average import WeightAverage
from charnn.training.record import Clock, Event, RunState, TrainResult, metrics_entry, training_record
from charnn.training.schedule import Schedule, total_steps
from charnn.training.stopping import StopCheck, StoppingRules

EventHandler = Callable[[Event], None]


def train(
    data: Dataset | Corpus | PreparedData,
    model_config: ModelConfig,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    on_event: EventHandler | None = None,
    overwrite: bool = False,
    should_stop: StopCheck | None = None,
) -> TrainResult:
    """Train a new model on `data` and write its checkpoints into `run_dir`.

        data = open_corpus("great-expectations")
        result = train(data, ModelConfig(vocab_size=len(data.vocab)), TrainConfig(epochs=1), "runs/ge")

    `data` is a Dataset (`charnn.data.dataset.open_corpus`), whose vocabulary the model reads, or a
    Corpus (its own characters) or PreparedData, split here with `config.val_fraction`. `should_stop`
    is polled after every step; a reason it returns (say "SIGINT") ends the run with a checkpoint,
    so it can be resumed. The run's loss curves are drawn by `charnn.training.plot.plot_run(run_dir)`.
    """
    group = distributed.from_env()
    with distributed.session(group):
        return start(data, model_config, config, Path(run_dir), on_event, overwrite, should_stop, group)


def start(
    data: Dataset | Corpus | PreparedData,
    model: ModelConfig | CharRNN,
    config: TrainConfig,
    run_dir: Path,
    on_event: EventHandler | None,
    overwrite: bool,
    should_stop: StopCheck | None,
    group: distributed.Group,
    init_from: dict[str, Any] | None = None,
) -> TrainResult:
    """A new run: `model` is a ModelConfig for a new network, or a CharRNN to start from (fine-tuning)."""
    # Everything that can be refused is checked before the run folder is touched.
    device = distributed.device_for(group, resolve_device(config.device))
    dtype = resolve_precision(config.precision, device)
    data = dataset.split(data, val_fraction=config.val_fraction)
    check_processes(data, config, group)
    # Rank 0 writes the folder and holds its lock; the others wait until it is ready.
    with run_folder.new_run(run_dir, overwrite) if group.is_main else contextlib.nullcontext():
        distributed.barrier(group)
        torch.manual_seed(config.seed)
        network = model if isinstance(model, CharRNN) else CharRNN(model)
        trainer = Trainer(data, network, config, run_dir, device, dtype, group, on_event, should_stop,
                          init_from=init_from)  # fmt: skip
        return trainer.run()


def check_processes(data: Dataset, config: TrainConfig, group: distributed.Group) -> None:
    """Refuse a batch the processes cannot share equally, or processes that read different texts."""
    if config.batch_size % group.world_size:
        raise ConfigError(
            f"`batch_size` {config.batch_size} is not a multiple of the {group.world_size} processes; "
            "each takes an equal share of every batch"
        )
    if len(set(distributed.gather(group, data.reference["sha256"]))) > 1:
        raise ConfigError(
            "the processes do not all train on the same text (its sha256 differs between them); prepare the "
            "same corpus on every machine, or put DATA_DIR where they all see it"
        )


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run goes on from: its newest checkpoint, that checkpoint's counters and trainer state."""

    checkpoint: Path
    state: RunState
    trainer_state: dict[str, Any]


class Trainer:
    """One run's loop, built whole by its constructor: a new run, or a `resumed` one. `init_from`
    is a fine-tuning run's parent, which every checkpoint records."""

    def __init__(self, data: Dataset, model: CharRNN, config: TrainConfig, run_dir: Path, device: torch.device,
                 dtype: torch.dtype, group: distributed.Group, on_event: EventHandler | None,
                 should_stop: StopCheck | None, *, resumed: Resumed | None = None,
                 init_from: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.data, self.config, self.run_dir, self.group = data, config, run_dir, group
        self.device, self.dtype, self.init_from = device, dtype, init_from
        self.state = resumed.state if resumed else RunState()
        self.emit = (on_event or (lambda event: None)) if group.is_main else (lambda event: None)
        self.stopping = StoppingRules(config, should_stop)
        self.batches = batches_for(data, config, group)
        self.total_steps = total_steps(config, self.batches.steps_per_epoch)
        self.schedule = Schedule(config, self.total_steps)
        self.explode_at = max(10.0, 3 * math.log(len(data.vocab)))  # a loss this far above chance: diverged
        if config.threads:
            torch.set_num_threads(config.threads)
        self.model = model.to(device)
        self.network = distributed.wrap(group, self.model, device)  # what a training step calls
        self.optimizer = optimizer_for(self.model, config)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        # A hand-written bf16 GRU recurrence where it applies; DDP must see every forward, so PyTorch's where it wraps.
        self.fast_forward = self.network is self.model and recurrence.supported(self.model, device, dtype)
        if self.fast_forward:
            recurrence.prepare(self.model)
        self.average = WeightAverage(self.model, config.ema, config.ema_init_share) if config.ema else None
        self.carried: trainer_state.Carried = None  # stateful training: each row's state from its last window
        self.result = TrainResult(best_val_loss=self.state.best_val_loss)
        if resumed is not None:
            self._restore(resumed.trainer_state)
            self.result.last_checkpoint = resumed.checkpoint  # until a newer one is written
        elif group.rank:
            torch.manual_seed(config.seed + distributed.RANK_SEED_STRIDE * group.rank)
        if self.state.best_val_loss is not None:
            self.result.best_checkpoint = run_folder.best(run_dir)
        self.recent_losses: list[float] = []  # since the last metrics record
        self.clock = Clock(self.state, config, self.total_steps, self.batches.steps_per_epoch)

    def _compute_note(self) -> str:
        """How the steps are computed here, for the run's first line: precision and why, the GRU's path, threads."""
        parts = [precision_note(self.config.precision, self.device, self.dtype)]
        if self.device.type == "cpu":
            kernel = recurrence.kernel_isa(self.model) if self.fast_forward else None
            parts.append(f"GRU gates compiled for {kernel}" if kernel else "PyTorch's GRU operations")
            threads = torch.get_num_threads()
            parts.append(f"{threads} thread{'s' if threads > 1 else ''}")
        return ", ".join(parts)

    def _restore(self, saved: dict[str, Any]) -> None:
        s = self.state
        if self.config.stateful:
            self.batches.position = s.stream_position
            if s.stream_position is not None:
                self.carried = trainer_state.own_carried(saved, self.group, self.device)
        if self.average is not None:
            self.average.load_state_dict(saved, s.step, self.device)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        trainer_state.restore_random_states(saved, self.device, self.group, self.config.seed, s.step)

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> TrainResult:
        s, config = self.state, self.config
        self.model.train()
        self._emit("start", s.epoch_loss, message=self._compute_note())
        # A resumed run may already be at its limit: nothing to do.
        stop = self.stopping.budget_spent(s.step, self.clock.run_seconds(self.clock.started))
        first_epoch = config.epochs + 1 if stop else s.epoch + 1 if s.epoch_complete else s.epoch
        for epoch in range(first_epoch, config.epochs + 1):
            s.start_epoch(epoch)
            for inputs, targets in self.batches.epoch(epoch - 1, s.step_in_epoch):
                self._step(inputs, targets)
                stop = distributed.agree(self.group, self._after_step())
                if stop:
                    break
            stop = self._end_epoch(epoch, stop)
            if stop:
                break
        self.result.stopped_by = stop or "epochs"
        self._emit("stop", s.epoch_loss, message=self.result.stopped_by, path=self.result.last_checkpoint)
        return self.result

    def _end_epoch(self, epoch: int, stop: str | None) -> str | None:
        """Evaluate and checkpoint where the epoch ended (completed, or stopped); return why to stop."""
        s, config = self.state, self.config
        if not stop or s.step_in_epoch == self.batches.steps_per_epoch:
            s.epoch_complete = True
            s.losses.append(s.epoch_loss)
            val_loss, detail = self._evaluate()
            s.val_losses.append(val_loss)
            self._record("epoch", val_loss, detail)
            self._save(f"ckpt_{epoch}")
            if stop is None and self.stopping.patience_exhausted(s):
                stop = "patience"
        elif stop in ("max_steps", "time_limit"):
            self._record("eval", *self._evaluate())
            self._save(f"ckpt_{epoch}_{s.step}")
        elif not (config.checkpoint_every and s.step % config.checkpoint_every == 0):
            self._save(f"ckpt_{epoch}_{s.step}")  # a signal: no evaluation, leave quickly
        return stop

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        s = self.state
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.rate(s, self.clock.run_seconds(), inputs.shape[1])
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        carried = self.carried if self.config.stateful and not self.batches.restarted else None
        if self.fast_forward:
            logits, final = recurrence.training_forward(self.model, inputs, self.dtype, carried)  # (B, T, V)
        else:
            with autocast(self.device, self.dtype):
                logits, final = self.network(inputs, carried)  # (B, T, V)
        if self.config.stateful:  # carried to the next window, without its history (truncated BPTT)
            self.carried = map_state(lambda part: part.detach().float(), final)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        value = distributed.mean(self.group, loss)  # loss.item() with one process
        # Checked before the update, so a diverged step never reaches the weights.
        if not math.isfinite(value) or value > self.explode_at:
            raise TrainingError(
                f"the training loss became {value:.4g} at step {s.step + 1} (diverged); try a smaller `lr` or "
                f"`grad_clip`. The last checkpoint ({self.result.last_checkpoint or 'none yet'}) is untouched"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.group, self.network)  # DDP's job on GPUs; one all-reduce on CPUs
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update(self.model)
        s.count_step(value)
        self.recent_losses.append(value)

    def _after_step(self) -> str | None:
        """Log, evaluate and checkpoint as scheduled; return why to stop, if so."""
        s, config = self.state, self.config
        now = time.perf_counter()
        if self.clock.log_due(now):
            self._record("log")
        else:
            self._emit("step", s.epoch_loss)
        end_of_epoch = s.step_in_epoch == self.batches.steps_per_epoch
        if config.eval_every and s.step % config.eval_every == 0 and not end_of_epoch:
            self._record("eval", *self._evaluate())
            if self.stopping.patience_exhausted(s):
                return "patience"
        if config.checkpoint_every and s.step % config.checkpoint_every == 0 and not end_of_epoch:
            self._save(f"ckpt_{s.epoch}_{s.step}")
        return self.stopping.after_step(s.step, self.clock.run_seconds(now))

    # --- evaluation and the best checkpoint ----------------------------------------------

    def _evaluate(self) -> tuple[float | None, dict[str, float]]:
        """Loss on the held-out text, the better of the raw and averaged weights' (both in the detail
        returned beside it); keeps the best checkpoint."""
        if len(self.data.val_tokens) < 3:
            return None, {}
        s = self.state
        val_loss = raw_loss = held_out_loss(self.model, self.data, self.config, self.dtype, self.group)
        detail, average_loss = {}, None
        if self.average is not None:
            with self.average.swapped_in(self.model):
                average_loss = held_out_loss(self.model, self.data, self.config, self.dtype, self.group)
            detail = {"raw_val_loss": raw_loss, "ema_val_loss": average_loss}
            val_loss = min(raw_loss, average_loss)
        self._warn_if_memorising(s.epoch_loss, val_loss)
        s.last_eval = (s.epoch_loss, val_loss)
        improved = self.stopping.count_evaluation(s, val_loss, average_loss)
        self.schedule.after_evaluation(s, improved)
        if improved:
            self.result.best_val_loss = val_loss
            use_average = average_loss is not None and average_loss < raw_loss
            with self.average.swapped_in(self.model) if use_average else contextlib.nullcontext():
                weights = "ema" if use_average else "raw"
                self.result.best_checkpoint = self._save(run_folder.BEST, val_loss, resumable=False, weights=weights)
        return val_loss, detail

    def _warn_if_memorising(self, train_loss: float, val_loss: float) -> None:
        s = self.state
        if s.last_eval and not s.warned_overfitting:
            last_train, last_val = s.last_eval
            if val_loss > last_val and train_loss < last_train:
                s.warned_overfitting = True
                self._emit(
                    "warning",
                    train_loss,
                    message=f"validation loss rose from {last_val:.4f} to {val_loss:.4f} while training loss fell: "
                    f"the model has begun to memorise its text; {self.run_dir / run_folder.BEST} keeps the best",
                )

    # --- output ----------------------------------------------------------------------------

    def _emit(self, kind: str, loss: float, val_loss: float | None = None, **extra) -> Event:
        event = self.clock.event(kind, loss, val_loss, **extra)
        self.emit(event)
        return event

    def _record(self, kind: str, val_loss: float | None = None, detail: dict[str, float] | None = None) -> None:
        event = self._emit(kind, self.state.epoch_loss, val_loss)
        entry = metrics_entry(event, self.config, self.recent_losses, detail or {})
        self.recent_losses = []
        self.result.history.append(entry)
        if self.group.is_main:
            run_folder.append_metrics(self.run_dir, entry)

    def _save(self, name: str, val_loss: float | None = None, resumable: bool = True, weights: str = "raw") -> Path:
        s = self.state
        elapsed = round(self.clock.run_seconds(), 2)
        if self.config.stateful:
            s.stream_position = self.batches.position
        training = training_record(s, self.config, self.dtype, elapsed, self.init_from)
        if self.average is not None:
            training["weights"] = weights  # which the folder holds: the raw weights or their average
        saved = None
        if resumable:
            saved = trainer_state.capture(self.optimizer, self.scaler, self.device, self.group, self.average,
                                          self.carried, self.config.stateful)  # fmt: skip
        if self.group.is_main:
            run_folder.write_checkpoint(self.run_dir, name, self.model, self.data.vocab, training=training,
                                        corpus=self.data.reference, trainer_state=saved,
                                        previous=self.result.last_checkpoint)  # fmt: skip
        distributed.barrier(self.group)  # nobody runs ahead of a checkpoint being written
        path = self.run_dir / name
        if resumable:
            self.result.last_checkpoint = path
            if self.config.keep_last and self.group.is_main:
                run_folder.prune(self.run_dir, self.config.keep_last)
        self._emit("checkpoint", s.epoch_loss, val_loss, path=path)
        return path


def batches_for(data: Dataset, config: TrainConfig, group: distributed.Group) -> Batches | Streams:
    """This process's rows of every batch: independent windows, or streams that carry state (`stateful`)."""
    if config.stateful:
        return Streams(data.train_tokens, config.batch_size, config.seq_len, config.seed, group.rank,
                       group.world_size, config.seq_len_jitter)  # fmt: skip
    return Batches(data.train_tokens, config.batch_size, config.seq_len, config.seed, group.rank, group.world_size)


def optimizer_for(model: CharRNN, config: TrainConfig) -> torch.optim.Optimizer:
    if config.weight_decay:
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


def held_out_loss(
    model: CharRNN, data: Dataset, config: TrainConfig, dtype: torch.dtype, group: distributed.Group
) -> float:
    """The model's loss on the held-out text, read in `batch_size` streams of `seq_len` windows."""
    scoring = {"seq_len": config.seq_len, "num_streams": config.batch_size, "dtype": dtype}
    if not group.active:
        return model_loss(model, data.val_tokens, **scoring)
    # Each process scores its share of the held-out streams.
    shares = {"rank": group.rank, "world_size": group.world_size}
    total, count = distributed.sums(group, list(loss_sums(model, data.val_tokens, **scoring, **shares)))
    return total / count if count else math.nan
