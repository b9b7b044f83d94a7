"""Generation as an iterator: feed the prime once, then one character per step for every sample.

The prime is fed once (`Stepper.prefill`: one forward pass, or the compiled int8 step a token
at a time); after that the model advances one character per step (`charnn.fast.step.Stepper`)
with its state carried explicitly, all samples together as one batch. Each sample draws from
its own random stream (`charnn.sample.RandomStreams`), seeded by (seed, sample number), so a
sample's text does not depend on what else runs in the same batch.

    from charnn.run_folder import load_checkpoint

    ckpt = load_checkpoint("runs/ge")
    print(generate_text(ckpt.model, ckpt.vocab, "Pip", length=200)[0])
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from charnn.beam import check_beam
from charnn.config import SampleConfig
from charnn.constraints import required_phrases
from charnn.errors import ConfigError
from charnn.fast.step import Stepper
from charnn.limits import check_held
from charnn.model import CharRNN
from charnn.sample import RandomStreams
from charnn.scoring.score import mean_logprob, score_continuations
from charnn.vocab import Vocabulary


def generate(
    model: CharRNN,
    vocab: Vocabulary,
    prime: str,
    *,
    length: int,
    sampling: SampleConfig = SampleConfig(),
    num_samples: int = 1,
    seed: int = 0,
    first_sample: int = 0,
    precision: str = "auto",
    require: tuple[str, ...] = (),
    within: int | None = None,
) -> Iterator[list[str]]:
    """Yield `length` times one new character per sample (the prime itself is not yielded).

    Every phrase of `require` appears in each sample's first `within` new characters (default: all
    `length` of them; `charnn.constraints.Required`).

    Sample i draws from the random stream (seed, first_sample + i), so drawing samples one
    at a time with `first_sample` set gives the same texts as drawing them together.

    `precision` is that of the weights after the prime (see `charnn.fast.step`): fp32 gives the
    plain model's text; auto picks int8 where the CPU computes it fast, else fp32.

    Mistakes (an empty prime, characters the model does not know, a negative length) raise
    here, before the first character, not when iteration begins.
    """
    check_options(length=length, num_samples=num_samples)
    if not prime:
        raise ConfigError("the prime is empty; give at least one character to start from")
    tokens = torch.from_numpy(vocab.encode(prime))
    required = required_phrases(vocab, tuple(require), length=length, within=within,
                                logit_bias=sampling.logit_bias, rows=num_samples)  # fmt: skip
    stepper = Stepper(model, precision)
    streams = RandomStreams(seed, num_samples, first_sample)
    return _generate(stepper, vocab, tokens, length, sampling, streams, required)


def check_options(
    *,
    length: int,
    num_samples: int,
    best_of: int | None = None,
    stream: bool = False,
    beam: int | None = None,
    max_copied: float | None = None,
    require: tuple[str, ...] = (),
    within: int | None = None,
    length_penalty: float | None = None,
    stop: tuple[str, ...] = (),
) -> None:
    """Refuse what `generate` (or `generate_best_of`, keeping `num_samples` of `best_of`, or
    `charnn.beam.beam_search`, keeping `num_samples` of its `beam`, with its `length_penalty` and
    `stop` strings) cannot do.

    Cheap, so a caller can check before loading a model.
    """
    if length < 0:
        raise ConfigError(f"`length` must be 0 or more, got {length}")
    if num_samples < 1:
        raise ConfigError(f"`num_samples` must be at least 1, got {num_samples}")
    if best_of is not None:
        if best_of < num_samples:
            raise ConfigError(f"`best_of` must be at least `num_samples` ({num_samples}), got {best_of}")
        if stream:
            raise ConfigError("`best_of` cannot `stream`: the best sample is known only when all are drawn")
    if max_copied is not None and best_of is None:
        raise ConfigError("`max_copied` chooses among the samples of `best_of`; give `best_of` too")
    if within is not None and not require:
        raise ConfigError("`within` bounds where the `require`d phrases appear; give `require` too")
    if beam is None and length_penalty is not None:
        raise ConfigError("`length_penalty` ranks the continuations of `beam`; give `beam` too")
    if any(not s for s in stop):
        raise ConfigError("a stop string is empty")
    if require and stop:
        raise ConfigError("`require` cannot go with `stop`: a stop could end a sample before its phrases")
    if beam is not None:
        check_beam(beam, length, stop, length_penalty or 0.0)
        if require:
            raise ConfigError("`require` places phrases in sampled text; the beam searches without it")
        if best_of is not None:
            raise ConfigError("give `beam` or `best_of`, not both: the beam is the most likely text already")
        if beam < num_samples:
            raise ConfigError(f"`beam` must be at least `num_samples` ({num_samples}), got {beam}")
        if stream:
            raise ConfigError("`beam` cannot `stream`: the most likely text is known only at the end")


def _generate(stepper, vocab, tokens, length, sampling, streams, required=None) -> Iterator[list[str]]:
    num_samples = len(streams.generators)
    characters = vocab.characters
    # inference_mode is entered per call (by the stepper's methods), not around the loop:
    # a generator must not leave it switched on in its caller's code between two characters.
    logits, state = stepper.prefill(tokens.unsqueeze(0).expand(num_samples, -1))  # (N, P) -> (N, V)
    for step in range(length):
        if required is not None:  # rows whose required phrases only just fit take their next character
            logits = required.force(logits)
        chosen = stepper.sample(logits, sampling, streams.next())
        indices = chosen.tolist()
        if required is not None:
            required.advance(indices)
        yield [characters[i] for i in indices]
        if step + 1 < length:
            logits = stepper.step(chosen, state)


def generate_text(
    model: CharRNN,
    vocab: Vocabulary,
    prime: str,
    *,
    length: int,
    sampling: SampleConfig = SampleConfig(),
    num_samples: int = 1,
    seed: int = 0,
    precision: str = "auto",
    require: tuple[str, ...] = (),
    within: int | None = None,
    stop: tuple[str, ...] = (),
) -> list[str]:
    """The new text of each sample, without the prime, each cut before the first of its `stop` strings
    (`cut_at_stop`, as the server ends a sample; drawing ends when every sample has one)."""
    check_held(length, num_samples)
    pieces: list[list[str]] = [[] for _ in range(num_samples)]
    ended, longest = [False] * num_samples, max(map(len, stop), default=0)
    for step in generate(model, vocab, prime, length=length, sampling=sampling, num_samples=num_samples, seed=seed,
                         precision=precision, require=require, within=within):  # fmt: skip
        for i, (sample, character) in enumerate(zip(pieces, step, strict=True)):
            sample.append(character)
            ended[i] = ended[i] or any("".join(sample[-longest:]).endswith(s) for s in stop)
        if stop and all(ended):
            break
    return [cut_at_stop("".join(p), stop)[0] for p in pieces]


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`text` before the first of `stops` it holds, and whether it held one; where several end at the
    same character, the longest (it began first), as the server ends a sample."""
    found = [(text.find(stop) + len(stop), -len(stop)) for stop in stops if stop in text]
    if not found:
        return text, False
    end, minus = min(found)
    return text[: end + minus], True


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could still be the start of a stop string (and so wait
    before they are shown)."""
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:k]):
                held = k
                break
    return held


@dataclass(frozen=True)
class Ranked:
    """Samples ranked by the model's mean log-probability per character, best first."""

    samples: list[str]  # every sample drawn, in drawing order (sample i from random stream (seed, i))
    mean_logprobs: list[float]  # nats per character of each, under the model at temperature 1
    order: list[int]  # indices into `samples`, highest mean log-probability first

    def best(self, count: int = 1) -> list[str]:
        return [self.samples[i] for i in self.order[:count]]


def rank_samples(model: CharRNN, vocab: Vocabulary, prime: str, samples: list[str]) -> Ranked:
    """Rank continuations of `prime` by their mean log-probability per character.

    Each sample is scored by the plain model (fp32, `model.forward`) at temperature 1, whatever
    temperature, top-k, top-p or precision drew it: the model's own judgement of the text, the
    same for every way of sampling (the sampling distribution would rate a greedy sample 0 and
    cannot compare two temperatures). The mean, not the sum, so that samples of different lengths
    (cut by stop strings) compare fairly; an empty sample has no characters and ranks last. Ties
    keep drawing order.
    """
    records = score_continuations(model, vocab, prime, samples)
    means = [mean_logprob(r) for r in records]
    order = sorted(range(len(samples)), key=lambda i: (-means[i], i))
    return Ranked(list(samples), means, order)


def generate_best_of(
    model: CharRNN,
    vocab: Vocabulary,
    prime: str,
    length: int,
    sampling: SampleConfig = SampleConfig(),
    *,
    best_of: int,
    seed: int = 0,
    precision: str = "auto",
    require: tuple[str, ...] = (),
    within: int | None = None,
    stop: tuple[str, ...] = (),
) -> Ranked:
    """Draw `best_of` samples (those of `generate_text` with the same seed) and rank them (`rank_samples`)."""
    if best_of < 1:
        raise ConfigError(f"`best_of` must be at least 1, got {best_of}")
    samples = generate_text(model, vocab, prime, length=length, sampling=sampling, num_samples=best_of, seed=seed,
                            precision=precision, require=require, within=within, stop=stop)  # fmt: skip
    return rank_samples(model, vocab, prime, samples)
