"""Training: a function that runs the loop, writes checkpoints and metrics, and reports events.

Library code does not print: progress goes to an `on_event` callback (the CLI draws a bar or
log lines from it), and the history comes back as the return value.

    corpus = load_corpus("great-expectations")
    vocab = Vocabulary.from_text(corpus.text)
    result = train(corpus, vocab, ModelConfig(vocab_size=len(vocab)), TrainConfig(epochs=1), "runs/ge")
"""

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from charnn import checkpoint, fastgru
from charnn.config import ModelConfig, TrainConfig
from charnn.corpus import Corpus
from charnn.data import Batches, split
from charnn.errors import RunDirError, TrainingError
from charnn.model import CharRNN
from charnn.vocab import Vocabulary

METRICS = "metrics.jsonl"


@dataclass
class Event:
    """What the trainer reports. kind: start, step, log, epoch, checkpoint or stop."""

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
    stopped_by: str = "epochs"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 where the hardware computes it natively, else fp32."""
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        if device.type != "cuda":
            raise TrainingError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on a CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def evaluate(
    model: CharRNN,
    tokens: torch.Tensor,
    seq_len: int = 100,
    num_streams: int = 64,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Mean loss in nats per character over the whole of `tokens`.

    The text is cut into `num_streams` contiguous pieces run side by side, state carried
    from chunk to chunk, so every character but the first of each piece is predicted.
    """
    device = next(model.parameters()).device
    num_streams = max(1, min(num_streams, (len(tokens) - 1) // 2))
    piece = len(tokens) // num_streams
    if piece < 2:
        return math.nan
    streams = tokens[: piece * num_streams].view(num_streams, piece).long().to(device)  # (S, L)
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    with torch.inference_mode(), autocast(device, dtype):
        for start in range(0, piece - 1, seq_len):
            inputs = streams[:, start : start + seq_len]
            targets = streams[:, start + 1 : start + seq_len + 1]
            inputs = inputs[:, : targets.shape[1]]
            logits, state = model(inputs, state)
            total += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").item()
            count += targets.numel()
    model.train(was_training)
    return total / count


def prepare_run_dir(run_dir: Path, overwrite: bool) -> bool:
    """Make `run_dir` ready for a new run; True if this call created it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file, not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"{run_dir} already holds files (another run?); pass --overwrite to replace it or choose another --out"
            )
        for child in run_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        return False
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"cannot create {run_dir}: {error.strerror}") from None
    return True


def train(
    corpus: Corpus,
    vocab: Vocabulary,
    model_config: ModelConfig,
    config: TrainConfig,
    run_dir: str | Path,
    on_event: Callable[[Event], None] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train a new model on `corpus` and write its checkpoints into `run_dir`."""
    run_dir = Path(run_dir)
    emit = on_event or (lambda event: None)
    # Everything that can be refused is checked before the run folder is touched.
    tokens = torch.from_numpy(vocab.encode(corpus.text))
    train_tokens, val_tokens = split(tokens, config.val_fraction)
    batches = Batches(train_tokens, config.batch_size, config.seq_len, config.seed)
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    created = prepare_run_dir(run_dir, overwrite)
    try:
        return _train_loop(corpus, vocab, model_config, config, run_dir, emit, batches, val_tokens, device, dtype)
    except BaseException:
        # A run that never wrote a checkpoint leaves no folder behind.
        if created and not checkpoint.list_checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train_loop(corpus, vocab, model_config, config, run_dir, emit, batches, val_tokens, device, dtype):
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = CharRNN(model_config).to(device)
    fast_forward = fastgru.supported(model, device, dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    total_steps = config.epochs * batches.steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    deadline = None if config.time_limit is None else config.time_limit * 60.0
    chars_per_step = config.batch_size * config.seq_len
    corpus_record = {"name": corpus.name, "sha256": corpus.sha256, "characters": len(corpus.text)}

    result = TrainResult()
    epoch_losses: list[float] = []
    val_losses: list[float | None] = []
    step = 0
    start = time.perf_counter()
    last_log = start
    metrics_path = run_dir / METRICS

    def event(kind, epoch, loss, **extra) -> Event:
        elapsed = time.perf_counter() - start
        rate = step * chars_per_step / elapsed if elapsed > 0 else 0.0
        eta = (total_steps - step) * elapsed / step if step else None
        if deadline is not None:
            eta = min(eta if eta is not None else deadline, max(0.0, deadline - elapsed))
        return Event(kind, epoch, step, total_steps, batches.steps_per_epoch, loss,
                     chars_per_sec=rate, elapsed=elapsed, eta=eta, **extra)  # fmt: skip

    def record(e: Event) -> None:
        entry = {"epoch": e.epoch, "step": e.step, "loss": e.loss, "chars_per_sec": round(e.chars_per_sec, 1),
                 "elapsed": round(e.elapsed, 2)}  # fmt: skip
        if e.val_loss is not None:
            entry["val_loss"] = e.val_loss
        result.history.append(entry)
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def save(name: str, epoch: int, loss: float, val_loss: float | None) -> Path:
        training = {
            "epoch": epoch,
            "step": step,
            "loss": loss,
            "val_loss": val_loss,
            "losses": epoch_losses,
            "val_losses": val_losses,
            "characters_seen": step * chars_per_step,
            "elapsed_seconds": round(time.perf_counter() - start, 2),
            "precision": str(dtype).removeprefix("torch."),
            "config": config.to_dict(),
        }
        path = checkpoint.save_checkpoint(run_dir / name, model, vocab, training, corpus_record)
        result.last_checkpoint = path
        emit(event("checkpoint", epoch, loss, path=path, val_loss=val_loss))
        return path

    emit(event("start", 1, math.nan))
    model.train()
    stop = None
    for epoch in range(1, config.epochs + 1):
        loss_sum, loss_count = 0.0, 0
        for inputs, targets in batches.epoch(epoch - 1):
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if fast_forward:
                logits = fastgru.training_forward(model, inputs, dtype)
            else:
                with autocast(device, dtype):
                    logits, _ = model(inputs)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
            # Checked before the update, so a diverged step never reaches the weights.
            loss_sum += _finite_or_raise(loss.item(), step + 1)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_count += 1
            now = time.perf_counter()
            if now - last_log >= config.log_every_seconds:
                last_log = now
                e = event("log", epoch, loss_sum / loss_count)
                record(e)
                emit(e)
            else:
                emit(event("step", epoch, loss_sum / loss_count))
            if config.max_steps is not None and step >= config.max_steps:
                stop = "max_steps"
            elif deadline is not None and now - start >= deadline:
                stop = "time_limit"
            if stop:
                break
        mean = loss_sum / max(loss_count, 1)
        finished_epoch = loss_count == batches.steps_per_epoch
        val_loss = (
            evaluate(model, val_tokens, config.seq_len, config.batch_size, dtype) if len(val_tokens) > 2 else None
        )
        if finished_epoch:
            epoch_losses.append(mean)
            val_losses.append(val_loss)
        e = event("epoch", epoch, mean, val_loss=val_loss)
        record(e)
        emit(e)
        save(f"ckpt_{epoch}" if finished_epoch else f"ckpt_{epoch}_{step}", epoch, mean, val_loss)
        if stop:
            break
    result.stopped_by = stop or "epochs"
    emit(event("stop", epoch, mean, message=result.stopped_by, path=result.last_checkpoint))
    return result


def _finite_or_raise(loss: float, step: int) -> float:
    if not math.isfinite(loss):
        raise TrainingError(
            f"the training loss became {loss} at step {step}; try a smaller --lr. The last checkpoint is untouched"
        )
    return loss
