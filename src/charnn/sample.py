"""Sampling: a pure function from logits to characters, and generation as an iterator.

The prime is fed in one forward pass; after that the model advances one character per step
with its state carried explicitly, all samples together as one batch. Each sample draws
from its own random stream, seeded by (seed, sample number), so a sample's text does not
depend on what else runs in the same batch.

>>> import torch
>>> sample_next(torch.tensor([[0.0, 5.0, 1.0]]), SampleConfig(temperature=0), torch.rand(1))
tensor([1])
"""

import secrets
from collections.abc import Iterator

import numpy as np
import torch

from charnn import kernels
from charnn.config import SampleConfig
from charnn.errors import ConfigError
from charnn.model import CharRNN
from charnn.stepper import Stepper
from charnn.vocab import Vocabulary

_BLOCK = 1024  # uniforms drawn per refill of each sample's random stream


def sample_next(logits: torch.Tensor, sampling: SampleConfig, uniforms: torch.Tensor) -> torch.Tensor:
    """Pick one index per row of `logits` (B, V) using one uniform in [0, 1) per row."""
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
    # right=True never lands on a zero-probability character (a flat step of the CDF).
    choice = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
    return choice.clamp_(max=logits.shape[-1] - 1)


def sample_for(stepper: Stepper, logits: torch.Tensor, sampling: SampleConfig, uniforms: torch.Tensor) -> torch.Tensor:
    """`sample_next`, or its compiled twin where `stepper` runs the compiled int8 step.

    The twin follows the same steps with its sums in double, so it can differ from
    `sample_next` only where a uniform falls within rounding of a step of the CDF; it saves a
    dozen small PyTorch calls per character. fp32 and bf16 keep `sample_next`, which is what
    makes fp32 text equal the plain model's.
    """
    if stepper.fused is None:
        with torch.inference_mode():
            return sample_next(logits, sampling, uniforms)
    top_p = 1.0 if sampling.top_p is None else sampling.top_p
    return kernels.load().sample(logits, sampling.temperature, sampling.top_k or 0, top_p, uniforms)


class RandomStreams:
    """One independent stream of uniforms per sample, seeded by (seed, sample number)."""

    def __init__(self, seed: int, num_samples: int, first_sample: int = 0):
        self.generators = [
            np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, first_sample + i])))
            for i in range(num_samples)
        ]
        self.position = _BLOCK

    def next(self) -> torch.Tensor:
        if self.position == _BLOCK:
            self.block = torch.from_numpy(np.stack([g.random(_BLOCK) for g in self.generators], axis=1))
            self.position = 0
        self.position += 1
        return self.block[self.position - 1]


def new_seed() -> int:
    return secrets.randbits(31)


def generate(
    model: CharRNN,
    vocab: Vocabulary,
    prime: str,
    length: int,
    sampling: SampleConfig = SampleConfig(),
    num_samples: int = 1,
    seed: int = 0,
    first_sample: int = 0,
    precision: str = "auto",
) -> Iterator[list[str]]:
    """Yield `length` times one new character per sample (the prime itself is not yielded).

    Sample i draws from the random stream (seed, first_sample + i), so drawing samples one
    at a time with `first_sample` set gives the same texts as drawing them together.

    `precision` is that of the weights after the prime (see `charnn.stepper`): fp32 gives the
    plain model's text; auto picks int8 where the CPU computes it fast, else fp32.

    Mistakes (an empty prime, characters the model does not know, a negative length) raise
    here, before the first character, not when iteration begins.
    """
    if length < 0:
        raise ConfigError(f"--length must be 0 or more, got {length}")
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, got {num_samples}")
    if not prime:
        raise ConfigError("the prime is empty; give at least one character to start from")
    tokens = torch.from_numpy(vocab.encode(prime))
    stepper = Stepper(model, precision)
    return _generate(stepper, vocab, tokens, length, sampling, RandomStreams(seed, num_samples, first_sample))


def _generate(stepper, vocab, tokens, length, sampling, streams) -> Iterator[list[str]]:
    num_samples = len(streams.generators)
    characters = vocab.characters
    # inference_mode is entered per call (by the stepper, by sample_for), not around the loop:
    # a generator must not leave it switched on in its caller's code between two characters.
    logits, state = stepper.prefill(tokens.unsqueeze(0).expand(num_samples, -1))  # (N, P) -> (N, V)
    for step in range(length):
        chosen = sample_for(stepper, logits, sampling, streams.next())
        yield [characters[i] for i in chosen.tolist()]
        if step + 1 < length:
            logits = stepper.step(chosen, state)


def generate_text(
    model: CharRNN,
    vocab: Vocabulary,
    prime: str,
    length: int,
    sampling: SampleConfig = SampleConfig(),
    num_samples: int = 1,
    seed: int = 0,
    precision: str = "auto",
) -> list[str]:
    """The new text of each sample, without the prime."""
    pieces: list[list[str]] = [[] for _ in range(num_samples)]
    for step in generate(model, vocab, prime, length, sampling, num_samples, seed, precision=precision):
        for sample, character in zip(pieces, step, strict=True):
            sample.append(character)
    return ["".join(p) for p in pieces]
