import pytest
import torch

from charnn.beam import beam_search
from charnn.config import SampleConfig
from charnn.errors import ConfigError, UnknownCharactersError
from charnn.generation import generate, generate_text
from charnn.run_folder import load_checkpoint


def test_same_seed_same_sample(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    a = generate_text(ckpt.model, ckpt.vocab, "Pip", length=80, sampling=SampleConfig(1.0), num_samples=3, seed=42)
    b = generate_text(ckpt.model, ckpt.vocab, "Pip", length=80, sampling=SampleConfig(1.0), num_samples=3, seed=42)
    c = generate_text(ckpt.model, ckpt.vocab, "Pip", length=80, sampling=SampleConfig(1.0), num_samples=3, seed=43)
    assert a == b
    assert a != c
    assert len(set(a)) > 1  # samples in one batch differ from one another
    assert all(len(s) == 80 for s in a)


def test_a_sample_does_not_depend_on_its_batch(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    together = generate_text(
        ckpt.model, ckpt.vocab, "Pip", length=60, sampling=SampleConfig(1.0), num_samples=3, seed=5
    )
    one = generate(
        ckpt.model, ckpt.vocab, "Pip", length=60, sampling=SampleConfig(1.0), num_samples=1, seed=5, first_sample=2
    )
    assert "".join(step[0] for step in one) == together[2]


def test_greedy_generation_follows_the_model(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    text = generate_text(ckpt.model, ckpt.vocab, "Pip", length=20, sampling=SampleConfig(temperature=0))[0]
    context = "Pip"
    for character in text:
        with torch.no_grad():
            logits, _ = ckpt.model(torch.from_numpy(ckpt.vocab.encode(context)).unsqueeze(0))
        assert ckpt.vocab.characters[int(logits[0, -1].argmax())] == character
        context += character


def test_bad_prime_and_length_fail_before_generation(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    with pytest.raises(UnknownCharactersError, match="'Q'"):
        generate(ckpt.model, ckpt.vocab, "Quxz", length=10)
    with pytest.raises(ConfigError, match="length"):
        generate(ckpt.model, ckpt.vocab, "Pip", length=-1)
    with pytest.raises(ConfigError, match="empty"):
        generate(ckpt.model, ckpt.vocab, "", length=10)
    assert list(generate(ckpt.model, ckpt.vocab, "Pip", length=0)) == []


def test_options_are_checked_before_any_work_with_their_parameters_named():
    from charnn.generation import check_options

    check_options(length=0, num_samples=2, best_of=2)
    for options, message in (
        ({"length": -1, "num_samples": 1}, "`length` must be 0 or more, got -1"),
        ({"length": 5, "num_samples": 0}, "`num_samples` must be at least 1, got 0"),
        ({"length": 5, "num_samples": 3, "best_of": 2}, "`best_of` must be at least `num_samples` (3), got 2"),
        ({"length": 5, "num_samples": 1, "best_of": 2, "stream": True}, "`best_of` cannot `stream`"),
    ):
        with pytest.raises(ConfigError) as error:
            check_options(**options)
        assert str(error.value).startswith(message)


def test_texts_held_whole_are_refused_where_they_would_not_fit_and_a_stream_is_not(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    huge = 10**13  # characters: hundreds of terabytes held whole, on any machine
    with pytest.raises(ConfigError, match=r"`length` 10,000,000,000,000 is too long to hold 2 texts whole.*memory"):
        generate_text(ckpt.model, ckpt.vocab, "Pip", length=huge, num_samples=2)
    with pytest.raises(ConfigError, match="too long to hold the text whole"):
        beam_search(ckpt.model, ckpt.vocab, "Pip", length=huge)
    steps = generate(ckpt.model, ckpt.vocab, "Pip", length=huge)  # yields as it draws: no limit
    assert [next(steps) for _ in range(5)] and len(next(steps)) == 1
