"""A numbered checkpoint's trainer state (trainer.pt): what resuming needs besides the weights.

The optimizer, the gradient scaler, every process's random state, the weight average and, with
stateful training, the state each batch row carries into its next window. Each process saves and
restores its own part, so a run resumed with the same number of processes continues exactly.
"""

from typing import Any

import torch

from charnn.model import state_from_tensors, state_tensors
from charnn.training import distributed
from charnn.training.average import WeightAverage

# With stateful training, the state each batch row ended its last window with: h, or (h, c) for an LSTM.
Carried = torch.Tensor | tuple[torch.Tensor, ...] | None


def capture(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    group: distributed.Group,
    average: WeightAverage | None,
    carried: Carried,
    stateful: bool,
) -> dict[str, Any]:
    """The trainer state as it stands; every process calls it (the carried state and the random
    states are gathered from all)."""
    trainer_state = {
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
    }
    if device.type == "cuda":
        trainer_state["rng_cuda"] = torch.cuda.get_rng_state()
    if average is not None:
        trainer_state.update(average.state_dict())
    if stateful:
        trainer_state["carried_state"] = _gather_carried(group, carried)
    if group.active:  # every process's own, so each resumes exactly
        trainer_state["rng_cpu_ranks"] = distributed.gather(group, torch.get_rng_state())
        if device.type == "cuda":
            trainer_state["rng_cuda_ranks"] = distributed.gather(group, torch.cuda.get_rng_state())
    return trainer_state


def restore_random_states(
    trainer_state: dict[str, Any], device: torch.device, group: distributed.Group, seed: int, step: int
) -> None:
    torch.set_rng_state(_own_rng(trainer_state, "rng_cpu", group, seed, step))
    if device.type == "cuda" and "rng_cuda" in trainer_state:
        torch.cuda.set_rng_state(_own_rng(trainer_state, "rng_cuda", group, seed, step))


def _own_rng(trainer_state: dict[str, Any], key: str, group: distributed.Group, seed: int, step: int) -> torch.Tensor:
    """This process's random state; a run resumed with another number of processes reseeds the others."""
    ranks = trainer_state.get(f"{key}_ranks")
    if ranks is not None and len(ranks) == group.world_size:
        return ranks[group.rank]
    if group.rank:
        torch.manual_seed(seed + distributed.RANK_SEED_STRIDE * group.rank + step)
        return torch.get_rng_state() if key == "rng_cpu" else torch.cuda.get_rng_state()
    return trainer_state[key]


def _gather_carried(group: distributed.Group, carried: Carried) -> list[torch.Tensor] | None:
    """The carried state of every row of the batch, whichever process holds it, as [h] or [h, c]."""
    if carried is None:
        return None
    mine = [c.cpu() for c in state_tensors(carried)]
    parts = distributed.gather(group, mine)
    world = len(parts)
    full = []
    for i, piece in enumerate(mine):
        whole = piece.new_empty(piece.shape[0], piece.shape[1] * world, piece.shape[2])
        for rank, part in enumerate(parts):
            whole[:, rank::world] = part[i]
        full.append(whole)
    return full


def own_carried(trainer_state: dict[str, Any], group: distributed.Group, device: torch.device) -> Carried:
    """This process's rows of the saved carried state (None when there is none)."""
    carried = trainer_state.get("carried_state")
    if carried is None:
        return None
    rows = slice(group.rank, None, group.world_size)
    return state_from_tensors([c[:, rows].to(device) for c in carried])
