import math

import pytest
import torch
import torch.nn.functional as F

from charnn.config import ModelConfig
from charnn.errors import ConfigError
from charnn.model import CharRNN


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
