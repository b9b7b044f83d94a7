"""The weight average as one object: update, swap-in, and its part of the trainer state."""

import torch

from charnn.config import ModelConfig
from charnn.model import CharRNN
from charnn.training.average import WeightAverage, averaged_weights


def _model(seed: int) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(vocab_size=7, embedding_dim=4, hidden_size=8))


def test_an_update_moves_the_average_towards_the_weights():
    model = _model(0)
    average = WeightAverage(model, decay=0.9, init_share=0.1)
    start = [a.clone() for a in average.average]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(model)
    assert average.steps == 1
    for got, before, p in zip(average.average, start, model.parameters(), strict=True):
        torch.testing.assert_close(got, 0.9 * before + 0.1 * p.detach())
    expected = averaged_weights(average.average, average.initial, 0.9, 1, 0.1)
    assert all(torch.equal(a, b) for a, b in zip(average.weights(), expected, strict=True))


def test_the_swapped_in_weights_leave_the_model_as_it_was_bit_for_bit():
    model = _model(1)
    average = WeightAverage(model, decay=0.5, init_share=0.2)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    average.update(model)
    raw = [p.detach().clone() for p in model.parameters()]
    with average.swapped_in(model):
        assert all(torch.equal(p, w) for p, w in zip(model.parameters(), average.weights(), strict=True))
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), raw, strict=True))


def test_its_state_round_trips_and_an_old_state_swaps_in_the_running_average():
    model = _model(2)
    average = WeightAverage(model, decay=0.8, init_share=0.1)
    average.update(_model(3))
    state = average.state_dict()
    assert list(state) == ["ema", "initial"]
    again = WeightAverage(_model(4), decay=0.8, init_share=0.1)
    again.load_state_dict(state, steps=1, device=torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(again.weights(), average.weights(), strict=True))
    old = WeightAverage(_model(4), decay=0.8, init_share=0.1)
    old.load_state_dict({"ema": state["ema"]}, steps=1, device=torch.device("cpu"))
    assert "initial" not in old.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(old.weights(), state["ema"], strict=True))
