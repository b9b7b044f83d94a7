"""Beam search: the same text every time, at least as likely as greedy decoding's, scored as the model scores it."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charnn.beam import beam_search
from charnn.config import SampleConfig
from charnn.constraints import ban_bias
from charnn.errors import ConfigError
from charnn.generation import generate_text
from charnn.run_folder import load_checkpoint
from charnn.scoring.score import score_continuations
from conftest import TINY_TEXT, run_cli


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return load_checkpoint(tiny_run)


def total(checkpoint, prime: str, text: str) -> float:
    """The plain model's log-probability of `text` after `prime`, as charnn score computes it."""
    return sum(record.logprob for record in score_continuations(checkpoint.model, checkpoint.vocab, prime, [text])[0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, len(TINY_TEXT) - 12), size=st.integers(1, 12), width=st.integers(1, 6))
def test_the_beam_is_at_least_as_likely_as_greedy_and_its_figure_is_the_models(checkpoint, start, size, width):
    prime = TINY_TEXT[start : start + size]
    found = beam_search(checkpoint.model, checkpoint.vocab, prime, length=40, width=width)
    assert found.logprobs[0] >= found.greedy_logprob - 1e-4
    assert found.greedy_logprob == pytest.approx(total(checkpoint, prime, found.greedy_text), abs=1e-3)
    assert found.logprobs[0] == pytest.approx(total(checkpoint, prime, found.texts[0]), abs=1e-3)
    assert found.logprobs == sorted(found.logprobs, reverse=True) and len(set(found.texts)) == len(found.texts)
    assert beam_search(checkpoint.model, checkpoint.vocab, prime, length=40, width=width) == found  # the same again


def test_on_every_prompt_tested_the_beam_beats_charnn_generate_at_temperature_0(checkpoint):
    lines = [line for line in TINY_TEXT.splitlines() if line]
    for prime in [line[:k] for line in lines for k in (1, 5, 17, 30)]:
        greedy = generate_text(checkpoint.model, checkpoint.vocab, prime, length=50, sampling=SampleConfig(0),
                               precision="fp32")[0]  # fmt: skip
        found = beam_search(checkpoint.model, checkpoint.vocab, prime, length=50, width=4)
        assert found.logprobs[0] >= total(checkpoint, prime, greedy) - 1e-3, prime


def test_a_beam_of_one_is_greedy_and_bans_hold(checkpoint):
    greedy = generate_text(checkpoint.model, checkpoint.vocab, "Pip", length=60, sampling=SampleConfig(0),
                           precision="fp32")[0]  # fmt: skip
    assert beam_search(checkpoint.model, checkpoint.vocab, "Pip", length=60, width=1).texts == [greedy]
    bias = ban_bias(checkpoint.vocab, ban="eo ")
    found = beam_search(checkpoint.model, checkpoint.vocab, "Pip", length=60, width=5, logit_bias=bias)
    assert all(len(text) == 60 and not set(text) & set("eo ") for text in found.texts)
    only = ban_bias(checkpoint.vocab, allow="ab")  # fewer characters than the beam is wide
    assert all(set(text) <= {"a", "b"} for text in beam_search(checkpoint.model, checkpoint.vocab, "Pip", length=5,
                                                                 width=8, logit_bias=only).texts)  # fmt: skip
    with pytest.raises(ConfigError, match="`beam` must be at least 1"):
        beam_search(checkpoint.model, checkpoint.vocab, "Pip", length=5, width=0)


def test_the_command_line_prints_the_beam(tiny_run, checkpoint):
    done = run_cli("generate", str(tiny_run), "--prime", "Pip", "--length", "50", "--beam", "4", "--num-samples",
                   "2", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    found = beam_search(checkpoint.model, checkpoint.vocab, "Pip", length=50, width=4)
    assert out["samples"] == found.texts[:2] and out["logprobs"] == pytest.approx(found.logprobs[:2])
    for extra, message in ((["--stream"], "--beam cannot --stream"), (["--best-of", "4"], "give --beam or --best-of"),
                           (["--num-samples", "5"], "--beam must be at least --num-samples (5)")):  # fmt: skip
        done = run_cli("generate", str(tiny_run), "--beam", "4", *extra)
        assert done.returncode == 2 and message in done.stderr
