"""Training a model: the loop (`trainer`) and the rules around it, each in a module of its own:
the learning rate (`schedule`), when to stop (`stopping`), the weight average (`average`), the
run's counters and records (`record`), the state saved for resuming (`trainer_state`); starting
from a checkpoint (`resuming`, `finetuning`); several processes (`distributed`); and the loss
curves of a run (`plot`).

    from charnn.training import train, resume, finetune

Names are imported lazily, so `charnn.training.plot` alone does not load PyTorch.
"""

import importlib

_EXPORTS = {
    "train": "charnn.training.trainer",
    "resume": "charnn.training.resuming",
    "finetune": "charnn.training.finetuning",
    "initial_model": "charnn.training.finetuning",
    "Event": "charnn.training.record",
    "TrainResult": "charnn.training.record",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'charnn.training' has no attribute {name!r}")
