"""Beam search through the server: on both routes the same text every time, the library's, at least as likely as
greedy decoding's under the chosen length penalty; with stop strings; and what it cannot go with, refused."""

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_beam import greedy_cut

from charnn.beam import beam_search
from charnn.run_folder import load_checkpoint
from conftest import TINY_TEXT
from serving import DEADLINE, running_server


@pytest.fixture(scope="module")
def server(tiny_run):
    with running_server(tiny_run) as running:
        yield running


@pytest.fixture(scope="module")
def ckpt(tiny_run):
    return load_checkpoint(tiny_run)


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, len(TINY_TEXT) - 12), size=st.integers(1, 12), width=st.integers(1, 4),
       stop=st.sampled_from([" ", "e", "\n", "ar"]), penalty=st.sampled_from([0.0, 0.7, 1.0]))  # fmt: skip
def test_v1_generate_beam_is_the_same_twice_and_beats_greedy(server, ckpt, start, size, width, stop, penalty):
    prime = TINY_TEXT[start : start + size]
    body = {"prompt": prime, "max_new_chars": 40, "beam": width, "num_samples": width, "stop": stop,
            "length_penalty": penalty}  # fmt: skip
    first, second = (httpx.post(server.url + "/v1/generate", json=body, timeout=DEADLINE) for _ in range(2))
    assert first.status_code == 200, first.text
    assert first.json() == second.json()
    answer = first.json()
    found = beam_search(ckpt.model, ckpt.vocab, prime, length=40, width=width, stop=stop, length_penalty=penalty)
    assert answer["samples"] == found.texts and answer["scores"] == pytest.approx(found.scores)
    assert answer["finish_reasons"] == [c.finish_reason for c in found.continuations] and "seed" not in answer
    assert answer["logprobs"] == pytest.approx(found.logprobs)
    _, greedy_score = greedy_cut(ckpt, prime, 40, stop, penalty)
    assert answer["scores"][0] >= greedy_score - 1e-3


def test_v1_completions_beam_through_the_openai_client(server, ckpt):
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    for prime in ("Pip", "The marshes", "Estella"):
        options = {"model": "charnn", "prompt": prime, "max_tokens": 50, "n": 3, "stop": ["."],
                   "extra_body": {"beam": 4, "length_penalty": 1.0}}  # fmt: skip
        first, second = api.completions.create(**options), api.completions.create(**options)
        found = beam_search(ckpt.model, ckpt.vocab, prime, length=50, width=4, stop=".", length_penalty=1.0)
        assert [c.text for c in first.choices] == [c.text for c in second.choices] == found.texts[:3]
        assert [c.finish_reason for c in first.choices] == [c.finish_reason for c in found.continuations[:3]]
        _, greedy_score = greedy_cut(ckpt, prime, 50, ".", 1.0)
        assert found.scores[0] >= greedy_score - 1e-3
    scored = api.completions.create(model="charnn", prompt="Pip", max_tokens=30, logprobs=1, echo=True,
                                    extra_body={"beam": 2})  # fmt: skip
    text = scored.choices[0].text
    assert text == "Pip" + beam_search(ckpt.model, ckpt.vocab, "Pip", length=30, width=2).texts[0]
    assert scored.choices[0].logprobs.tokens == list(text)


REFUSED = [
    ({"beam": 2, "stream": True}, "beam", "beam cannot stream"),
    ({"beam": 2, "num_samples": 3}, "beam", "beam must be at least num_samples (3), got 2"),
    ({"length_penalty": 1.0}, "length_penalty", "give beam too"),
    ({"beam": 2, "length_penalty": -1}, "length_penalty", "greater than or equal to 0"),
    ({"beam": 9}, "beam", "the server's max_num_samples limit"),
]


@pytest.mark.parametrize("fields, field, message", REFUSED)
def test_what_the_beam_cannot_go_with_is_refused(server, fields, field, message):
    answer = httpx.post(server.url + "/v1/generate", json={"prompt": "Pip", **fields}, timeout=DEADLINE)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == field, answer.text
    assert message in answer.json()["error"]["message"]


def test_completions_refuse_beam_with_best_of_more_choices_or_a_stream(server):
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    for options, message in (({"best_of": 2, "extra_body": {"beam": 2}}, "give beam or best_of, not both"),
                             ({"n": 3, "extra_body": {"beam": 2}}, "beam must be at least n \\(3\\), got 2"),
                             ({"stream": True, "extra_body": {"beam": 2}}, "beam cannot stream")):  # fmt: skip
        with pytest.raises(openai.UnprocessableEntityError, match=message):
            api.completions.create(model="charnn", prompt="Pip", max_tokens=5, **options)
