import json

import pytest
import torch

from charnn.beam import beam_search
from charnn.config import SampleConfig
from charnn.errors import ConfigError, UnknownCharactersError
from charnn.generation import generate, generate_text
from charnn.run_folder import load_checkpoint
from conftest import run_cli


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


def test_a_stop_string_ends_a_sample_as_the_server_ends_it(tiny_run):
    from charnn.generation import cut_at_stop

    assert cut_at_stop("xaby", ("b", "ab")) == ("x", True)  # both end at "b": the longer began first
    assert cut_at_stop("xaby", ("y", "ab")) == ("x", True) and cut_at_stop("xy", ("z",)) == ("xy", False)
    ckpt = load_checkpoint(tiny_run)
    options = {"length": 120, "sampling": SampleConfig(1.2), "num_samples": 4, "precision": "fp32"}
    for seed in range(5):
        whole = generate_text(ckpt.model, ckpt.vocab, "Pip", seed=seed, **options)
        cut = generate_text(ckpt.model, ckpt.vocab, "Pip", seed=seed, stop=("e ", "."), **options)
        assert cut == [cut_at_stop(text, ("e ", "."))[0] for text in whole]
        for text, part in zip(whole, cut, strict=True):
            assert text.startswith(part) and "e " not in part and "." not in part


def test_the_command_line_stops_samples_printed_whole_streamed_and_as_json(tiny_run):
    from charnn.generation import cut_at_stop

    ckpt = load_checkpoint(tiny_run)
    command = ["generate", str(tiny_run), "--prime", "Pip", "--length", "150", "--seed", "2", "--precision", "fp32",
               "--temperature", "1.2", "--stop", "e ", "--stop", "\\n"]  # fmt: skip
    whole = generate_text(ckpt.model, ckpt.vocab, "Pip", length=150, sampling=SampleConfig(1.2), num_samples=3,
                          seed=2, precision="fp32")  # fmt: skip
    expected = [cut_at_stop(text, ("e ", "\n"))[0] for text in whole]
    done = run_cli(*command, "--num-samples", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["samples"] == expected
    streamed = run_cli(*command)
    assert streamed.stdout == "Pip" + expected[0] + "\n"


def test_held_back_is_the_longest_partial_stop():
    from charnn.generation import held_back

    assert held_back("abc", ("cd",)) == 1
    assert held_back("abc", ("bcd", "cx")) == 2
    assert held_back("abc", ("xyz",)) == 0
    assert held_back("a", ("abc",)) == 1
    assert held_back("", ("abc",)) == 0
