"""Dynamic evaluation (Krause et al., 2018): the model adapts to the text as it reads it.

The text is read as one stream with `charnn.scoring.loop.Reader`, state carried; each segment
is scored before the model (a copy of it) takes a gradient step on that segment. `gradient_rms`
gathers the statistics of Krause et al.'s RMS update from the training text.
"""

import copy
import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from charnn.config import DYNAMIC_EPSILON, DYNAMIC_RMS_BATCHES, DYNAMIC_SEGMENT, DYNAMIC_UPDATES
from charnn.errors import ConfigError
from charnn.fast import recurrence
from charnn.model import CharRNN, State, detach_state
from charnn.scoring.loop import Reader, Runner


def dynamic_loss(
    model: CharRNN,
    tokens: torch.Tensor,
    *,
    segment: int = DYNAMIC_SEGMENT,
    lr: float = DYNAMIC_UPDATES["sgd"][0],
    decay: float = 0.0,
    rms: list[torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """Mean loss in nats per character of `tokens` under dynamic evaluation (Krause et al., 2018).

    The text is read as one stream, state carried; each segment of `segment` characters is
    scored first, then the model takes a step on it. Plain SGD: w <- w - lr grad + decay
    (w_trained - w), `decay` pulling the weights back towards the trained ones. With `rms`
    (`gradient_rms` of the training text, one tensor per parameter) Krause's update instead:
    each weight's step divided by its gradient's RMS in training, and each weight pulled back
    in proportion to that RMS (relative to the mean), so the weights training moved most adapt
    and recover most. `model` itself is left unchanged (a copy adapts), and its regularisation
    is off (evaluation mode).
    """
    if segment < 1:
        raise ConfigError(f"`segment` must be at least 1, got {segment}")
    if lr <= 0 or not 0.0 <= decay < 1.0:
        raise ConfigError(f"`lr` must be positive and `decay` in [0, 1), got {lr} and {decay}")
    if len(tokens) < 2:
        return math.nan
    adapted = copy.deepcopy(model).eval()
    parameters = list(adapted.parameters())
    trained = [p.detach().clone() for p in parameters]
    if rms is None:
        steps, pulls = [lr] * len(parameters), [decay] * len(parameters)
    else:
        steps, pulls = _rms_rates(rms, lr, decay)
    reader = Reader(_runner(adapted), chunk_size=segment, device=parameters[0].device)
    total, count = 0.0, 0
    # cuDNN's recurrent backward runs in training mode only; the plain kernels run in either.
    with torch.backends.cudnn.flags(enabled=False), torch.enable_grad():
        for _, logits, targets in reader.predict(tokens.unsqueeze(0)):  # (1, n) a segment
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            total += loss.item() * targets.numel()
            count += targets.numel()
            if progress is not None:
                progress(count, len(tokens) - 1)
            adapted.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for p, origin, step, pull in zip(parameters, trained, steps, pulls, strict=True):
                    if p.grad is not None:
                        p.sub_(p.grad * step) if torch.is_tensor(step) else p.sub_(p.grad, alpha=step)
                    if decay:
                        p.add_((origin - p) * pull) if torch.is_tensor(pull) else p.lerp_(origin, pull)
            reader.state = detach_state(reader.state)
    return total / count


def gradient_rms(
    model: CharRNN,
    tokens: torch.Tensor,
    *,
    segment: int = DYNAMIC_SEGMENT,
    batch_size: int = 64,
    max_batches: int = DYNAMIC_RMS_BATCHES,
    progress: Callable[[int, int], None] | None = None,
) -> list[torch.Tensor]:
    """Each parameter's root-mean-square loss gradient over batches of `tokens` (a training text).

    Krause et al.'s statistics for dynamic evaluation: `batch_size` streams read side by side,
    state carried, one gradient per `segment`-character step, at most `max_batches` of them.
    """
    streams = max(1, min(batch_size, (len(tokens) - 1) // (segment + 1)))
    piece = len(tokens) // streams
    rows = tokens[: piece * streams].view(streams, piece)
    measured = copy.deepcopy(model).eval()
    parameters = list(measured.parameters())
    sums = [torch.zeros_like(p) for p in parameters]
    reader = Reader(_runner(measured), chunk_size=segment, device=parameters[0].device)
    batches = 0
    planned = min(max_batches, len(range(0, piece - 1, segment)))
    with torch.backends.cudnn.flags(enabled=False), torch.enable_grad():
        for _, logits, targets in itertools.islice(reader.predict(rows), max_batches):
            measured.zero_grad(set_to_none=True)
            F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
            for total, p in zip(sums, parameters, strict=True):
                if p.grad is not None:
                    total.add_(p.grad.square())
            reader.state = detach_state(reader.state)
            batches += 1
            if progress is not None:
                progress(batches * streams * segment, planned * streams * segment)
    return [(total / max(1, batches)).sqrt() for total in sums]


def _rms_rates(rms: list[torch.Tensor], lr: float, decay: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-weight step sizes and pull-back shares of Krause et al.'s RMS update, from `gradient_rms`."""
    mean = sum(r.mean() for r in rms) / len(rms)  # the average weight's RMS: the scale of both
    epsilon = DYNAMIC_EPSILON * mean  # weights training never moved (unseen characters) step at most lr / epsilon
    steps = [lr / (r + epsilon) for r in rms]
    # Weights that moved twice the average in training are pulled back twice as hard, at most all the way.
    pulls = [(decay * r / mean).clamp(max=1.0) for r in rms]
    return steps, pulls


def _runner(model: CharRNN) -> Runner:
    """The model's forward; on a CPU GRU the hand-written recurrence, whose backward takes one weight-gradient
    product per segment where PyTorch's takes one per character (faster)."""

    def run(inputs: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        if recurrence.supported(model, inputs.device, torch.float32):
            return recurrence.training_forward(model, inputs, torch.float32, state)
        return model(inputs, state)

    return run
