import pytest
import torch

from charnn.data import Batches, minimum_length, split
from charnn.errors import CorpusError


def test_split_is_contiguous_and_disjoint():
    tokens = torch.arange(1000)
    train, val = split(tokens, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(torch.cat([train, val]), tokens)


def test_targets_are_inputs_shifted_by_one():
    tokens = torch.arange(10_000)
    batches = Batches(tokens, batch_size=8, seq_len=50, seed=3)
    for inputs, targets in batches.epoch(0):
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        assert torch.equal(targets, inputs + 1)  # consecutive text, since tokens are positions


def test_reference_batch_shapes():
    batches = Batches(torch.zeros(20_000, dtype=torch.long), batch_size=64, seq_len=100)
    inputs, targets = next(batches.epoch(0))
    assert inputs.shape == (64, 100) and targets.shape == (64, 100)
    assert inputs.dtype == torch.long
    assert batches.steps_per_epoch == 20_000 // 101 // 64


def test_epoch_is_a_permutation_of_windows():
    tokens = torch.arange(101 * 64 * 3)
    batches = Batches(tokens, batch_size=64, seq_len=100)
    starts = torch.cat([inputs[:, 0] for inputs, _ in batches.epoch(0)])
    assert len(set(starts.tolist())) == 64 * 3


def test_order_depends_only_on_seed_and_epoch():
    tokens = torch.arange(5000)
    a, b = Batches(tokens, 4, 10, seed=7), Batches(tokens, 4, 10, seed=7)
    first = [x for x, _ in a.epoch(2)]
    assert all(torch.equal(x, y) for x, y in zip(first, (x for x, _ in b.epoch(2)), strict=True))
    resumed = [x for x, _ in b.epoch(2, start_step=5)]
    assert all(torch.equal(x, y) for x, y in zip(first[5:], resumed, strict=True))
    assert not torch.equal(first[0], next(a.epoch(3))[0])


def test_too_short_text_names_the_minimum():
    needed = minimum_length(64, 100)
    assert needed == 6464
    with pytest.raises(CorpusError, match=r"6,464.*`batch_size` or `seq_len`"):
        Batches(torch.zeros(needed - 1, dtype=torch.long), 64, 100)
    Batches(torch.zeros(needed, dtype=torch.long), 64, 100)
