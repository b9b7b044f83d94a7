"""The fast paths: the same numbers as the plain model, computed with less work.

- `charnn.fast.build`: the compiled kernels (`csrc/`): their specs, building and loading.
- `charnn.fast.step`: generation, one character per call for a batch of streams (`Stepper`).
- `charnn.fast.recurrence`: training, a hand-written GRU recurrence for CPUs.

Each falls back to PyTorch's operations where its kernel cannot run here.
"""
