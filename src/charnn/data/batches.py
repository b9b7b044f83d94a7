"""From encoded text to training batches, with no Python work per character.

The text is cut into consecutive windows of ``seq_len + 1`` characters; each window gives an
input (its first ``seq_len``) and a target (its last ``seq_len``), the same text shifted by one::

    text     T h e _ c a t _ s a t ...
    window   [T h e _ c] [a t _ s a] ...       (seq_len = 4)
    input    [T h e _]   [a t _ s]
    target   [h e _ c]   [t _ s a]

Windows are shuffled each epoch and taken ``batch_size`` at a time (remainder dropped), as
tensors indexed in one go. The order of an epoch depends only on (seed, epoch), so a run can
resume at any step without replaying the ones before it. `tokens` may be any 1-D integer
tensor, a memory-mapped one included: only the windows of each batch are read.

Across several processes every one draws the same order and takes its own rows of each
batch (rank r takes rows r, r + world_size, ...), so together they see exactly the batches
one process would.
"""

from collections.abc import Iterator

import torch

from charnn.errors import CorpusError


def minimum_length(batch_size: int, seq_len: int) -> int:
    return batch_size * (seq_len + 1)


class Batches:
    """Shuffled (inputs, targets) batches of shape (batch_size, seq_len) over one text."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):  # fmt: skip
        needed = minimum_length(batch_size, seq_len)
        if len(tokens) < needed:
            raise CorpusError(
                f"the training text has {len(tokens):,} characters, fewer than one batch needs "
                f"(batch_size x (seq_len + 1) = {needed:,}); a smaller `batch_size` or `seq_len` would fit"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.num_windows = len(tokens) // (seq_len + 1)
        self.steps_per_epoch = self.num_windows // batch_size

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` (0-based), from `start_step` on."""
        generator = self._generator(epoch)
        span = self.num_windows * (self.seq_len + 1)
        # A random start in the slack at the end shifts window boundaries between epochs.
        slack = len(self.tokens) - span
        offset = int(torch.randint(0, slack + 1, (1,), generator=generator))
        windows = self.tokens[offset : offset + span].view(self.num_windows, self.seq_len + 1)
        order = torch.randperm(self.num_windows, generator=generator)
        for step in range(start_step, self.steps_per_epoch):
            rows = order[step * self.batch_size : (step + 1) * self.batch_size]
            if self.world_size > 1:
                rows = rows[self.rank :: self.world_size]
            chosen = windows[rows].long()
            yield chosen[:, :-1], chosen[:, 1:]


class Streams:
    """Stateful training's batches: row b reads its own contiguous stream of the text, window after window.

    The text is cut into `batch_size` equal streams (word_language_model's batchify)::

        text     [ stream 0 ............ | stream 1 ............ | ... ]
        step 1   rows read stream[b][p : p + n + 1]      p = the position, n = this window's length
        step 2   rows read stream[b][p + n : p + 2n + 1] ...

    so the state a row ends one window with is the right one to start its next window from. A
    pass that reaches a stream's end starts again at a random offset below seq_len (the trainer
    then resets the state): boundaries move between passes. An epoch is a fixed number of steps
    (`steps_per_epoch`), about one pass.

    With `jitter` each window's length is drawn as AWD-LSTM does: normal around seq_len (around
    seq_len / 2 one time in twenty) with standard deviation `jitter`, kept within [1, 2 seq_len].
    Lengths and offsets depend only on (seed, step), and the position is a plain number a
    checkpoint keeps, so a resumed run reads exactly the windows it would have.

    Across processes, rank r takes rows r, r + world_size, ..., as `Batches` does.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, jitter: float = 0.0):  # fmt: skip
        self.longest = 2 * seq_len if jitter else seq_len
        stream_len = len(tokens) // batch_size
        if stream_len < self.longest + seq_len + 1:
            raise CorpusError(
                f"the training text has {len(tokens):,} characters, too few for {batch_size} streams of at least "
                f"{self.longest + seq_len + 1:,} (stateful training); a smaller batch_size or seq_len would fit"
            )
        self.streams = tokens[: stream_len * batch_size].view(batch_size, stream_len)  # (B, L)
        self.stream_len = stream_len
        self.batch_size, self.seq_len, self.seed, self.jitter = batch_size, seq_len, seed, jitter
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = max(1, (stream_len - seq_len - 1) // seq_len)
        self.position: int | None = None  # where the next window starts; None: a new pass begins
        self.restarted = False  # whether the window just read began a new pass (the state then resets)

    def _generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + step + 7)

    def window_length(self, step: int) -> int:
        """The length of window `step` (0-based, counted over the whole run)."""
        if not self.jitter:
            return self.seq_len
        generator = self._generator(step)
        centre = self.seq_len if float(torch.rand((), generator=generator)) < 0.95 else self.seq_len / 2
        drawn = centre + self.jitter * float(torch.randn((), generator=generator))
        return int(min(max(1, round(drawn)), self.longest))

    def next(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (rows, n), of window `step`; advances the position."""
        length = self.window_length(step)
        self.restarted = self.position is None or self.position + length + 1 > self.stream_len
        if self.restarted:
            self.position = int(torch.randint(0, self.seq_len, (), generator=self._generator(-step - 1)))
        start = self.position
        self.position = start + length
        rows = self.streams[self.rank :: self.world_size] if self.world_size > 1 else self.streams
        chosen = rows[:, start : start + length + 1].long()
        return chosen[:, :-1], chosen[:, 1:]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The windows of `epoch` (0-based) from `start_step` on, continuing from the current position."""
        for step in range(start_step, self.steps_per_epoch):
            yield self.next(epoch * self.steps_per_epoch + step)
