import pytest
import torch

from charnn.data.batches import Batches, Streams, minimum_length
from charnn.data.corpus import Corpus, train_length
from charnn.data.dataset import split
from charnn.errors import CorpusError


def test_split_is_contiguous_and_disjoint():
    assert train_length(1000, 0.1) == 900
    text = "".join(chr(0x4E00 + i) for i in range(1000))  # every character distinct: its index is its position
    data = split(Corpus("distinct", text), val_fraction=0.1)
    train, val = data.train_tokens, data.val_tokens
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(torch.cat([train, val]), torch.arange(1000))


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


def test_stateful_rows_read_contiguous_text_window_after_window():
    tokens = torch.arange(2_000)  # each token is its position: contiguity is visible
    streams = Streams(tokens, batch_size=4, seq_len=10, seed=1)
    previous = None
    for step, (inputs, targets) in enumerate(streams.epoch(0)):
        assert torch.equal(targets, inputs + 1)
        assert torch.equal(inputs[:, 1:], inputs[:, :-1] + 1)
        assert ((inputs // streams.stream_len) == torch.arange(4)[:, None]).all()  # row b stays in stream b
        if step == 0:
            assert streams.restarted
        else:
            assert not streams.restarted
            assert torch.equal(inputs[:, 0], previous[:, -1] + 1)  # each window goes on where the last ended
        previous = inputs
    assert step + 1 == streams.steps_per_epoch


def test_stateful_jitter_draws_lengths_by_step_and_restarts_at_the_end():
    tokens = torch.arange(4_000)
    streams = Streams(tokens, batch_size=2, seq_len=20, seed=0, jitter=5.0)
    lengths = [streams.window_length(step) for step in range(400)]
    assert len(set(lengths)) > 5 and 1 <= min(lengths) and max(lengths) <= 40
    assert abs(sum(lengths) / len(lengths) - 20) < 2
    assert lengths == [Streams(tokens, 2, 20, seed=0, jitter=5.0).window_length(step) for step in range(400)]
    restarts = 0
    for step in range(300):
        inputs, _ = streams.next(step)
        assert inputs.shape[1] == lengths[step]
        restarts += streams.restarted
        if streams.restarted:
            assert inputs[0, 0] < 20  # a new pass starts within the first seq_len characters
    assert restarts >= 2


def test_stateful_rows_split_between_processes_and_short_text_refused():
    tokens = torch.arange(3_000)
    whole = Streams(tokens, batch_size=4, seq_len=10).next(0)[0]
    parts = [Streams(tokens, 4, 10, rank=r, world_size=2).next(0)[0] for r in range(2)]
    assert torch.equal(parts[0], whole[0::2]) and torch.equal(parts[1], whole[1::2])
    with pytest.raises(CorpusError, match="stateful"):
        Streams(torch.arange(80), batch_size=4, seq_len=10)
