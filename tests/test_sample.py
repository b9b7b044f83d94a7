import pytest
import torch

from charnn.config import SampleConfig
from charnn.errors import ConfigError, UnknownCharactersError
from charnn.run_folder import load_checkpoint
from charnn.sample import generate, generate_text, sample_next


def test_temperature_zero_is_argmax():
    generator = torch.Generator().manual_seed(0)  # its own generator: the same draws whatever test ran before
    logits = torch.randn(16, 30, generator=generator)
    chosen = sample_next(logits, SampleConfig(temperature=0), torch.rand(16, generator=generator))
    assert torch.equal(chosen, logits.argmax(-1))


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]])).expand(20_000, -1)
    chosen = sample_next(
        logits, SampleConfig(temperature=1.0), torch.rand(20_000, generator=torch.Generator().manual_seed(1))
    )
    shares = torch.bincount(chosen, minlength=3).float() / 20_000
    torch.testing.assert_close(shares, torch.tensor([0.1, 0.6, 0.3]), atol=0.02, rtol=0)


def test_top_k_and_top_p_exclude_unlikely_characters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(5_000, -1)
    uniforms = torch.rand(5_000, generator=torch.Generator().manual_seed(2))
    assert set(sample_next(logits, SampleConfig(1.0, top_k=2), uniforms).tolist()) == {0, 1}
    assert set(sample_next(logits, SampleConfig(1.0, top_p=0.8), uniforms).tolist()) == {0, 1}
    assert set(sample_next(logits, SampleConfig(1.0, top_p=0.81), uniforms).tolist()) == {0, 1, 2}
    assert set(sample_next(logits, SampleConfig(1.0, top_p=0.01), uniforms).tolist()) == {0}


@pytest.mark.parametrize("options", [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": 0}])
def test_invalid_sampling_options(options):
    with pytest.raises(ConfigError):
        SampleConfig(**options)


def test_same_seed_same_sample(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    a = generate_text(ckpt.model, ckpt.vocab, "Pip", 80, SampleConfig(1.0), num_samples=3, seed=42)
    b = generate_text(ckpt.model, ckpt.vocab, "Pip", 80, SampleConfig(1.0), num_samples=3, seed=42)
    c = generate_text(ckpt.model, ckpt.vocab, "Pip", 80, SampleConfig(1.0), num_samples=3, seed=43)
    assert a == b
    assert a != c
    assert len(set(a)) > 1  # samples in one batch differ from one another
    assert all(len(s) == 80 for s in a)


def test_a_sample_does_not_depend_on_its_batch(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    together = generate_text(ckpt.model, ckpt.vocab, "Pip", 60, SampleConfig(1.0), num_samples=3, seed=5)
    one = generate(ckpt.model, ckpt.vocab, "Pip", 60, SampleConfig(1.0), 1, seed=5, first_sample=2)
    assert "".join(step[0] for step in one) == together[2]


def test_greedy_generation_follows_the_model(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    text = generate_text(ckpt.model, ckpt.vocab, "Pip", 20, SampleConfig(temperature=0))[0]
    context = "Pip"
    for character in text:
        with torch.no_grad():
            logits, _ = ckpt.model(torch.from_numpy(ckpt.vocab.encode(context)).unsqueeze(0))
        assert ckpt.vocab.characters[int(logits[0, -1].argmax())] == character
        context += character


def test_bad_prime_and_length_fail_before_generation(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    with pytest.raises(UnknownCharactersError, match="'Q'"):
        generate(ckpt.model, ckpt.vocab, "Quxz", 10)
    with pytest.raises(ConfigError, match="length"):
        generate(ckpt.model, ckpt.vocab, "Pip", -1)
    with pytest.raises(ConfigError, match="empty"):
        generate(ckpt.model, ckpt.vocab, "", 10)
    assert list(generate(ckpt.model, ckpt.vocab, "Pip", 0)) == []
