import math

import pytest
import torch
import torch.nn.functional as F

from charnn.config import ModelConfig
from charnn.errors import ConfigError
from charnn.model import (
    CharRNN,
    concat_rows,
    detach_state,
    eval_mode,
    expand_rows,
    map_state,
    select_rows,
    state_from_tensors,
    state_tensors,
)


def test_reference_shapes_and_parameter_counts():
    model = CharRNN(ModelConfig(vocab_size=84))
    rows = {name: count for name, _, count in model.summary()}
    assert rows["Embedding"] == 21_504
    assert rows["GRU"] == 3 * (256 * 1024 + 1024 * 1024 + 2 * 1024)
    assert rows["Linear"] == 86_100
    assert model.num_parameters() == sum(rows.values())
    logits, state = model(torch.zeros(64, 100, dtype=torch.long))
    assert logits.shape == (64, 100, 84)
    assert state.shape == (1, 64, 1024)


def test_untrained_loss_is_about_ln_vocab():
    torch.manual_seed(0)
    vocab_size = 82
    model = CharRNN(ModelConfig(vocab_size=vocab_size))
    tokens = torch.randint(0, vocab_size, (8, 101))
    with torch.no_grad():
        logits, _ = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).item()
    assert abs(loss - math.log(vocab_size)) < 0.1


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_state_carries_across_calls(cell):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=10, embedding_dim=8, hidden_size=16, cell=cell, num_layers=2)).eval()
    tokens = torch.randint(0, 10, (3, 12))
    whole, _ = model(tokens)
    first, state = model(tokens[:, :5])
    rest, _ = model(tokens[:, 5:], state)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), whole)


def test_model_holds_no_per_caller_state():
    model = CharRNN(ModelConfig(vocab_size=10, embedding_dim=8, hidden_size=16)).eval()
    tokens = torch.randint(0, 10, (1, 7))
    a, _ = model(tokens)
    model(torch.randint(0, 10, (4, 9)))  # someone else's call in between
    b, _ = model(tokens)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "options",
    [{"hidden_size": 0}, {"cell": "transformer"}, {"num_layers": 0}, {"dropout": 1.0}, {"embedding_dim": -1}],
)
def test_invalid_configuration_is_refused(options):
    with pytest.raises(ConfigError):
        ModelConfig(vocab_size=10, **options)


def _regularised(**options) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=11, embedding_dim=8, hidden_size=16, **options))


def test_weight_drop_masks_differ_per_batch_and_are_off_in_evaluation():
    model = _regularised(weight_drop=0.5, num_layers=2)
    weight = model.rnn.weight_hh_l1
    first, second = model.hidden_weight(1), model.hidden_weight(1)
    for dropped in (first, second):
        kept = dropped != 0
        assert 0.3 < kept.float().mean() < 0.7  # about half dropped
        torch.testing.assert_close(dropped[kept], weight[kept] * 2)  # the rest scaled by 1 / (1 - p)
    assert not torch.equal(first, second)  # a fresh mask per call: one per batch
    model.eval()
    assert model.hidden_weight(1) is weight  # all kept when evaluating
    tokens = torch.randint(0, 11, (3, 7))
    torch.testing.assert_close(model(tokens)[0], CharRNN.forward(model, tokens)[0])


def test_weight_drop_is_the_same_network_with_masked_weights():
    # The layer-by-layer path with a mask of all ones is exactly nn.GRU.
    model = _regularised(weight_drop=0.5, num_layers=2, cell="lstm")
    tokens = torch.randint(0, 11, (3, 7))
    model.eval()
    expected, (h, c) = model(tokens)
    model.train()
    model.hidden_weight = lambda layer: getattr(model.rnn, f"weight_hh_l{layer}")
    got, (h2, c2) = model(tokens)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(h2, h)
    torch.testing.assert_close(c2, c)


def test_embedding_dropout_drops_whole_characters():
    model = _regularised(embedding_dropout=0.5)
    dropped = model.embedding_weight()
    rows_zero = (dropped == 0).all(1)
    assert 0 < rows_zero.sum() < 11
    torch.testing.assert_close(dropped[~rows_zero], model.embedding.weight[~rows_zero] * 2)
    model.eval()
    assert model.embedding_weight() is model.embedding.weight


def test_variational_dropout_keeps_one_mask_across_time():
    model = _regularised(dropout=0.5, variational_dropout=True)
    x = torch.ones(4, 9, 16)  # (B, T, H)
    out = model.output_dropout(x, time_dim=1)
    assert torch.equal(out, out[:, :1].expand_as(out))  # every time step the same mask
    assert not torch.equal(out[0], out[1])  # but each sequence its own
    plain = _regularised(dropout=0.5).output_dropout(x, time_dim=1)
    assert not torch.equal(plain, plain[:, :1].expand_as(plain))
    model.eval()
    assert torch.equal(model.output_dropout(x, time_dim=1), x)


@pytest.mark.parametrize("name", ["weight_drop", "embedding_dropout"])
def test_regularisation_options_are_checked(name):
    with pytest.raises(ConfigError, match=name):
        ModelConfig(vocab_size=5, **{name: 1.0})


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_state_helpers_treat_a_tensor_and_a_tuple_alike(cell):
    model = CharRNN(ModelConfig(vocab_size=7, embedding_dim=4, hidden_size=8, num_layers=2, cell=cell))
    _, state = model(torch.randint(0, 7, (3, 5)))  # (2, 3, 8) each
    tensors = state_tensors(state)
    assert len(tensors) == (2 if cell == "lstm" else 1)
    assert type(state_from_tensors(tensors)) is type(state)
    picked = select_rows(state, torch.tensor([2, 0]))
    assert all(torch.equal(p, t[:, [2, 0]]) for p, t in zip(state_tensors(picked), tensors, strict=True))
    joined = concat_rows([state, picked])
    assert all(j.shape == (2, 5, 8) for j in state_tensors(joined))
    grown = expand_rows(select_rows(state, torch.tensor([1])), 4)
    assert all(torch.equal(g, t[:, 1:2].expand(-1, 4, -1)) for g, t in zip(state_tensors(grown), tensors, strict=True))
    assert all(t.requires_grad for t in tensors)
    assert not any(t.requires_grad for t in state_tensors(detach_state(state)))
    doubled = map_state(torch.add, state, state)
    assert all(torch.equal(d, 2 * t) for d, t in zip(state_tensors(doubled), tensors, strict=True))


def test_eval_mode_restores_the_previous_mode_even_on_an_error():
    model = CharRNN(ModelConfig(vocab_size=5, embedding_dim=4, hidden_size=8))
    model.train()
    with pytest.raises(RuntimeError), eval_mode(model) as inside:
        assert inside is model and not model.training
        raise RuntimeError("boom")
    assert model.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training
