"""Sampling: a pure function from logits to characters, and the random streams it draws from.

Each sample draws from its own random stream, seeded by (seed, sample number), so a sample's
text does not depend on what else runs in the same batch. Generation, which feeds a model
and samples from it, is in `charnn.generation`.

>>> import torch
>>> sample_next(torch.tensor([[0.0, 5.0, 1.0]]), SampleConfig(temperature=0), torch.rand(1))
tensor([1])
"""

import functools
import secrets

import numpy as np
import torch

from charnn.config import BAN, SampleConfig
from charnn.errors import ConfigError

BLOCK = 1024  # uniforms drawn per refill of each sample's random stream


@functools.lru_cache(maxsize=256)  # built once per request's constraint, not at every character
def bias_vector(logit_bias: tuple[tuple[int, float], ...], size: int) -> torch.Tensor:
    """The (size,) vector `logit_bias` adds to a row of logits: -inf for a ban (BAN or less), so a
    banned character has no probability at all, whatever the temperature."""
    unknown = sorted({index for index, _ in logit_bias if index >= size})
    if unknown:
        raise ConfigError(f"`logit_bias` names indices the vocabulary of {size} characters lacks: {unknown}")
    bias = torch.zeros(size)
    for index, value in logit_bias:
        bias[index] = float("-inf") if value <= BAN else value
    if torch.isinf(bias).all():
        raise ConfigError("`logit_bias` bans every character; leave at least one to draw")
    return bias


def biased(logits: torch.Tensor, sampling: SampleConfig) -> torch.Tensor:
    """`logits` (B, V) with the sampling's logit bias added (the same tensor when there is none)."""
    if not sampling.logit_bias:
        return logits
    return logits.float() + bias_vector(sampling.logit_bias, logits.shape[-1]).to(logits.device)


def sample_next(logits: torch.Tensor, sampling: SampleConfig, uniforms: torch.Tensor) -> torch.Tensor:
    """Pick one index per row of `logits` (B, V) using one uniform in [0, 1) per row."""
    logits = biased(logits, sampling)
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # Keep the smallest set of most likely characters whose mass reaches top_p.
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= sampling.top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    cdf = probs.cumsum(dim=-1)
    targets = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    # right=True never lands on a zero-probability character (a flat step of the CDF); a target that
    # rounds up to the total would pass the end, so it takes the last character that has a probability.
    choice = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
    last = logits.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)
    return torch.minimum(choice, last)


class RandomStreams:
    """One independent stream of uniforms per sample, seeded by (seed, sample number)."""

    def __init__(self, seed: int, num_samples: int, first_sample: int = 0):
        self.generators = [
            np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, first_sample + i])))
            for i in range(num_samples)
        ]
        self.position = BLOCK

    def block(self, sample: int) -> np.ndarray:
        """The next `BLOCK` uniforms of one sample's stream, the same values `next()` would give it."""
        return self.generators[sample].random(BLOCK)

    def next(self) -> torch.Tensor:
        if self.position == BLOCK:
            self.block = torch.from_numpy(np.stack([g.random(BLOCK) for g in self.generators], axis=1))
            self.position = 0
        self.position += 1
        return self.block[self.position - 1]


def new_seed() -> int:
    return secrets.randbits(31)
