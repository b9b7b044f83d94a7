"""Training: the loop, its schedule, evaluation on held-out text, and exact resume.

Library code does not print: progress goes to an `on_event` callback (the CLI draws a bar or
log lines from it), and the history comes back as the return value. Checkpoints and metrics
go into the run folder through `charnn.run_folder`; `charnn.training.plot.plot_run` draws the curves.

    data = open_corpus("great-expectations")
    result = train(data, data.vocab, ModelConfig(vocab_size=len(data.vocab)), TrainConfig(epochs=1), "runs/ge")
    result = resume("runs/ge", {"epochs": 2})
    result = finetune("dickens/hard-times.txt", "runs/ge", TrainConfig(time_limit=2), "runs/hard-times")

A fine-tuning run (`finetune`) starts from another run's checkpoint instead of random weights:
its model, with the vocabulary grown by the new text's characters (`initial_model`). From
then on it is a run like any other; its checkpoints say where it started (`init_from`).

Everything a run needs to continue is in each numbered checkpoint: weights, optimizer,
schedule, random states and the position in the data order (which depends only on the seed
and the epoch); with stateful training the streams' position and the state carried into the
next window, and with `ema` the averaged weights and the initial ones. So a run interrupted and
resumed on a CPU in fp32 ends with the same weights, bit for bit, as one that never stopped.

The corpus may be prepared data (`charnn.data.prepare`), read through a memory map. Started by
torchrun, every process runs the same code: `charnn.training.distributed` wraps the model in DDP, gives
each process its share of every batch and keeps the writing to rank 0.
"""

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from charnn import checkpoint, run_folder
from charnn.config import ModelConfig, TrainConfig
from charnn.data import dataset
from charnn.data.batches import Batches, Streams
from charnn.data.corpus import Corpus, load_corpus
from charnn.data.dataset import Dataset
from charnn.data.prepare import PreparedData, is_prepared
from charnn.errors import CheckpointError, ConfigError, RunDirError, TrainingError
from charnn.fast import recurrence
from charnn.hardware import autocast, resolve_device, resolve_precision
from charnn.model import CharRNN, grow_vocabulary
from charnn.scoring.evaluate import NATS_TO_BITS, loss_sums, model_loss
from charnn.training import distributed
from charnn.vocab import Vocabulary

# Options that may differ when a run is resumed: they say when to stop or how to report,
# not what is computed.
RESUMABLE_OPTIONS = ("epochs", "max_steps", "time_limit", "threads", "log_every_seconds", "patience", "keep_last")


def averaged_weights(
    average: list[torch.Tensor], initial: list[torch.Tensor], decay: float, steps: int, init_share: float
) -> list[torch.Tensor]:
    """The weights a run's average stands for, with the initial weights' share fixed at `init_share`.

    `average` is updated each step as `decay * average + (1 - decay) * weights`, starting from
    `initial`, so it keeps a share `decay ** steps` of the initial weights: much of it early on (29%
    after 624 steps at 0.998), little late (5% after 1,500). Here that share is taken out and a fixed
    `init_share` put back. Some pull towards the initial weights regularises: on runs of 1,000 to 1,500
    steps the fading share scored better than none, and a fixed 0.1 as well or better on each; on runs
    that patience ends early the fixed share scored far better (benchmarks/RESULTS.md).
    """
    faded = decay**steps
    if faded >= 1.0:  # no step taken: the average is the initial weights
        return list(initial)
    scale = (1 - init_share) / (1 - faded)
    return [scale * a + (init_share - scale * faded) * w for a, w in zip(average, initial, strict=True)]


def catching_up(loss: float, last_loss: float, best: float, evaluations: int) -> bool:
    """Whether a loss falling at the pace of its last fall reaches `best` within `evaluations` more.

    Patience asks it of the weight average, which lags the raw weights by hundreds of steps: when
    they begin to memorise, the average may still be on its way below their best (on a 347,000-
    character novel it fell 1.3219 -> 1.2991 while the best stood at 1.2929, then overtook it).
    """
    pace = last_loss - loss
    return pace > 0 and loss - best <= pace * evaluations


def run_progress(step: int, total_steps: int, elapsed: float, time_limit: float | None) -> float:
    """How far through its budget a run is, 0 to 1: steps, or the clock (`time_limit` minutes) when that ends it first.

    The cosine schedule anneals along it, so a run stopped by --time-limit ends at its lowest rate too.
    """
    progress = step / max(1, total_steps)
    if time_limit is not None:
        progress = max(progress, elapsed / (time_limit * 60))
    return min(1.0, progress)


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

    `init_from` is a fine-tuning run's parent (see `finetune`); a run from scratch has none.
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


StopCheck = Callable[[], str | None]


def train(
    data: Dataset | Corpus | PreparedData,
    vocab: Vocabulary,
    model_config: ModelConfig,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    on_event: Callable[[Event], None] | None = None,
    overwrite: bool = False,
    should_stop: StopCheck | None = None,
) -> TrainResult:
    """Train a new model on `data` and write its checkpoints into `run_dir`.

    `data` is a Dataset (`charnn.data.dataset.open_corpus`), or a Corpus or PreparedData, split here
    with `vocab` and `config.val_fraction` (see `charnn.data.dataset.split`). `should_stop` is polled
    after every step; a reason it returns (say "SIGINT") ends the run with a checkpoint, so it
    can be resumed. The run's loss curves are drawn by `charnn.training.plot.plot_run(run_dir)`.
    """
    group = distributed.from_env()
    with distributed.session(group):
        return _train(data, vocab, model_config, config, Path(run_dir), on_event, overwrite, should_stop, group)


def _train(data, vocab, model, config, run_dir, on_event, overwrite, should_stop, group, init_from=None) -> TrainResult:
    """`model` is a ModelConfig for a new network, or a CharRNN to start from (fine-tuning)."""
    # Everything that can be refused is checked before the run folder is touched.
    device = distributed.device_for(group, resolve_device(config.device))
    dtype = resolve_precision(config.precision, device)
    data = dataset.split(data, vocab=vocab, val_fraction=config.val_fraction)
    trainer = Trainer(data, config, run_dir, device, dtype, on_event, should_stop, group)
    trainer.init_from = init_from
    # Rank 0 writes the folder and holds its lock; the others wait until it is ready.
    with run_folder.new_run(run_dir, overwrite) if group.is_main else contextlib.nullcontext():
        distributed.barrier(group)
        torch.manual_seed(config.seed)
        trainer.build(model if isinstance(model, CharRNN) else CharRNN(model))
        return trainer.run()


def resume(
    run_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    on_event: Callable[[Event], None] | None = None,
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
        return _resume(run_dir, overrides, on_event, should_stop, group)


def _resume(run_dir, overrides, on_event, should_stop, group) -> TrainResult:
    path = run_folder.newest_resumable(run_dir)
    training = checkpoint.read_metadata(path).get("training", {})
    try:
        saved = TrainConfig.from_dict(training["config"])
        state = RunState.from_record(training)
    except (KeyError, TypeError, ValueError) as error:  # ConfigError is a ValueError
        raise CheckpointError(f"checkpoint {path}: its training record is incomplete ({error})") from None
    overrides = overrides or {}
    model_fields = ModelConfig.__dataclass_fields__
    config = _merge_options(saved, {k: v for k, v in overrides.items() if k not in model_fields})
    device = distributed.device_for(group, resolve_device(config.device))
    ckpt = checkpoint.read_checkpoint(path, device)
    _refuse_model_changes(ckpt.config, {k: v for k, v in overrides.items() if k in model_fields})
    trainer_state = checkpoint.load_trainer_state(path)
    data = dataset.find_again(ckpt.corpus, config.val_fraction, ckpt.vocab)
    dtype = resolve_precision(config.precision, device)
    data = dataset.split(
        data, vocab=ckpt.vocab, val_fraction=config.val_fraction
    )  # prepared data's own split must be the run's
    trainer = Trainer(data, config, run_dir, device, dtype, on_event, should_stop, group)
    trainer.init_from = training.get("init_from")  # from the record: the parent itself is not read again
    trainer.build(ckpt.model.train(), state, trainer_state)
    trainer.result.last_checkpoint = path  # until a newer one is written
    if group.is_main:
        run_folder.truncate_metrics(run_dir, state.step)
    return trainer.run()


# --- fine-tuning ---------------------------------------------------------------------------

# What a fine-tuning run takes from its parent as it is: the shapes of the weights. Dropout may
# change (it is how the network is trained, not what it holds); the vocabulary grows.
FIXED_BY_PARENT = ("embedding_dim", "hidden_size", "cell", "num_layers")


def finetune(
    corpus: Corpus | str | Path,
    init_from: str | Path,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    model_changes: dict[str, Any] | None = None,
    encoding: str = "utf-8",
    on_event: Callable[[Event], None] | None = None,
    overwrite: bool = False,
    should_stop: StopCheck | None = None,
) -> TrainResult:
    """Train the model of checkpoint `init_from` further on `corpus`, into a new run in `run_dir`.

    `init_from` is a checkpoint folder or a run folder (its best, else its newest checkpoint).
    The model keeps its parent's shape; `model_changes` (ModelConfig fields) may only repeat it,
    or set `dropout`. The vocabulary is the parent's followed by the characters of `corpus` it
    lacks (see `initial_model`). Every option of `config` works as in `train`, and the run is
    resumed with `resume` like any other, without the parent. Its checkpoints record the parent's
    path and the sha256 of its weights under `training["init_from"]`.
    """
    run_dir = Path(run_dir)
    parent = load_parent(init_from)
    changes = dict(model_changes or {})
    _refuse_parent_changes(parent.config, changes)
    _refuse_parent_folder(run_dir, parent.path)
    run_folder.check_new(run_dir, overwrite)  # before a large corpus is read
    if not isinstance(corpus, Corpus):
        if is_prepared(str(corpus)):
            raise ConfigError(
                f"corpus {corpus} is prepared data, whose vocabulary is fixed; fine-tuning grows the parent's "
                "vocabulary by the text's characters, so give it the text itself"
            )
        corpus = load_corpus(str(corpus), encoding=encoding)
    model, vocab = initial_model(parent, corpus.text, seed=config.seed, dropout=changes.get("dropout"))
    record = {
        "path": str(parent.path.resolve()),
        "weights_sha256": checkpoint.weights_sha256(parent.path),
        "vocabulary_size": len(parent.vocab),
        "added_characters": list(vocab.characters[len(parent.vocab) :]),
    }
    group = distributed.from_env()
    with distributed.session(group):
        return _train(corpus, vocab, model, config, run_dir, on_event, overwrite, should_stop, group, record)


def load_parent(path: str | Path) -> checkpoint.Checkpoint:
    """The checkpoint a fine-tuning run starts from, resolved as `charnn generate` resolves it."""
    try:
        return run_folder.load_checkpoint(Path(path))
    except CheckpointError as error:
        raise CheckpointError(f"cannot fine-tune from {path}: {error}") from None


def initial_model(
    parent: checkpoint.Checkpoint, text: str, *, seed: int = 0, dropout: float | None = None
) -> tuple[CharRNN, Vocabulary]:
    """The model a fine-tuning run on `text` starts from, and its vocabulary.

    The vocabulary is the parent's followed by the characters of `text` it lacks, so every
    character the parent knew keeps its index; the model is the parent's with a row for each new
    character (`charnn.model.grow_vocabulary`, drawn with `seed`), and `dropout` if given.
    """
    vocab = parent.vocab.extended(text)
    model = grow_vocabulary(parent.model, len(vocab), generator=torch.Generator().manual_seed(seed))
    if dropout is not None and dropout != model.config.dropout:
        weights = model.state_dict()
        model = CharRNN(dataclasses.replace(model.config, dropout=dropout))
        model.load_state_dict(weights)
    return model.train(), vocab


def _refuse_parent_changes(parent: ModelConfig, changes: dict[str, Any]) -> None:
    unknown = sorted(set(changes) - set(ModelConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"model_changes holds names that are not ModelConfig fields: {', '.join(unknown)}")
    conflicts = [
        f"`{name}` {changes[name]} (the parent has {getattr(parent, name)})"
        for name in FIXED_BY_PARENT
        if name in changes and changes[name] != getattr(parent, name)
    ]
    if conflicts:
        raise ConfigError(
            "a fine-tuned model keeps its parent's shape; these differ: " + "; ".join(conflicts) + ". Leave them out"
        )
    if "dropout" in changes:
        dataclasses.replace(parent, dropout=changes["dropout"])  # validated like any ModelConfig


def _refuse_parent_folder(run_dir: Path, parent_path: Path) -> None:
    """A fine-tuning run writes a folder of its own: never into, or over, its parent's run."""
    out = run_dir.resolve()
    home = run_folder.holder(parent_path)
    if out == home or home in out.parents:
        where = "is" if out == home else "is inside"
        raise RunDirError(
            f"{run_dir} {where} the parent's own run folder {home}; give the fine-tuning run a new folder"
        )
    if out in Path(parent_path).resolve().parents:
        raise RunDirError(f"{run_dir} holds the parent checkpoint {parent_path}; give the run a new folder")


def _refuse_model_changes(model: ModelConfig, overrides: dict[str, Any]) -> None:
    conflicts = [f"`{k}` {v} (the run has {getattr(model, k)})" for k, v in overrides.items() if getattr(model, k) != v]
    if conflicts:
        raise ConfigError("a resumed run keeps its model; these differ: " + "; ".join(conflicts))


def _merge_options(saved: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
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


class Trainer:
    """One run's loop. `build` sets up the model and optimizer; `run` trains until a stop."""

    def __init__(self, data: Dataset, config, run_dir, device, dtype, on_event, should_stop, group=distributed.ONE):
        self.config: TrainConfig = config
        self.data = data
        self.group: distributed.Group = group
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
        if config.stateful:
            self.batches = Streams(data.train_tokens, config.batch_size, config.seq_len, config.seed, group.rank,
                                   group.world_size, config.seq_len_jitter)  # fmt: skip
        else:
            self.batches = Batches(data.train_tokens, config.batch_size, config.seq_len, config.seed, group.rank,
                                   group.world_size)  # fmt: skip
        self.carried = None  # stateful training: the state each row ended its last window with (detached)
        self.run_dir = run_dir
        self.device, self.dtype = device, dtype
        self.emit = (on_event or (lambda event: None)) if group.is_main else (lambda event: None)
        self.should_stop = should_stop or (lambda: None)
        self.result = TrainResult()
        self.total_steps = config.epochs * self.batches.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        # A loss this far above chance means the run has diverged.
        self.explode_at = max(10.0, 3 * math.log(len(data.vocab)))
        self.init_from: dict[str, Any] | None = None  # a fine-tuning run's parent, kept in every checkpoint

    def build(self, model: CharRNN, state: RunState | None = None, trainer_state: dict | None = None) -> None:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.model = model.to(self.device)
        self.network = distributed.wrap(self.group, self.model, self.device)  # what a training step calls
        parameters = self.model.parameters()
        if self.config.weight_decay:
            self.optimizer = torch.optim.AdamW(parameters, lr=self.config.lr, weight_decay=self.config.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(parameters, lr=self.config.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        # A hand-written bf16 GRU recurrence where it applies (see charnn.fast.recurrence); else PyTorch's.
        # DDP must see every forward: where it wraps the model (GPUs), PyTorch's own.
        self.fast_forward = self.network is self.model and recurrence.supported(self.model, self.device, self.dtype)
        self.state = state or RunState()
        # The averaged weights start as the initial ones, which are kept too (see `averaged_weights`);
        # fp32 whatever the compute precision.
        self.ema = [p.detach().float().clone() for p in self.model.parameters()] if self.config.ema else None
        self.initial = [e.clone() for e in self.ema] if self.ema is not None else None
        if trainer_state is not None:
            self._restore_streams(trainer_state)
            if self.ema is not None:
                self.ema = [e.to(self.device) for e in trainer_state["ema"]]
                # A run begun before the initial weights were kept scores its average as it always did.
                initial = trainer_state.get("initial")
                self.initial = None if initial is None else [e.to(self.device) for e in initial]
            self.optimizer.load_state_dict(trainer_state["optimizer"])
            self.scaler.load_state_dict(trainer_state["scaler"])
            torch.set_rng_state(self._own_rng(trainer_state, "rng_cpu"))
            if self.device.type == "cuda" and "rng_cuda" in trainer_state:
                torch.cuda.set_rng_state(self._own_rng(trainer_state, "rng_cuda"))
        elif self.group.rank:
            torch.manual_seed(self.config.seed + distributed.RANK_SEED_STRIDE * self.group.rank)
        self.result.best_val_loss = self.state.best_val_loss
        if self.state.best_val_loss is not None:
            self.result.best_checkpoint = run_folder.best(self.run_dir)

    def _restore_streams(self, trainer_state: dict) -> None:
        """Stateful training: the streams' position and this process's rows of the carried state."""
        if not self.config.stateful:
            return
        self.batches.position = self.state.stream_position
        carried = trainer_state.get("carried_state")
        if carried is None or self.state.stream_position is None:
            return
        rows = slice(self.group.rank, None, self.group.world_size)
        self.carried = tuple(c[:, rows].to(self.device) for c in carried)
        if self.model.config.cell != "lstm":
            self.carried = self.carried[0]

    def _own_rng(self, trainer_state: dict, key: str) -> torch.Tensor:
        """This process's random state; a run resumed with another number of processes reseeds the others."""
        ranks = trainer_state.get(f"{key}_ranks")
        if ranks is not None and len(ranks) == self.group.world_size:
            return ranks[self.group.rank]
        if self.group.rank:
            torch.manual_seed(self.config.seed + distributed.RANK_SEED_STRIDE * self.group.rank + self.state.step)
            return torch.get_rng_state() if key == "rng_cpu" else torch.cuda.get_rng_state()
        return trainer_state[key]

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> TrainResult:
        s, config = self.state, self.config
        self.started = time.perf_counter()
        self.steps_at_start = s.step
        self.recent_losses: list[float] = []  # since the last metrics record
        self.last_log = self.started
        self.model.train()
        self._emit("start", s.epoch_loss)
        stop = self._budget_spent(self.started)  # a resumed run may already be at its limit: nothing to do
        first_epoch = s.epoch + 1 if s.epoch_complete else s.epoch
        if stop:
            first_epoch = config.epochs + 1
        for epoch in range(first_epoch, config.epochs + 1):
            if s.epoch != epoch or s.epoch_complete:
                s.epoch, s.epoch_complete = epoch, False
                s.step_in_epoch, s.epoch_loss_sum, s.epoch_loss_count = 0, 0.0, 0
            for inputs, targets in self.batches.epoch(epoch - 1, s.step_in_epoch):
                self._step(inputs, targets)
                stop = distributed.agree(self.group, self._after_step())
                if stop:
                    break
            if not stop or s.step_in_epoch == self.batches.steps_per_epoch:
                s.epoch_complete = True
                s.losses.append(s.epoch_loss)
                val_loss = self._evaluate()
                s.val_losses.append(val_loss)
                self._record("epoch", val_loss)
                self._save(f"ckpt_{epoch}")
                if stop is None and self._patience_exhausted():
                    stop = "patience"
            elif stop in ("max_steps", "time_limit"):
                self._record("eval", self._evaluate())
                self._save(f"ckpt_{epoch}_{s.step}")
            elif not (config.checkpoint_every and s.step % config.checkpoint_every == 0):
                self._save(f"ckpt_{epoch}_{s.step}")  # a signal: no evaluation, leave quickly
            if stop:
                break
        self.result.stopped_by = stop or "epochs"
        self._emit("stop", s.epoch_loss, message=self.result.stopped_by, path=self.result.last_checkpoint)
        return self.result

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        s, config = self.state, self.config
        # A window longer or shorter than seq_len takes a step in proportion (AWD-LSTM's rule).
        lr = config.lr * self._lr_factor()
        if inputs.shape[1] != config.seq_len:
            lr *= inputs.shape[1] / config.seq_len
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        state = None
        if config.stateful and not self.batches.restarted:
            state = self.carried
        if self.fast_forward:
            logits, final = recurrence.training_forward(self.model, inputs, self.dtype, state)  # (B, T, V)
        else:
            with autocast(self.device, self.dtype):
                logits, final = self.network(inputs, state)  # (B, T, V)
        if config.stateful:  # carried to the next window, without its history (truncated BPTT)
            self.carried = (
                tuple(f.detach().float() for f in final) if isinstance(final, tuple) else final.detach().float()
            )
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
        if config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            with torch.no_grad():
                for average, p in zip(self.ema, self.model.parameters(), strict=True):
                    average.lerp_(p.detach().float(), 1 - config.ema)  # ema = decay ema + (1 - decay) p
        s.step += 1
        s.step_in_epoch += 1
        s.epoch_loss_sum += value
        s.epoch_loss_count += 1
        self.recent_losses.append(value)

    def _after_step(self) -> str | None:
        """Log, evaluate and checkpoint as scheduled; return why to stop, if so."""
        s, config = self.state, self.config
        now = time.perf_counter()
        if now - self.last_log >= config.log_every_seconds:
            self.last_log = now
            self._record("log")
        else:
            self._emit("step", s.epoch_loss)
        end_of_epoch = s.step_in_epoch == self.batches.steps_per_epoch
        if config.eval_every and s.step % config.eval_every == 0 and not end_of_epoch:
            self._record("eval", self._evaluate())
            if self._patience_exhausted():
                return "patience"
        if config.checkpoint_every and s.step % config.checkpoint_every == 0 and not end_of_epoch:
            self._save(f"ckpt_{s.epoch}_{s.step}")
        return self._budget_spent(now) or self.should_stop()

    def _budget_spent(self, now: float) -> str | None:
        """Why to stop once the run has used up a budget (`max_steps` or `time_limit`), else None."""
        config = self.config
        if config.max_steps is not None and self.state.step >= config.max_steps:
            return "max_steps"
        if config.time_limit is not None and self._run_seconds(now) >= config.time_limit * 60:
            return "time_limit"
        return None

    def _run_seconds(self, now: float) -> float:
        """Seconds of training in the whole run, earlier invocations included: what `time_limit` counts,
        as `max_steps` counts all the run's steps, so a resumed run keeps its budget and its cosine."""
        return self.state.elapsed + now - self.started

    def _lr_factor(self) -> float:
        s, config = self.state, self.config
        warmup = min(1.0, (s.step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        if config.lr_schedule == "cosine":
            progress = run_progress(s.step, self.total_steps, self._run_seconds(time.perf_counter()), config.time_limit)
            return warmup * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        if config.lr_schedule == "plateau":
            return warmup * s.lr_factor
        return warmup

    # --- evaluation and the best checkpoint ----------------------------------------------

    def _evaluate(self) -> float | None:
        """Loss on the held-out text; keeps `best`, counts patience, warns on over-fitting."""
        if len(self.data.val_tokens) < 3:
            return None
        s = self.state
        val_loss = raw_loss = self._val_loss()
        self.val_detail = {}
        use_ema = average_catching_up = False
        if self.ema is not None:  # the averaged weights scored beside the raw ones; the better counts
            with self._ema_weights():
                ema_loss = self._val_loss()
            self.val_detail = {"raw_val_loss": raw_loss, "ema_val_loss": ema_loss}
            use_ema = ema_loss < raw_loss
            val_loss = min(raw_loss, ema_loss)
            if s.last_ema_loss is not None and s.best_val_loss is not None:
                average_catching_up = catching_up(ema_loss, s.last_ema_loss, s.best_val_loss, self.config.patience or 1)
            s.last_ema_loss = ema_loss
        train_loss = s.epoch_loss
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
        s.last_eval = (train_loss, val_loss)
        if s.best_val_loss is None or val_loss < s.best_val_loss:
            s.best_val_loss, s.best_step, s.evals_since_best = val_loss, s.step, 0
            self.result.best_val_loss = val_loss
            with self._ema_weights() if use_ema else contextlib.nullcontext():
                weights = "ema" if use_ema else "raw"
                self.result.best_checkpoint = self._save(run_folder.BEST, val_loss, resumable=False, weights=weights)
        else:
            # The average lags the raw weights by hundreds of steps: while it is falling fast enough to
            # overtake the best they reached before they began to memorise, patience waits for it.
            if not average_catching_up:
                s.evals_since_best += 1
            if self.config.lr_schedule == "plateau":
                s.lr_factor = max(s.lr_factor / 2, 1 / 64)
        return val_loss

    @contextlib.contextmanager
    def _ema_weights(self):
        """The model holds the averaged weights for the block, its own again after it (bit for bit)."""
        parameters = list(self.model.parameters())
        raw = [p.detach().clone() for p in parameters]
        average = self.ema
        if self.initial is not None:
            config = self.config
            average = averaged_weights(self.ema, self.initial, config.ema, self.state.step, config.ema_init_share)
        with torch.no_grad():
            for p, weights in zip(parameters, average, strict=True):
                p.copy_(weights)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, saved in zip(parameters, raw, strict=True):
                    p.copy_(saved)

    def _val_loss(self) -> float:
        scoring = {"seq_len": self.config.seq_len, "num_streams": self.config.batch_size, "dtype": self.dtype}
        if not self.group.active:
            return model_loss(self.model, self.data.val_tokens, **scoring)
        # Each process scores its share of the held-out streams.
        shares = {"rank": self.group.rank, "world_size": self.group.world_size}
        total, count = distributed.sums(
            self.group, list(loss_sums(self.model, self.data.val_tokens, **scoring, **shares))
        )
        return total / count if count else math.nan

    def _patience_exhausted(self) -> bool:
        return self.config.patience is not None and self.state.evals_since_best >= self.config.patience

    # --- output ----------------------------------------------------------------------------

    def _emit(self, kind: str, loss: float, val_loss: float | None = None, **extra) -> Event:
        s = self.state
        now = time.perf_counter()
        elapsed = now - self.started  # this invocation's: the rate and ETA are this machine's now
        done = s.step - self.steps_at_start
        chars = done * self.config.batch_size * self.config.seq_len
        rate = chars / elapsed if elapsed > 0 else 0.0
        eta = (self.total_steps - s.step) * elapsed / done if done else None
        if self.config.time_limit is not None:
            left = max(0.0, self.config.time_limit * 60 - self._run_seconds(now))
            eta = left if eta is None else min(eta, left)
        event = Event(kind, s.epoch, s.step, self.total_steps, self.batches.steps_per_epoch, loss, val_loss,
                      chars_per_sec=rate, elapsed=self._run_seconds(now), eta=eta, **extra)  # fmt: skip
        self.emit(event)
        return event

    def _record(self, kind: str, val_loss: float | None = None) -> None:
        event = self._emit(kind, self.state.epoch_loss, val_loss)
        entry = {"kind": kind, "epoch": event.epoch, "step": event.step, "loss": event.loss,
                 "chars_per_sec": round(event.chars_per_sec, 1), "elapsed": round(event.elapsed, 2),
                 "characters_seen": event.step * self.config.batch_size * self.config.seq_len}  # fmt: skip
        if self.recent_losses:
            # The epoch's running mean lags; the plot wants the loss of the latest steps.
            entry["recent_loss"] = sum(self.recent_losses) / len(self.recent_losses)
            self.recent_losses = []
        if val_loss is not None:
            entry["val_loss"] = val_loss
            entry["val_bpc"] = val_loss * NATS_TO_BITS
            entry.update(getattr(self, "val_detail", {}))
        self.result.history.append(entry)
        if self.group.is_main:
            run_folder.append_metrics(self.run_dir, entry)

    def _save(self, name: str, val_loss: float | None = None, resumable: bool = True, weights: str = "raw") -> Path:
        s = self.state
        elapsed = round(s.elapsed + time.perf_counter() - self.started, 2)
        if self.config.stateful:
            s.stream_position = self.batches.position
        training = training_record(s, self.config, self.dtype, elapsed, self.init_from)
        if self.ema is not None:
            training["weights"] = weights  # which the folder holds: the raw weights or their average
        trainer_state = self._trainer_state() if resumable else None
        if self.group.is_main:
            run_folder.write_checkpoint(self.run_dir, name, self.model, self.data.vocab, training=training,
                                        corpus=self.data.reference, trainer_state=trainer_state,
                                        previous=self.result.last_checkpoint)  # fmt: skip
        distributed.barrier(self.group)  # nobody runs ahead of a checkpoint being written
        path = self.run_dir / name
        if resumable:
            self.result.last_checkpoint = path
            if self.config.keep_last and self.group.is_main:
                run_folder.prune(self.run_dir, self.config.keep_last)
        self._emit("checkpoint", s.epoch_loss, val_loss, path=path)
        return path

    def _trainer_state(self) -> dict[str, Any]:
        """The optimizer, the scaler and every random state: what resuming needs besides the weights."""
        trainer_state = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            trainer_state["rng_cuda"] = torch.cuda.get_rng_state()
        if self.ema is not None:
            trainer_state["ema"] = [e.cpu() for e in self.ema]
            if self.initial is not None:
                trainer_state["initial"] = [e.cpu() for e in self.initial]
        if self.config.stateful:
            trainer_state["carried_state"] = self._gather_carried()
        if self.group.active:  # every process's own, so each resumes exactly
            trainer_state["rng_cpu_ranks"] = distributed.gather(self.group, torch.get_rng_state())
            if self.device.type == "cuda":
                trainer_state["rng_cuda_ranks"] = distributed.gather(self.group, torch.cuda.get_rng_state())
        return trainer_state

    def _gather_carried(self) -> list[torch.Tensor] | None:
        """The carried state of every row of the batch, whichever process holds it, as [h] or [h, c]."""
        if self.carried is None:
            return None
        mine = [c.cpu() for c in (self.carried if isinstance(self.carried, tuple) else (self.carried,))]
        parts = distributed.gather(self.group, mine)
        world = len(parts)
        full = []
        for i, piece in enumerate(mine):
            whole = piece.new_empty(piece.shape[0], piece.shape[1] * world, piece.shape[2])
            for rank, part in enumerate(parts):
                whole[:, rank::world] = part[i]
            full.append(whole)
        return full
