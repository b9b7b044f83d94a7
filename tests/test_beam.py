"""Beam search: the same text every time, at least as likely as greedy decoding's, scored as the model scores it;
stop strings end continuations, and the length penalty decides between those of different lengths."""

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charnn.beam import beam_search
from charnn.config import ModelConfig, SampleConfig
from charnn.constraints import ban_bias
from charnn.errors import ConfigError
from charnn.generation import generate_text
from charnn.model import CharRNN
from charnn.run_folder import load_checkpoint
from charnn.scoring.score import score_continuations
from charnn.vocab import Vocabulary
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


def greedy_cut(checkpoint, prime: str, length: int, stop: str, penalty: float) -> tuple[str, float]:
    """Greedy decoding as charnn generate does it, cut before the first stop as the server cuts a sample;
    (its text, its score: the log-probability of the text and the stop over characters ** penalty)."""
    text = generate_text(checkpoint.model, checkpoint.vocab, prime, length=length, sampling=SampleConfig(0),
                         precision="fp32")[0]  # fmt: skip
    end = text.find(stop)
    if end < 0:
        return text, total(checkpoint, prime, text) / length**penalty
    return text[:end], total(checkpoint, prime, text[: end + len(stop)]) / (end + len(stop)) ** penalty


STOPS = [" ", "e", "\n", "ar", "s."]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, len(TINY_TEXT) - 12), size=st.integers(1, 12), width=st.integers(1, 5),
       stop=st.sampled_from(STOPS), penalty=st.sampled_from([0.0, 0.5, 1.0, 2.0]))  # fmt: skip
def test_stops_and_the_length_penalty_keep_the_guarantees(checkpoint, start, size, width, stop, penalty):
    prime = TINY_TEXT[start : start + size]
    found = beam_search(checkpoint.model, checkpoint.vocab, prime, length=30, width=width, stop=stop,
                        length_penalty=penalty)  # fmt: skip
    assert beam_search(checkpoint.model, checkpoint.vocab, prime, length=30, width=width, stop=stop,
                       length_penalty=penalty) == found  # the same again  # fmt: skip
    greedy_text, greedy_score = greedy_cut(checkpoint, prime, 30, stop, penalty)
    assert found.scores[0] >= greedy_score - 1e-3
    assert found.scores == sorted(found.scores, reverse=True) and len(set(found.texts)) == len(found.texts)
    for c in found.continuations:
        assert stop not in c.text  # ended at its first stop, or never wrote one
        written = c.text + stop if c.finish_reason == "stop" else c.text
        assert c.finish_reason == "stop" or len(c.text) == 30
        assert c.logprob == pytest.approx(total(checkpoint, prime, written), abs=1e-3)  # the stop counted
        assert c.score == pytest.approx(c.logprob / len(written) ** penalty, rel=1e-6)


def unigram(probabilities: dict[str, float]) -> tuple[CharRNN, Vocabulary]:
    """A real CharRNN that ignores what came before: each character has its fixed probability."""
    vocab = Vocabulary(tuple(probabilities))
    model = CharRNN(ModelConfig(vocab_size=len(vocab), embedding_dim=4, hidden_size=4))
    for parameter in model.parameters():
        parameter.data.zero_()
    model.head.bias.data = torch.tensor([math.log(p) for p in probabilities.values()])
    return model, vocab


def test_the_length_penalty_decides_between_a_short_and_a_long_continuation():
    # Stopping at once ("." first) has the highest sum; a long run of "a" the highest mean per character.
    model, vocab = unigram({"a": 0.6, "b": 0.1, ".": 0.3})
    plain = beam_search(model, vocab, "a", length=10, width=3, stop=".")
    assert (plain.texts[0], plain.continuations[0].finish_reason) == ("", "stop")
    assert plain.logprobs[0] == pytest.approx(math.log(0.3))
    assert plain.texts[1:] == ["a", "aa"]  # each one more "a": the sum falls
    mean = beam_search(model, vocab, "a", length=10, width=3, stop=".", length_penalty=1.0)
    assert (mean.texts[0], mean.continuations[0].finish_reason) == ("a" * 10, "length")
    assert mean.scores[0] == pytest.approx(math.log(0.6))
    assert mean.scores[0] > mean.scores[1] and plain.logprobs[0] > mean.logprobs[0]  # each wins under its own
    # Without a stop string every continuation is as long as the others, and the penalty changes nothing.
    penalised = beam_search(model, vocab, "a", length=10, width=3, length_penalty=2.0)
    assert penalised.texts == beam_search(model, vocab, "a", length=10, width=3).texts


def test_the_command_line_beam_with_a_stop_and_a_length_penalty(tiny_run, checkpoint):
    done = run_cli("generate", str(tiny_run), "--prime", "Pip", "--length", "60", "--beam", "4", "--stop", "\\n",
                   "--stop", ".", "--length-penalty", "1", "--num-samples", "3", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    found = beam_search(checkpoint.model, checkpoint.vocab, "Pip", length=60, width=4, stop=("\n", "."),
                        length_penalty=1.0)  # fmt: skip
    assert out["samples"] == found.texts[:3] and out["scores"] == pytest.approx(found.scores[:3])
    assert out["finish_reasons"] == [c.finish_reason for c in found.continuations[:3]] and out["length_penalty"] == 1.0
    for extra, message in ((["--length-penalty", "1"], "--length-penalty ranks the continuations of --beam"),
                           (["--require", "Joe", "--stop", "x"], "--require cannot go with --stop"),
                           (["--beam", "2", "--length-penalty", "-1"], "--length-penalty must be a number 0 or more"),
                           (["--beam", "2", "--stop", ""], "a stop string is empty"),
                           (["--within", "5"], "give --require too")):  # fmt: skip
        done = run_cli("generate", str(tiny_run), *extra)
        assert done.returncode == 2 and message in done.stderr, done.stderr
