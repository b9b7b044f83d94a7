"""The one scoring loop: chunks with the state carried read a text as one pass does."""

import pytest
import torch
import torch.nn.functional as F

from charnn.config import ModelConfig
from charnn.model import CharRNN
from charnn.scoring.loop import Reader, cut_streams, log_probabilities, runner, summed_loss


def _model(cell: str = "gru") -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=9, embedding_dim=4, hidden_size=16, num_layers=2, cell=cell)).eval()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_chunks_read_the_rows_as_one_pass(cell):
    model = _model(cell)
    rows = torch.randint(0, 9, (3, 23))
    with torch.inference_mode():
        logits, _ = model(rows[:, :-1])
        expected = torch.log_softmax(logits, -1).gather(-1, rows[:, 1:, None])[..., 0]  # (3, 22)
        chunks = list(log_probabilities(Reader(model, chunk_size=5), rows, top_k=3))
        total, count = summed_loss(Reader(model, chunk_size=7), rows)
    assert [c.start for c in chunks] == [0, 5, 10, 15, 20]
    chosen = torch.cat([c.chosen for c in chunks], dim=1)
    torch.testing.assert_close(chosen, expected)
    assert all(c.top_values.shape[-1] == 3 and torch.all(c.top_values[..., 0] >= c.chosen) for c in chunks)
    assert count == 3 * 22
    assert total == pytest.approx(-expected.sum().item(), rel=1e-5)
    reference = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum").item()
    assert total == pytest.approx(reference, rel=1e-5)


def test_feed_carries_the_state_into_the_predictions():
    model = _model()
    text = torch.randint(0, 9, (1, 30))
    with torch.inference_mode():
        whole = list(log_probabilities(Reader(model, chunk_size=100), text))[0].chosen[:, 11:]
        reader = Reader(model, chunk_size=4)
        reader.feed(text[:, :11], chunk_size=3)
        after = torch.cat([c.chosen for c in log_probabilities(reader, text[:, 11:])], dim=1)
    torch.testing.assert_close(after, whole)


def test_the_fast_step_runner_gives_the_models_figures_in_fp32_and_near_them_in_bf16():
    model = _model()
    rows = torch.randint(0, 9, (2, 12))
    with torch.inference_mode():
        plain = summed_loss(Reader(runner(model, "fp32"), chunk_size=5), rows)
        bf16 = summed_loss(Reader(runner(model, "bf16"), chunk_size=5), rows)
    assert runner(model, "fp32") is model
    assert bf16[1] == plain[1] and bf16[0] == pytest.approx(plain[0], rel=0.02)


def test_cut_streams():
    tokens = torch.arange(23)
    assert cut_streams(tokens, 4).tolist() == [list(range(i * 5, i * 5 + 5)) for i in range(4)]
    assert cut_streams(tokens, 100).shape == (11, 2)  # at most (len - 1) // 2 pieces, two characters each
    assert cut_streams(torch.arange(2), 1).shape == (1, 2)
    assert cut_streams(torch.arange(1), 1) is None
