"""The weight average a run keeps beside its weights (`TrainConfig.ema`), as one object: update it
after each step, swap it into the model to score or save it, and save or restore its state.

    average = WeightAverage(model, decay=0.998, init_share=0.1)
    average.update(model)              # after each optimizer step
    with average.swapped_in(model):    # the model holds the averaged weights, its own again after
        loss = model_loss(model, held_out)
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from charnn.model import CharRNN


def averaged_weights(
    average: list[torch.Tensor], initial: list[torch.Tensor], decay: float, steps: int, init_share: float
) -> list[torch.Tensor]:
    """The weights a run's average stands for, with the initial weights' share fixed at `init_share`.

    `average` is updated each step as `decay * average + (1 - decay) * weights`, starting from
    `initial`, so it keeps a share `decay ** steps` of the initial weights: much of it early on, little
    late. Here that share is taken out and a fixed `init_share` put back: some pull towards the initial
    weights regularises, and a fixed share does not vanish on long runs nor dominate short ones
    (benchmarks/RESULTS.md).
    """
    faded = decay**steps
    if faded >= 1.0:  # no step taken: the average is the initial weights
        return list(initial)
    scale = (1 - init_share) / (1 - faded)
    return [scale * a + (init_share - scale * faded) * w for a, w in zip(average, initial, strict=True)]


class WeightAverage:
    """An exponential moving average of a model's weights, in fp32 whatever the compute precision.

    It starts as the model's weights, which it keeps too (`initial`), so the average it swaps in
    holds a fixed share of them (see `averaged_weights`). `steps` counts the updates.
    """

    def __init__(self, model: CharRNN, decay: float, init_share: float) -> None:
        self.decay, self.init_share = decay, init_share
        self.average = [p.detach().float().clone() for p in model.parameters()]
        self.initial: list[torch.Tensor] | None = [a.clone() for a in self.average]
        self.steps = 0

    def update(self, model: CharRNN) -> None:
        with torch.no_grad():
            for average, p in zip(self.average, model.parameters(), strict=True):
                average.lerp_(p.detach().float(), 1 - self.decay)  # decay * average + (1 - decay) * p
        self.steps += 1

    def weights(self) -> list[torch.Tensor]:
        """The weights it stands for; a run begun before the initial weights were kept, its running average."""
        if self.initial is None:
            return self.average
        return averaged_weights(self.average, self.initial, self.decay, self.steps, self.init_share)

    @contextlib.contextmanager
    def swapped_in(self, model: CharRNN) -> Iterator[None]:
        """The model holds the averaged weights for the block, its own again after it (bit for bit)."""
        parameters = list(model.parameters())
        raw = [p.detach().clone() for p in parameters]
        with torch.no_grad():
            for p, weights in zip(parameters, self.weights(), strict=True):
                p.copy_(weights)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, saved in zip(parameters, raw, strict=True):
                    p.copy_(saved)

    def state_dict(self) -> dict[str, Any]:
        """Its part of a checkpoint's trainer state: "ema", and "initial" where it keeps them."""
        state = {"ema": [a.cpu() for a in self.average]}
        if self.initial is not None:
            state["initial"] = [w.cpu() for w in self.initial]
        return state

    def load_state_dict(self, state: dict[str, Any], steps: int, device: torch.device) -> None:
        """Restore it from a trainer state, `steps` updates into the run."""
        self.average = [a.to(device) for a in state["ema"]]
        # A run begun before the initial weights were kept scores its average as it always did.
        initial = state.get("initial")
        self.initial = None if initial is None else [w.to(device) for w in initial]
        self.steps = steps
