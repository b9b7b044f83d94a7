"""Score a text with a model: each character's surprisal in bits and the model's top alternatives.

A character's surprisal is -log2 p(character | the text before it): near 0 bits where the model
was sure of it, many bits where it did not expect it. Their sum over a text is the model's
cross-entropy on it, the figure `charnn evaluate` reports (per character, in bits).

- **The first character** has no text before it: it is not scored (its `bits` is None), as
  `charnn evaluate` does not score it either. With `context`, the context's characters are fed
  first and not reported, and the text's first character is scored after them (a prompt and its
  continuation).
- **Characters the model does not know** are reported (`known` False, `bits` None) and left out
  of what the model reads, as `charnn evaluate` leaves them out: the next character is scored as
  if they were not there.
- **Long texts** stream: the text goes through the model `chunk_size` characters at a time with
  the state carried, and records come out block by block, so memory stays bounded. With
  `streams` above 1 the pieces of a block are scored side by side in one batch (faster); every
  piece but the first starts from a state warmed up on the `warmup` characters before it instead
  of the whole text before it (see `ScoreConfig`).

    from charnn.run_folder import load_checkpoint

    ckpt = load_checkpoint("runs/ge")
    result = score_text(ckpt.model, ckpt.vocab, "“Pip,” said Joe.")
    print(result.totals.bits_per_character, result.records[3].alternatives)
"""

import contextlib
import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from charnn.config import ScoreConfig, _check
from charnn.errors import ConfigError
from charnn.model import CharRNN, State, concat_rows, eval_mode, expand_rows, select_rows
from charnn.scoring.loop import ChunkLogprobs, Reader, log_probabilities, runner
from charnn.vocab import Vocabulary

LN2 = math.log(2)


@dataclass(frozen=True)
class CharacterScore:
    position: int  # index of the character in the text
    character: str
    bits: float | None  # surprisal, -log2 p; None when not scored (the first character, an unknown one)
    alternatives: tuple[tuple[str, float], ...] = ()  # the model's top_k here, (character, probability), best first
    known: bool = True  # False: not in the model's vocabulary

    @property
    def logprob(self) -> float | None:
        """Natural log-probability of the character, the unit of OpenAI's `logprobs`."""
        return None if self.bits is None else -self.bits * LN2

    def to_dict(self) -> dict:
        return {
            "position": self.position,
            "character": self.character,
            "bits": self.bits,
            "known": self.known,
            "alternatives": [{"character": c, "probability": p} for c, p in self.alternatives],
        }


@dataclass
class ScoreTotals:
    """Running totals over scored records; `add` each record as it comes."""

    characters: int = 0  # in the text, known or not
    scored: int = 0
    bits: float = 0.0
    unknown_count: int = 0
    unknown_characters: set[str] = field(default_factory=set)

    def add(self, record: CharacterScore) -> None:
        self.characters += 1
        if record.bits is not None:
            self.scored += 1
            self.bits += record.bits
        if not record.known:
            self.unknown_count += 1
            self.unknown_characters.add(record.character)

    @property
    def bits_per_character(self) -> float | None:
        return self.bits / self.scored if self.scored else None

    def to_dict(self) -> dict:
        return {
            "characters": self.characters,
            "scored": self.scored,
            "bits": self.bits,
            "bits_per_character": self.bits_per_character,
            "unknown_count": self.unknown_count,
            "unknown": sorted(self.unknown_characters),
        }


@dataclass(frozen=True)
class TextScore:
    records: list[CharacterScore]
    totals: ScoreTotals


def score(
    model: CharRNN, vocab: Vocabulary, text: str, config: ScoreConfig = ScoreConfig(), *, context: str = ""
) -> Iterator[CharacterScore]:
    """Yield one record per character of `text`, in order (see the module's docstring).

    `context` is fed before the text and not reported; characters it holds that the model does
    not know raise UnknownCharactersError here, before the first record.
    """
    context_ids = vocab.encode(context)
    ids = vocab.lookup(text)
    return _score(model, vocab, text, ids, context_ids, config)


def score_text(
    model: CharRNN, vocab: Vocabulary, text: str, config: ScoreConfig = ScoreConfig(), *, context: str = ""
) -> TextScore:
    """Every record of `score` in a list, with their totals."""
    totals = ScoreTotals()
    records = []
    for record in score(model, vocab, text, config, context=context):
        totals.add(record)
        records.append(record)
    return TextScore(records, totals)


def score_continuations(
    model: CharRNN, vocab: Vocabulary, prompt: str, continuations: list[str], *, top_k: int = 0
) -> list[list[CharacterScore]]:
    """The records of each continuation of `prompt`, all scored in one batch.

    The same figures as `score(model, vocab, continuation, context=prompt)` for each (to
    rounding), for generated samples: every character must be known (else
    UnknownCharactersError). Without a prompt, each continuation's first character is not scored.
    """
    _check(top_k >= 0, f"`top_k` must be 0 or more, got {top_k}")
    prompt_ids = torch.from_numpy(vocab.encode(prompt))
    # The prompt's last character, which reads a continuation's first, then the continuation.
    sequences = [torch.cat([prompt_ids[-1:], torch.from_numpy(vocab.encode(c))]) for c in continuations]
    if not sequences:
        return []
    first = 1 if len(prompt_ids) == 0 else 0  # the first scored position in each continuation
    rows = torch.zeros(len(sequences), max(1, *(len(s) for s in sequences)), dtype=torch.long)  # (N, T + 1)
    for i, sequence in enumerate(sequences):
        rows[i, : len(sequence)] = sequence
    reader = Reader(model, chunk_size=256, device=next(model.parameters()).device)
    with _evaluating(model):
        if len(prompt_ids) > 1:
            reader.feed(prompt_ids[:-1].unsqueeze(0), chunk_size=4096)
            reader.state = expand_rows(reader.state, len(rows))
        bits, alt_ids, alt_probs = _bits(log_probabilities(reader, rows, top_k), rows, top_k)
    characters = vocab.characters
    results = []
    for i, text in enumerate(continuations):
        records = [CharacterScore(0, text[0], None)] if first and text else []
        row_bits = bits[i, : len(text) - first].tolist() if len(text) > first else []
        ids = alt_ids[i].tolist() if top_k else None
        probs = alt_probs[i].tolist() if top_k else None
        for j, value in enumerate(row_bits):
            alternatives = tuple(zip((characters[k] for k in ids[j]), probs[j], strict=True)) if top_k else ()
            records.append(CharacterScore(j + first, text[j + first], value, alternatives))
        results.append(records)
    return results


@dataclass(frozen=True)
class LineScore:
    line: int  # 1 for the first line of the text
    text: str  # without its newline
    bits: float  # over its scored characters, its newline included
    scored: int

    @property
    def bits_per_character(self) -> float | None:
        return self.bits / self.scored if self.scored else None


def line_scores(records: Iterable[CharacterScore]) -> Iterator[LineScore]:
    """One figure per line of the scored text, in order; a line's newline counts with it (how
    surprising that the line ends there)."""
    number, characters, bits, scored = 1, [], 0.0, 0
    for record in records:
        if record.bits is not None:
            bits += record.bits
            scored += 1
        if record.character == "\n":
            yield LineScore(number, "".join(characters), bits, scored)
            number, characters, bits, scored = number + 1, [], 0.0, 0
        else:
            characters.append(record.character)
    if characters:
        yield LineScore(number, "".join(characters), bits, scored)


def mean_logprob(records: list[CharacterScore]) -> float:
    """Mean natural log-probability per scored character; -inf when none is scored (an empty sample)."""
    values = [r.bits for r in records if r.bits is not None]
    return -sum(values) / len(values) * LN2 if values else -math.inf


@dataclass(frozen=True)
class PieceScores:
    """Natural log-probabilities (nats) of a piece of text's characters, and the model's top alternatives."""

    logprobs: list[float]  # one per character
    alternatives: list[list[tuple[str, float]]]  # per character: top_k (character, log-probability), best first


class ContinuationScorer:
    """Score a text piece by piece as it arrives, each character after all that was fed before it.

    It starts after `context` (at least one character: its last one reads the first character
    fed) and runs the plain model in fp32 with its state carried from piece to piece, so pieces
    fed one at a time get the figures of `score(model, vocab, "".join(pieces), context=context)`
    (to rounding), for text that is produced piece by piece, as the server streams it. `fork()`
    gives a scorer that goes on from here on its own (several continuations of one prompt).
    Every character must be known (else UnknownCharactersError).

        scorer = ContinuationScorer(ckpt.model, ckpt.vocab, "Pip", top_k=3)
        scorer.feed(",” said").logprobs  # then scorer.feed(" Joe") goes on from there
    """

    def __init__(self, model: CharRNN, vocab: Vocabulary, context: str, *, top_k: int = 0):
        _check(top_k >= 0, f"`top_k` must be 0 or more, got {top_k}")
        if not context:
            raise ConfigError("`context` must hold at least one character: the one that reads the first fed")
        ids = torch.from_numpy(vocab.encode(context))
        self.model, self.vocab, self.top_k = model, vocab, top_k
        self._device = next(model.parameters()).device
        self._last = ids[-1:]  # (1,) the character that reads the next one fed
        self._state: State | None = None
        if len(ids) > 1:
            reader = Reader(model, chunk_size=4096, device=self._device)
            with _evaluating(model):
                reader.feed(ids[:-1].unsqueeze(0))
            self._state = reader.state

    def fork(self) -> "ContinuationScorer":
        # The model returns a new state each pass and never writes into the old one: sharing it is safe.
        return copy.copy(self)

    def feed(self, text: str) -> PieceScores:
        if not text:
            return PieceScores([], [])
        ids = torch.from_numpy(self.vocab.encode(text))
        rows = torch.cat([self._last, ids]).unsqueeze(0)  # (1, T + 1): the last character fed reads the first
        reader = Reader(self.model, chunk_size=256, device=self._device, state=self._state)  # bounded memory
        with _evaluating(self.model):
            chunks = list(log_probabilities(reader, rows, self.top_k))
        self._state, self._last = reader.state, ids[-1:]
        logprobs = torch.cat([c.chosen[0] for c in chunks]).double().tolist()
        if not self.top_k:
            return PieceScores(logprobs, [[] for _ in logprobs])
        characters = self.vocab.characters
        values = torch.cat([c.top_values[0] for c in chunks]).double().tolist()
        indices = torch.cat([c.top_ids[0] for c in chunks]).tolist()
        alternatives = [
            [(characters[i], v) for i, v in zip(row_ids, row_values, strict=True)]
            for row_ids, row_values in zip(indices, values, strict=True)
        ]
        return PieceScores(logprobs, alternatives)


# --- the passes through the model --------------------------------------------------------------


def _score(model, vocab, text, ids, context_ids, config) -> Iterator[CharacterScore]:
    known_at = np.flatnonzero(ids >= 0)  # text position of each character the model reads
    sequence = torch.from_numpy(np.concatenate([context_ids, ids[known_at]]))  # what the model reads
    offset = len(context_ids)  # sequence position of the text's first known character
    first = max(offset, 1)  # the first scored sequence position: a character with something before it
    characters = vocab.characters
    position = 0  # next text position to report

    def report(until: int, values, alt_ids, alt_probs, base: int) -> Iterator[CharacterScore]:
        """Records of text positions whose sequence position is below `until` (and unknown ones among them)."""
        nonlocal position
        reading = np.searchsorted(known_at, position)  # index of the next known character
        while position < len(text):
            if reading < len(known_at) and known_at[reading] == position:
                at = offset + reading
                if at >= until:
                    return
                if at < first:
                    yield CharacterScore(position, text[position], None)
                else:
                    k = at - base
                    alternatives = ()
                    if alt_ids is not None:
                        alternatives = tuple(zip((characters[j] for j in alt_ids[k]), alt_probs[k], strict=True))
                    yield CharacterScore(position, text[position], values[k], alternatives)
                reading += 1
            else:
                yield CharacterScore(position, text[position], None, known=False)
            position += 1

    for until, values, alt_ids, alt_probs, base in _blocks(model, sequence, first, config):
        yield from report(until, values, alt_ids, alt_probs, base)
    yield from report(len(sequence), None, None, None, 0)  # trailing unknown characters, an unscored first one


def _blocks(model, sequence: torch.Tensor, first: int, config: ScoreConfig):
    """(end, bits, alternative ids, alternative probabilities, start) for each piece of scored positions, in order.

    Lists are indexed by sequence position minus `start`; `end` is the first position after the piece.
    """
    device = next(model.parameters()).device
    total = len(sequence)
    span, streams = config.span, config.streams
    run = runner(model, config.precision)
    reader = Reader(run, chunk_size=config.chunk_size, device=device)
    with _evaluating(model):
        if first > 1:  # the context before its last character: the state the first scored one is read after
            reader.feed(sequence[: first - 1].unsqueeze(0))
    block = first
    while block < total:
        pieces = min(streams, -(-(total - block) // span))  # ceil
        starts = [block + i * span for i in range(pieces)]
        ends = [min(s + span, total) for s in starts]
        rows = torch.zeros(pieces, ends[0] - starts[0] + 1, dtype=torch.long)  # (P, T + 1)
        for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
            rows[i, : e - s + 1] = sequence[s - 1 : e]  # the character before the piece reads its first
        with _evaluating(model):
            if pieces > 1:
                warmup = min(config.warmup, starts[1] - 1)  # near the start, what there is before the second piece
                warm = Reader(run, chunk_size=config.chunk_size, device=device)
                warm.feed(torch.stack([sequence[s - 1 - warmup : s - 1] for s in starts[1:]]))  # (P-1, W)
                reader.state = _join(reader.state, warm.state, model, pieces - 1)
            bits, alt_ids, alt_probs = _bits(log_probabilities(reader, rows, config.top_k), rows, config.top_k)
            reader.state = select_rows(reader.state, torch.tensor([pieces - 1]))  # the next block goes on from here
        # Piece by piece: only one piece's records are ever Python objects at a time.
        for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
            piece_ids = alt_ids[i, : e - s].tolist() if config.top_k else None
            piece_probs = alt_probs[i, : e - s].tolist() if config.top_k else None
            yield e, bits[i, : e - s].tolist(), piece_ids, piece_probs, s
        block = ends[-1]


def _bits(chunks: Iterator[ChunkLogprobs], rows: torch.Tensor, top_k: int):
    """Bits of each target of `rows` (B, T), and the top_k alternatives' ids and probabilities (B, T, k)."""
    batch, length = rows.shape[0], rows.shape[1] - 1
    bits = np.zeros((batch, length), dtype=np.float64)
    alt_ids = np.zeros((batch, length, top_k), dtype=np.int64)
    alt_probs = np.zeros((batch, length, top_k), dtype=np.float64)
    found = top_k  # fewer characters than asked for: report those there are
    for chunk in chunks:
        start, stop = chunk.start, chunk.start + chunk.chosen.shape[1]
        bits[:, start:stop] = (-chunk.chosen / LN2).double().cpu().numpy()
        if top_k:
            found = chunk.top_values.shape[-1]
            alt_ids[:, start:stop, :found] = chunk.top_ids.cpu().numpy()
            alt_probs[:, start:stop, :found] = chunk.top_values.exp().double().cpu().numpy()
    return bits, alt_ids[..., :found], alt_probs[..., :found]


@contextlib.contextmanager
def _evaluating(model: CharRNN):
    """Eval mode (no dropout) and no autograd for the block; the model's mode as it was after.

    Entered around each pass, never across a `yield`: the caller's code between two records
    runs with the model as the caller left it.
    """
    with eval_mode(model), torch.inference_mode():
        yield


def _join(first: State | None, rest: State | None, model: CharRNN, rest_rows: int) -> State:
    """State rows (layers, B, hidden) of the first piece followed by those of the others (zero where None)."""
    device = next(model.parameters()).device
    first = model.init_state(1, device, torch.float32) if first is None else first
    rest = model.init_state(rest_rows, device, torch.float32) if rest is None else rest  # no warm-up
    return concat_rows([first, rest])
