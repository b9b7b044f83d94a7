import math

import pytest
import torch
import torch.nn.functional as F

from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import Corpus
from charnn.fast import build, recurrence
from charnn.fast.recurrence import supported, training_forward
from charnn.model import CharRNN
from charnn.run_folder import load_checkpoint
from charnn.training import train
from charnn.vocab import Vocabulary


def make_model(hidden_size=40, vocab_size=23, dropout=0.0, num_layers=1) -> CharRNN:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size, embedding_dim=12, hidden_size=hidden_size, dropout=dropout, num_layers=num_layers)
    return CharRNN(config)


def loss_and_grads(model, forward, tokens, targets):
    model.zero_grad()
    logits = forward()
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    loss.backward()
    return logits.detach().float(), {name: p.grad.clone() for name, p in model.named_parameters()}


# Each instruction set this CPU runs the training kernel on (AVX-512 and AVX2 here), asked for by CHARNN_ISA.
ISAS_HERE = [isa for isa in build.ISAS if build.runs_here(build.TRAINING, isa)] or ["none"]


@pytest.mark.parametrize("isa", ISAS_HERE)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("hidden_size", [40, 48])  # 48: the compiled gates where they build; 40: PyTorch's
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 0.03)])
def test_same_logits_and_gradients_as_the_model(dtype, tolerance, hidden_size, num_layers, isa, monkeypatch):
    if isa != "none":
        monkeypatch.setenv("CHARNN_ISA", isa)
    model = make_model(hidden_size, num_layers=num_layers)
    compiled = hidden_size == 48 and build.cpu_supports_training() and not build._switched_off()
    assert (recurrence._kernel(hidden_size) is not None) == compiled
    assert not compiled or recurrence._kernel(hidden_size).isa() == isa
    generator = torch.Generator().manual_seed(1)
    tokens, targets = torch.randint(0, 23, (2, 5, 30), generator=generator)
    state = torch.randn(num_layers, 5, hidden_size, generator=generator)
    expected_final = model(tokens, state)[1].detach()
    expected_logits, expected = loss_and_grads(model, lambda: model(tokens, state)[0], tokens, targets)
    final = training_forward(model, tokens, dtype, state)[1]
    logits, got = loss_and_grads(model, lambda: training_forward(model, tokens, dtype, state)[0], tokens, targets)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=tolerance * 10)
    torch.testing.assert_close(final, expected_final, rtol=0, atol=tolerance * 10)
    for name, grad in expected.items():
        error = (got[name] - grad).abs().max() / grad.abs().max()
        assert error < tolerance, f"{name}: relative error {error:.2e}"


def test_used_only_where_it_applies():
    cpu = torch.device("cpu")
    assert supported(make_model(), cpu, torch.bfloat16)
    assert supported(make_model(), cpu, torch.float32)
    assert not supported(CharRNN(ModelConfig(10, cell="lstm", hidden_size=8)), cpu, torch.bfloat16)
    assert supported(make_model(num_layers=3), cpu, torch.bfloat16)
    assert not supported(make_model(), torch.device("cuda"), torch.bfloat16)


def corpus_text(length=24_000, seed=0) -> str:
    """Text with structure to learn: words from a small lexicon, some with non-ASCII letters."""
    words = ["the", "marsh", "was", "dark", "“Pip,”", "said", "Joe", "你好", "and", "a", "convict", "ran."]
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(words), (length // 4,), generator=generator).tolist()
    return " ".join(words[i] for i in picks)[:length] + "\n"


def test_bf16_training_reaches_the_fp32_loss(tmp_path):
    corpus = Corpus("test", corpus_text())
    vocab = Vocabulary.from_text(corpus.text)
    model_config = ModelConfig(len(vocab), embedding_dim=16, hidden_size=64)
    results = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig(seq_len=32, batch_size=16, epochs=10, max_steps=60, lr=3e-3, precision=precision)
        result = train(corpus, model_config, config, tmp_path / precision)
        results[precision] = result.history[-1]
        recorded = load_checkpoint(result.last_checkpoint).training["precision"]
        assert recorded == {"fp32": "float32", "bf16": "bfloat16"}[precision]
    fp32, bf16 = results["fp32"], results["bf16"]
    # The run learned (from ln(V) ~ 3.2 at the start), so agreeing is not agreeing on noise...
    assert fp32["val_loss"] < 0.75 * math.log(len(vocab))
    # ...and bf16 arithmetic really ran: the two runs are not the same computation.
    assert fp32["loss"] != bf16["loss"]
    assert abs(bf16["loss"] - fp32["loss"]) < 0.02 * fp32["loss"]
    assert abs(bf16["val_loss"] - fp32["val_loss"]) < 0.02 * fp32["val_loss"]


@pytest.mark.parametrize("variational_dropout", [True, False])
@pytest.mark.parametrize(("hidden_size", "num_layers"), [(40, 1), (48, 1), (48, 2)])
def test_carried_state_and_regularisation_match_the_model(hidden_size, num_layers, variational_dropout):
    # The same masks (same seed, drawn in the same order) and a carried state: the same numbers.
    torch.manual_seed(0)
    config = ModelConfig(23, embedding_dim=12, hidden_size=hidden_size, num_layers=num_layers, dropout=0.3,
                         variational_dropout=variational_dropout, weight_drop=0.4, embedding_dropout=0.2)  # fmt: skip
    model = CharRNN(config)
    generator = torch.Generator().manual_seed(2)
    tokens, targets = torch.randint(0, 23, (2, 4, 25), generator=generator)
    state = torch.randn(num_layers, 4, hidden_size, generator=generator)

    def seeded(forward):
        def run():
            torch.manual_seed(5)
            logits, final = forward()
            run.final = final
            return logits

        return run

    expected_run = seeded(lambda: model(tokens, state))
    expected_logits, expected = loss_and_grads(model, expected_run, tokens, targets)
    got_run = seeded(lambda: training_forward(model, tokens, torch.float32, state))
    logits, got = loss_and_grads(model, got_run, tokens, targets)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(got_run.final, expected_run.final.detach(), rtol=0, atol=1e-5)
    for name, grad in expected.items():
        error = (got[name] - grad).abs().max() / grad.abs().max()
        assert error < 1e-5, f"{name}: relative error {error:.2e}"
