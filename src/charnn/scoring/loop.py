"""The one loop that reads text through a model: rows of characters in, each character's prediction out.

A runner is any function ``run(tokens (B, T), state) -> (logits (B, T, V), state)``: the
model itself, the fast step (`runner(model, precision)`), or an ONNX session wrapped the same
way (`charnn.interop.onnx`). A `Reader` feeds a runner a chunk of characters at a time with
the state carried; `log_probabilities` and `summed_loss` turn what it reads into each
character's log-probability or a loss sum.

    reader = Reader(model, chunk_size=256)
    reader.feed(context)  # (1, C): read, nothing predicted
    total, count = summed_loss(reader, rows)  # rows (B, L): predicts rows[:, 1:]
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from charnn.fast.step import Stepper
from charnn.model import CharRNN, State

Runner = Callable[[torch.Tensor, State | None], tuple[torch.Tensor, State]]


class Reader:
    """Reads rows of characters through `run`, `chunk_size` at a time, the state carried from chunk to chunk.

    `state` is the state after all that was read; a caller may replace it between two chunks
    (detached before a gradient step, some rows picked out).
    """

    def __init__(self, run: Runner, *, chunk_size: int, device: torch.device | str = "cpu", state: State | None = None):
        self.run, self.chunk_size, self.device, self.state = run, chunk_size, device, state

    def feed(self, tokens: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor | None:
        """Read (B, T) tokens whose predictions are not wanted (a context); the last chunk's logits.

        `chunk_size`, where given, replaces the reader's for this context.
        """
        size = chunk_size or self.chunk_size
        logits = None
        for start in range(0, tokens.shape[1], size):
            logits, self.state = self.run(tokens[:, start : start + size].to(self.device), self.state)
        return logits

    def predict(self, rows: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(start, logits (B, C, V), targets (B, C)) of each chunk: the logits of reading rows[:, start : start + C],
        which predict the characters after them, targets = rows[:, start + 1 : start + C + 1].

        Rows are moved to the device chunk by chunk: a memory-mapped text is never loaded whole.
        """
        for start in range(0, rows.shape[1] - 1, self.chunk_size):
            chunk = rows[:, start : start + self.chunk_size + 1].long().to(self.device)  # (B, C + 1)
            logits, self.state = self.run(chunk[:, :-1], self.state)
            yield start, logits, chunk[:, 1:]


@dataclass(frozen=True)
class ChunkLogprobs:
    """Natural log-probabilities of one chunk's targets, and the top alternatives at each position."""

    start: int  # the chunk's first position in the rows' targets
    chosen: torch.Tensor  # (B, C) of each target
    top_values: torch.Tensor | None  # (B, C, k), best first; None without top_k
    top_ids: torch.Tensor | None  # (B, C, k)


def log_probabilities(reader: Reader, rows: torch.Tensor, top_k: int = 0) -> Iterator[ChunkLogprobs]:
    """Each character of rows[:, 1:] scored after those before it, chunk by chunk (see `Reader.predict`)."""
    for start, logits, targets in reader.predict(rows):
        logp = torch.log_softmax(_at_least_fp32(logits), dim=-1)  # (B, C, V)
        chosen = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, C)
        values = indices = None
        if top_k:
            values, indices = torch.topk(logp, min(top_k, logp.shape[-1]), dim=-1)
        yield ChunkLogprobs(start, chosen, values, indices)


def summed_loss(reader: Reader, rows: torch.Tensor, progress: Callable[[int], None] | None = None) -> tuple[float, int]:
    """(Summed loss in nats, characters predicted) of rows[:, 1:]; `progress(count)` after each chunk."""
    total, count = 0.0, 0
    for _, logits, targets in reader.predict(rows):
        total += F.cross_entropy(_at_least_fp32(logits).flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
        if progress is not None:
            progress(count)
    return total, count


def cut_streams(tokens: torch.Tensor, num_streams: int) -> torch.Tensor | None:
    """`tokens` cut into at most `num_streams` contiguous pieces of equal length, (S, L), to read side by side;
    None where the pieces would be shorter than 2 characters (nothing to predict)."""
    num_streams = max(1, min(num_streams, (len(tokens) - 1) // 2))
    piece = len(tokens) // num_streams
    if piece < 2:
        return None
    return tokens[: piece * num_streams].view(num_streams, piece)


def runner(model: CharRNN, precision: str = "fp32") -> Runner:
    """The plain model in fp32, else the fast step of `charnn.fast.step` (auto, int8, bf16)."""
    if precision == "fp32":
        return model
    stepper = Stepper(model, precision)

    def run(tokens: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        # One character per call, as generation feeds them: the step updates `state` in place.
        batch, length = tokens.shape
        state = stepper.init_state(batch) if state is None else state
        logits = torch.empty(batch, length, stepper.model.config.vocab_size, device=tokens.device)
        for t in range(length):
            logits[:, t] = stepper.step(tokens[:, t].contiguous(), state)
        return logits, state

    return run


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """The logits in fp32 (from bf16 under autocast), or in fp64 where they are (an ONNX check sums in fp64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
