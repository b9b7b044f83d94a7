"""Beam search: the most likely continuation of a prime under the model, not a random one.

Each step extends every kept continuation by every character and keeps the `width` whose
log-probability in all (the sum of the plain model's fp32 log-probabilities of their new
characters) is highest. A continuation that produces a stop string is finished there: each step
the `width` likeliest that do are set aside, their texts cut before the stop as the server cuts
samples, and the search goes on with the others. Finished and unfinished ones are compared by
their log-probability divided by characters ** `length_penalty` (the characters summed: the
text, and the stop string that ended it, which plays the part of an end-of-text token):

- 0, the default, is the plain sum: a short text that stops early wins easily;
- 1 is the mean log-probability per character, the figure `charnn generate --best-of` ranks by;
- between them, a text is paid back part of what each further character costs.

Greedy decoding runs beside the beam in the same batch, stopping and scored the same way, and the
result is the better of the two: a narrow beam can lose the greedy path on the way, and then this
still returns a text that scores at least as well as greedy's. The same prime gives the same text
every time. A `logit_bias` (`charnn.constraints`) shapes the distribution both search in; its
bans hold.

    found = beam_search(ckpt.model, ckpt.vocab, "Pip", length=100, width=8, stop="\\n", length_penalty=1)
    print(found.texts[0], found.logprobs[0])
"""

import math
from dataclasses import dataclass

import torch

from charnn.errors import ConfigError
from charnn.limits import BEAM_BYTES_PER_STEP, check_held
from charnn.model import CharRNN, concat_rows, eval_mode, select_rows
from charnn.sample import bias_vector
from charnn.vocab import Vocabulary


@dataclass(frozen=True)
class Continuation:
    text: str  # the new text, without the stop string that ended it
    logprob: float  # nats, summed over its new characters and its stop string
    score: float  # what ranks it: logprob / characters ** length_penalty
    finish_reason: str  # "stop" where a stop string ended it, else "length"


@dataclass(frozen=True)
class Beams:
    continuations: list[Continuation]  # the best the beam kept, best first, no text twice
    greedy: Continuation  # greedy decoding's, for comparison (batched with the beam: on a near tie its
    # choice may differ from a one-row pass's)

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.continuations]

    @property
    def logprobs(self) -> list[float]:
        return [c.logprob for c in self.continuations]

    @property
    def scores(self) -> list[float]:
        return [c.score for c in self.continuations]

    @property
    def greedy_text(self) -> str:
        return self.greedy.text

    @property
    def greedy_logprob(self) -> float:
        return self.greedy.logprob


def check_beam(width: int, length: int, stop: tuple[str, ...], length_penalty: float) -> None:
    """Refuse what `beam_search` cannot do; cheap, so a caller can check before loading a model."""
    if width < 1:
        raise ConfigError(f"`beam` must be at least 1, got {width}")
    if length < 0:
        raise ConfigError(f"`length` must be 0 or more, got {length}")
    if not math.isfinite(length_penalty) or length_penalty < 0:
        # A negative one would rank longer texts lower still than their log-probability does.
        raise ConfigError(f"`length_penalty` must be a number 0 or more, got {length_penalty}")
    if any(not s for s in stop):
        raise ConfigError("a stop string is empty")
    check_held(length, 1, BEAM_BYTES_PER_STEP)


def beam_search(
    model: CharRNN,
    vocab: Vocabulary,
    prime: str,
    *,
    length: int,
    width: int = 4,
    logit_bias: tuple[tuple[int, float], ...] = (),
    stop: str | tuple[str, ...] = (),
    length_penalty: float = 0.0,
) -> Beams:
    """The best `width` continuations of `prime`, of at most `length` characters, that the beam kept."""
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    check_beam(width, length, stops, length_penalty)
    if not prime:
        raise ConfigError("the prime is empty; give at least one character to start from")
    device = next(model.parameters()).device
    bias = bias_vector(logit_bias, len(vocab)).to(device) if logit_bias else None
    tokens = torch.from_numpy(vocab.encode(prime)).to(device)[None]  # (1, P)
    endings = _Endings(vocab, stops)
    with torch.inference_mode(), eval_mode(model):
        logits, state = model(tokens)
        logprobs = _logprobs(logits[:, -1], bias)  # (1, V): the beam's one row, and greedy's
        beam = _Search(logprobs, state, width, endings, length_penalty)
        greedy = _Search(logprobs, state, 1, endings, length_penalty, greedy=True)
        for step in range(length):
            running = [search for search in (beam, greedy) if search.running(length)]
            for search in running:
                search.extend(last=step + 1 == length)
            running = [search for search in running if search.running(length)]
            if not running:
                break
            rows = concat_rows([select_rows(search.state, search.parents) for search in running])
            inputs = torch.cat([search.chosen for search in running])[:, None]  # (rows, 1)
            logits, state = model(inputs, rows)
            logprobs, start = _logprobs(logits[:, -1], bias), 0
            for search in running:
                index = torch.arange(start, start + len(search.chosen), device=device)
                search.advance(logprobs[index], select_rows(state, index))
                start += len(index)
    found, best_greedy = beam.best(), greedy.best()[0]
    if best_greedy.score > found[0].score:  # the beam lost the greedy path
        found = [best_greedy, *(c for c in found if c.text != best_greedy.text)][:width]
    return Beams(found, best_greedy)


def _logprobs(logits: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = logits.float()
    return torch.log_softmax(logits if bias is None else logits + bias, dim=-1)


class _Endings:
    """Which next characters complete a stop string after a text, and how long that stop is."""

    def __init__(self, vocab: Vocabulary, stops: tuple[str, ...]):
        self.size, self.characters = len(vocab), vocab.characters
        # A stop whose last character the model lacks can never be produced.
        self.stops = [(s[:-1], vocab.characters.index(s[-1]), len(s)) for s in stops if s[-1] in vocab]

    def after(self, texts: list[str]) -> torch.Tensor:
        """(k, V): for each text and next character, the length of the stop string they end (0 for none).

        A text never holds a whole stop string (it would have ended there), so the longest of
        several ending at once is the one that started first."""
        lengths = torch.zeros(len(texts), self.size, dtype=torch.long)
        for row, text in enumerate(texts):
            for head, last, size in self.stops:
                if text.endswith(head) and len(text) >= len(head):
                    lengths[row, last] = max(int(lengths[row, last]), size)
        return lengths


class _Search:
    """The live continuations (texts, summed log-probabilities, state, next distributions), and those finished."""

    def __init__(self, logprobs, state, width: int, endings: _Endings, length_penalty: float, greedy=False):
        self.logprobs, self.state = logprobs, state  # (k, V), the state after each row's text
        self.width, self.endings, self.length_penalty, self.greedy = width, endings, length_penalty, greedy
        self.sums = torch.zeros(1, device=logprobs.device)  # (k,)
        self.texts = [""]  # each live row's new text
        self.parents = self.chosen = torch.zeros(0, dtype=torch.long)  # the last step's (k,) rows and characters
        self.finished: list[Continuation] = []  # the best `width` so far, best first

    def _score(self, logprob: float, characters: int) -> float:
        # logprob / characters ** length_penalty, without overflow however large the penalty
        return logprob * math.exp(-self.length_penalty * math.log(characters)) if characters else 0.0

    def running(self, length: int) -> bool:
        """Whether a live row may still do better than the `width` finished: a longer one's sum is no
        higher and its length at most `length`, so (the sum being at most 0) it scores at most
        sum / length ** length_penalty."""
        if not self.texts or (self.greedy and self.finished):
            return False
        if len(self.finished) < self.width:
            return True
        return self._score(self.sums.max().item(), length) > self.finished[-1].score

    def extend(self, last: bool) -> None:
        """Every one-character extension: the best `width` that end a stop string are finished (greedy's
        only if it is its best of all); the best `width` that do not are kept (finished at the `last` step)."""
        candidates = self.sums[:, None] + self.logprobs  # (k, V)
        size = candidates.shape[1]
        endings = self.endings.after(self.texts).to(candidates.device)  # (k, V)
        ending = candidates if self.greedy else candidates.masked_fill(endings == 0, float("-inf"))
        top = ending.flatten().topk(min(self.width, ending.numel()))
        for value, index in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            row, character = divmod(index, size)
            cut = int(endings[row, character])
            if cut and value > float("-inf"):
                self._finish(self.texts[row], value, len(self.texts[row]) + 1, cut - 1, "stop")
        live = candidates.masked_fill(endings > 0, float("-inf")).flatten()
        top = live.topk(min(self.width, live.numel()))
        keep = top.values > float("-inf")  # never a banned character, even when few are left
        self.sums, indices = top.values[keep], top.indices[keep]
        self.parents, self.chosen = indices // size, indices % size
        characters, parents = self.endings.characters, self.parents.tolist()
        self.texts = [self.texts[p] + characters[c] for p, c in zip(parents, self.chosen.tolist(), strict=True)]
        if last:
            for text, value in zip(self.texts, self.sums.tolist(), strict=True):
                self._finish(text, value, len(text), 0, "length")
            self.texts = []

    def _finish(self, text: str, logprob: float, characters: int, cut: int, reason: str) -> None:
        """Set a continuation aside (its text without the `cut` characters of the stop that ended it
        before this character), keeping the best `width`, each text once."""
        found = Continuation(text[: len(text) - cut], logprob, self._score(logprob, characters), reason)
        same = next((c for c in self.finished if c.text == found.text), None)
        if same is not None and same.score >= found.score:
            return
        kept = [c for c in self.finished if c is not same] + [found]
        self.finished = sorted(kept, key=lambda c: -c.score)[: self.width]  # stable: the earlier first on a tie

    def advance(self, logprobs: torch.Tensor, state) -> None:
        self.logprobs, self.state = logprobs, state

    def best(self) -> list[Continuation]:
        """The finished continuations, best first; an empty text for a search of no characters."""
        return self.finished or [Continuation("", 0.0, 0.0, "length")]
