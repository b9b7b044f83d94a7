"""Beam search: the most likely continuation of a prime under the model, not a random one.

Each step extends every kept continuation by every character and keeps the `width` whose
log-probability in all (the sum of the plain model's fp32 log-probabilities of their new
characters) is highest. Greedy decoding runs beside the beam in the same batch, and the result is
the more likely of the two: a narrow beam can lose the greedy path on the way, and then this
still returns a text at least as likely as greedy's. The same prime gives the same text every
time. A `logit_bias` (`charnn.constraints`) shapes the distribution both search in; its bans hold.

    found = beam_search(ckpt.model, ckpt.vocab, "Pip", length=100, width=8)
    print(found.texts[0], found.logprobs[0])
"""

from dataclasses import dataclass

import torch

from charnn.errors import ConfigError
from charnn.generation import BEAM_BYTES_PER_STEP, check_held
from charnn.model import CharRNN, concat_rows, eval_mode, select_rows
from charnn.sample import bias_vector
from charnn.vocab import Vocabulary


@dataclass(frozen=True)
class Beams:
    texts: list[str]  # the new text of each continuation kept, most likely first
    logprobs: list[float]  # each one's log-probability, nats, summed over its new characters
    greedy_text: str  # greedy decoding's text, for comparison (batched with the beam: on a near tie its
    greedy_logprob: float  # choice may differ from a one-row pass's), and its log-probability


def beam_search(
    model: CharRNN,
    vocab: Vocabulary,
    prime: str,
    *,
    length: int,
    width: int = 4,
    logit_bias: tuple[tuple[int, float], ...] = (),
) -> Beams:
    """The `width` most likely continuations of `prime` of `length` characters that the beam kept."""
    if width < 1:
        raise ConfigError(f"`beam` must be at least 1, got {width}")
    if length < 0:
        raise ConfigError(f"`length` must be 0 or more, got {length}")
    check_held(length, 1, BEAM_BYTES_PER_STEP)
    if not prime:
        raise ConfigError("the prime is empty; give at least one character to start from")
    device = next(model.parameters()).device
    bias = bias_vector(logit_bias, len(vocab)).to(device) if logit_bias else None
    tokens = torch.from_numpy(vocab.encode(prime)).to(device)[None]  # (1, P)
    with torch.inference_mode(), eval_mode(model):
        logits, state = model(tokens)
        logprobs = _logprobs(logits[:, -1], bias)  # (1, V): the beam's one row, and greedy's
        beam = _Search(logprobs, state)
        greedy = _Search(logprobs, state)
        for step in range(length):
            parents, chosen = beam.extend(width)
            greedy.extend(1)
            if step + 1 == length:
                break
            rows = concat_rows([select_rows(beam.state, parents), greedy.state])
            inputs = torch.cat([chosen, greedy.tokens[-1]])[:, None]  # (k + 1, 1)
            logits, state = model(inputs, rows)
            logprobs = _logprobs(logits[:, -1], bias)
            beam.advance(logprobs[:-1], select_rows(state, torch.arange(len(chosen), device=device)))
            greedy.advance(logprobs[-1:], select_rows(state, torch.tensor([len(chosen)], device=device)))
    texts = [vocab.decode(row) for row in beam.texts()]
    scores = beam.scores.tolist() if length else [0.0]
    greedy_text, greedy_score = vocab.decode(greedy.texts()[0]), greedy.scores.item() if length else 0.0
    if greedy_score > scores[0] and greedy_text not in texts:  # the beam lost the greedy path
        texts, scores = [greedy_text, *texts[:-1]], [greedy_score, *scores[:-1]]
    return Beams(texts, scores, greedy_text, greedy_score)


def _logprobs(logits: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = logits.float()
    return torch.log_softmax(logits if bias is None else logits + bias, dim=-1)


class _Search:
    """Continuations kept, with their scores, state and the distribution of their next character."""

    def __init__(self, logprobs: torch.Tensor, state):
        self.logprobs, self.state = logprobs, state  # (k, V), the state after each row's text
        self.scores = torch.zeros(1, device=logprobs.device)
        self.tokens: list[torch.Tensor] = []  # each step's (k,) characters, in the rows' order then
        self.parents: list[torch.Tensor] = []  # each step's (k,) row each came from

    def extend(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the `width` most likely one-character extensions; (their rows' parents, their characters)."""
        candidates = (self.scores[:, None] + self.logprobs).flatten()  # (k * V,)
        top = candidates.topk(min(width, candidates.numel()))
        keep = top.values > float("-inf")  # never a banned character, even when few are left
        values, indices = top.values[keep], top.indices[keep]
        size = self.logprobs.shape[1]
        parents, chosen = indices // size, indices % size
        self.scores, self.parents, self.tokens = values, [*self.parents, parents], [*self.tokens, chosen]
        return parents, chosen

    def advance(self, logprobs: torch.Tensor, state) -> None:
        self.logprobs, self.state = logprobs, state

    def texts(self) -> list[list[int]]:
        """Each kept row's characters, followed back through its parents."""
        rows = torch.arange(len(self.scores), device=self.scores.device)
        columns = []
        for tokens, parents in zip(reversed(self.tokens), reversed(self.parents), strict=True):
            columns.append(tokens[rows])
            rows = parents[rows]
        return torch.stack(columns[::-1], dim=1).tolist() if columns else [[]]
