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


def split(tokens: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out the last `val_fraction` of the text, contiguous, so no window straddles both."""
    val_len = int(len(tokens) * val_fraction)
    return tokens[: len(tokens) - val_len], tokens[len(tokens) - val_len :]


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
