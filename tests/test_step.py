import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charnn.checkpoint import save_checkpoint
from charnn.config import ModelConfig, SampleConfig
from charnn.errors import ConfigError
from charnn.fast.step import Stepper, int8_supported
from charnn.generation import generate, generate_text
from charnn.model import CharRNN
from charnn.sample import RandomStreams, sample_next
from charnn.vocab import Vocabulary

TEXT = "“Hello,” said Pip — 你好, Estella! The marshes were dark.\n"
VOCAB = Vocabulary.from_text(TEXT)
needs_int8 = pytest.mark.skipif(not int8_supported(), reason="no int8 dot products on this CPU")


def make_model(cell="gru", num_layers=1, hidden_size=48, seed=0) -> CharRNN:
    torch.manual_seed(seed)
    config = ModelConfig(len(VOCAB), embedding_dim=16, hidden_size=hidden_size, cell=cell, num_layers=num_layers)
    model = CharRNN(config)
    with torch.no_grad():
        # Larger weights than the initialisation's make peaked, state-dependent predictions,
        # so a wrong gate or a stale state shows in the text.
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval()


def plain_generate(model, prime, length, sampling, num_samples, seed) -> list[str]:
    """The reference loop: one model() call per character, state carried by the model."""
    streams = RandomStreams(seed, num_samples)
    tokens = torch.from_numpy(VOCAB.encode(prime)).unsqueeze(0).expand(num_samples, -1)
    pieces = [[] for _ in range(num_samples)]
    with torch.inference_mode():
        logits, state = model(tokens)
        for _ in range(length):
            chosen = sample_next(logits[:, -1], sampling, streams.next())
            for piece, i in zip(pieces, chosen.tolist(), strict=True):
                piece.append(VOCAB.characters[i])
            logits, state = model(chosen.unsqueeze(1), state)
    return ["".join(p) for p in pieces]


@pytest.mark.parametrize("num_layers", [1, 2])
def test_fp32_step_gives_the_models_logits(num_layers):
    model = make_model(num_layers=num_layers)
    tokens = torch.randint(0, len(VOCAB), (3, 60), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, _ = model(tokens)  # (B, T, V)
    stepper = Stepper(model, "fp32")
    logits, state = stepper.prefill(tokens[:, :5])
    torch.testing.assert_close(logits, expected[:, 4], rtol=0, atol=1e-5)
    for t in range(5, 60):
        logits = stepper.step(tokens[:, t], state)
        torch.testing.assert_close(logits, expected[:, t], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("cell", "num_layers", "sampling"),
    [
        ("gru", 1, SampleConfig(temperature=1.0)),
        ("gru", 2, SampleConfig(temperature=0.7, top_k=5)),
        ("gru", 1, SampleConfig(temperature=0)),
        ("lstm", 1, SampleConfig(temperature=1.0, top_p=0.9)),
        ("rnn", 2, SampleConfig(temperature=1.0)),
    ],
)
def test_fp32_generation_gives_the_plain_models_text(cell, num_layers, sampling):
    model = make_model(cell, num_layers)
    expected = plain_generate(model, "Pip", 400, sampling, num_samples=3, seed=7)
    got = generate_text(model, VOCAB, "Pip", length=400, sampling=sampling, num_samples=3, seed=7, precision="fp32")
    assert got == expected
    if sampling.temperature > 0:
        assert len(set(got)) == 3  # the samples differ, so the streams are really per sample


def test_rows_can_join_and_leave_the_batch():
    model = make_model()
    tokens = torch.randint(0, len(VOCAB), (3, 30), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected, _ = model(tokens)
    stepper = Stepper(model, "fp32")
    state = stepper.init_state(2)
    for t in range(10):
        stepper.step(tokens[:2, t], state)
    # A third request arrives with a fresh state; the first one leaves five steps later.
    state = torch.cat([state, stepper.init_state(1)], dim=1)
    late = 10
    for t in range(10, 15):
        logits = stepper.step(torch.stack([tokens[0, t], tokens[1, t], tokens[2, t - late]]), state)
    torch.testing.assert_close(logits[:2], expected[:2, 14], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[2], expected[2, 4], rtol=0, atol=1e-5)
    state = state[:, 1:].contiguous()
    for t in range(15, 20):
        logits = stepper.step(torch.stack([tokens[1, t], tokens[2, t - late]]), state)
    torch.testing.assert_close(logits, torch.stack([expected[1, 19], expected[2, 9]]), rtol=0, atol=1e-5)


def test_prepared_weights_follow_changes_to_the_model():
    model = make_model()
    tokens = torch.tensor([1, 2])
    before = Stepper(model, "fp32").step(tokens, model.init_state(2)).clone()
    with torch.no_grad():
        model.head.bias.add_(1.0)
    after = Stepper(model, "fp32").step(tokens, model.init_state(2))
    torch.testing.assert_close(after, before + 1.0)


@pytest.mark.parametrize("precision", ["bf16", pytest.param("int8", marks=needs_int8)])
def test_reduced_precision_stays_close_to_fp32(precision):
    model = make_model(num_layers=2)
    tokens = torch.randint(0, len(VOCAB), (4, 80), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected, _ = model(tokens)
    stepper = Stepper(model, precision)
    state = stepper.init_state(4)
    worst = 0.0
    for t in range(80):
        logits = stepper.step(tokens[:, t], state)
        worst = max(worst, (logits - expected[:, t]).abs().max().item())
    # Rounding, not a wrong formula: a wrong gate moves logits by whole units.
    assert 0 < worst < 0.1


@needs_int8
def test_int8_sample_does_not_depend_on_its_batch():
    model = make_model()
    sampling = SampleConfig(temperature=1.0)
    together = generate_text(
        model, VOCAB, "Pip", length=300, sampling=sampling, num_samples=4, seed=3, precision="int8"
    )
    alone = [
        "".join(
            step[0]
            for step in generate(
                model,
                VOCAB,
                "Pip",
                length=300,
                sampling=sampling,
                num_samples=1,
                seed=3,
                first_sample=i,
                precision="int8",
            )
        )
        for i in range(4)
    ]
    assert together == alone


def test_auto_precision_and_refusals():
    model = make_model()
    assert Stepper(model, "auto").precision == ("int8" if int8_supported() else "fp32")
    with pytest.raises(ConfigError, match="precision"):
        Stepper(model, "fp16")


def test_cli_generates_with_each_precision(tmp_path: Path):
    model = make_model()
    save_checkpoint(tmp_path / "ckpt_1", model, VOCAB, training={"epoch": 1}, corpus={})
    texts = {}
    for precision in ("fp32", "bf16", "auto"):
        result = subprocess.run(
            [sys.executable, "-m", "charnn", "generate", str(tmp_path / "ckpt_1"), "--prime", "Pip", "--length",
             "50", "--seed", "5", "--precision", precision, "--json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        texts[precision] = json.loads(result.stdout)["samples"][0]
        assert len(texts[precision]) == 50
    expected = generate_text(
        model, VOCAB, "Pip", length=50, sampling=SampleConfig(temperature=0.8), seed=5, precision="fp32"
    )[0]
    assert texts["fp32"] == expected


@needs_int8
def test_a_top_k_beyond_the_vocabulary_keeps_every_character_on_the_int8_kernel():
    """Any integer is a valid top_k (the server takes one up to 2**63); beyond the vocabulary it
    changes nothing, and never overflows the kernel's integer."""
    model = make_model()
    texts = {
        top_k: generate_text(
            model, VOCAB, "Pip", length=200, sampling=SampleConfig(top_k=top_k), seed=4, precision="int8"
        )[0]  # fmt: skip
        for top_k in (None, len(VOCAB), 7 * 10**26)
    }
    assert len(set(texts.values())) == 1
