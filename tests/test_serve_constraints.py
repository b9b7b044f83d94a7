"""Constraints through the server: `ban` and `allow` on both routes, OpenAI's `logit_bias` sent by the
openai client, required phrases on both routes (every one in every sample, or a 422 saying why), and
constrained rows beside unconstrained ones in one batch."""

import asyncio
import json
import re

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charnn.config import SampleConfig
from charnn.constraints import ban_bias
from charnn.generation import generate_text
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


def test_generate_keeps_to_ban_and_allow_as_the_library_does(server, ckpt):
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        for seed in range(4):
            body = {"prompt": "Pip", "max_new_chars": 80, "seed": seed, "num_samples": 3, "temperature": 1.5,
                    "ban": [c for c in "aeiou" if c in ckpt.vocab]}  # fmt: skip
            answer = client.post("/v1/generate", json=body)
            assert answer.status_code == 200, answer.text
            sampling = SampleConfig(1.5, logit_bias=ban_bias(ckpt.vocab, ban="aeiou"))
            expected = generate_text(ckpt.model, ckpt.vocab, "Pip", length=80, sampling=sampling, num_samples=3,
                                     seed=seed)  # fmt: skip
            assert answer.json()["samples"] == expected
            assert not set("".join(expected)) & set("aeiou")
        allow = [c for c in "abcdefghijklm \n" if c in ckpt.vocab]
        allowed = client.post("/v1/generate", json={"prompt": "Pip", "max_new_chars": 100, "allow": allow})
        assert set("".join(allowed.json()["samples"])) <= set(allow)
        unknown = client.post("/v1/generate", json={"prompt": "Pip", "allow": ["a", "0"]})
        assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "allow"
        both = client.post("/v1/generate", json={"prompt": "Pip", "allow": ["a"], "ban": ["e"]})
        assert both.status_code == 422 and both.json()["error"]["message"] == "give ban or allow, not both"


def test_openai_client_sends_logit_bias(server, ckpt):
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    banned = [ckpt.vocab.characters.index(c) for c in "eoa "]
    for seed in range(3):
        completion = api.completions.create(model="charnn", prompt="Pip", max_tokens=60, n=2, seed=seed,
                                            temperature=1.2, logit_bias={str(i): -100 for i in banned})  # fmt: skip
        for choice in completion.choices:
            assert not set(choice.text) & set("eoa ")
    size = len(ckpt.vocab)
    with pytest.raises(openai.UnprocessableEntityError, match=f"token ids this model does not have: {size}, 99999"):
        api.completions.create(model="charnn", prompt="Pip", logit_bias={str(size): -100, "99999": 5, "0": 1})
    with pytest.raises(openai.UnprocessableEntityError, match="bans every character"):
        api.completions.create(model="charnn", prompt="Pip", logit_bias={str(i): -100 for i in range(size)})


def test_a_constrained_request_beside_unconstrained_ones_in_one_batch(server, ckpt):
    async def both():
        async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as client:
            free = {"prompt": "Pip", "max_new_chars": 300, "seed": 5, "num_samples": 2}
            banned = {**free, "ban": ["e"], "seed": 6}
            return await asyncio.gather(*(client.post("/v1/generate", json=b) for b in (free, banned, free)))

    first, constrained, second = asyncio.run(both())
    expected = generate_text(ckpt.model, ckpt.vocab, "Pip", length=300, sampling=SampleConfig(0.8), num_samples=2,
                             seed=5)  # fmt: skip
    assert first.json()["samples"] == second.json()["samples"] == expected  # the ban did not reach them
    assert all("e" not in s for s in constrained.json()["samples"])


def test_generate_reports_what_each_sample_copied_when_asked(server, ckpt):
    from charnn.data.dataset import of_checkpoint
    from charnn.scoring.copies import CopyIndex

    index = CopyIndex(of_checkpoint(ckpt).training_text())
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        body = {"prompt": "Pip", "max_new_chars": 200, "seed": 2, "num_samples": 2}
        plain = client.post("/v1/generate", json=body).json()
        assert "copies" not in plain  # only when asked for
        answer = client.post("/v1/generate", json={**body, "copies": True}).json()
        assert answer["samples"] == plain["samples"]
        assert answer["copies"] == [index.report(s).to_dict() for s in answer["samples"]]
        with client.stream("POST", "/v1/generate", json={**body, "copies": True, "stream": True}) as stream:
            events = [line.removeprefix("data: ") for line in stream.iter_lines() if line.startswith("data: ")]
        summary = next(json.loads(e) for e in events if e.startswith("{") and "finish_reasons" in e)
        assert summary["copies"] == answer["copies"]


# --- required phrases ------------------------------------------------------------------------

WORDS = ["Joe", "marshes", "你好", "stars", "Estella", "“Pip,”"]


def phrases_and_bound():
    """One to three phrases (words of the corpus, or any of its characters) and a bound they fit in."""
    phrase = st.one_of(st.sampled_from(WORDS), st.text(alphabet=sorted(set(TINY_TEXT)), min_size=1, max_size=5))
    return st.lists(phrase, min_size=1, max_size=3).flatmap(
        lambda phrases: st.tuples(st.just(phrases), st.integers(sum(map(len, phrases)), 60))
    )


def holds(sample: str, phrases: list[str], within: int) -> bool:
    return all(phrase in sample[:within] for phrase in phrases)


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=phrases_and_bound(), seed=st.integers(0, 2**32), num_samples=st.integers(1, 3))
def test_every_required_phrase_appears_within_its_bound_on_v1_generate(server, ckpt, case, seed, num_samples):
    phrases, within = case
    body = {"prompt": "Pip", "max_new_chars": 60, "seed": seed, "num_samples": num_samples, "temperature": 1.3,
            "require": phrases, "within": within}  # fmt: skip
    answer = httpx.post(server.url + "/v1/generate", json=body, timeout=DEADLINE)
    assert answer.status_code == 200, answer.text
    samples = answer.json()["samples"]
    assert all(holds(sample, phrases, within) for sample in samples), (phrases, within, samples)
    expected = generate_text(ckpt.model, ckpt.vocab, "Pip", length=60, sampling=SampleConfig(1.3),
                             num_samples=num_samples, seed=seed, require=tuple(phrases), within=within)  # fmt: skip
    assert samples == expected  # the engine's rows force as the library's loop does


@settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=phrases_and_bound(), seed=st.integers(0, 2**32), n=st.integers(1, 3))
def test_every_required_phrase_appears_through_the_openai_client(server, case, seed, n):
    phrases, within = case
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    completion = api.completions.create(model="charnn", prompt="Pip", max_tokens=60, n=n, seed=seed, temperature=1.3,
                                        extra_body={"require": phrases, "within": within})  # fmt: skip
    assert len(completion.choices) == n
    assert all(holds(choice.text, phrases, within) for choice in completion.choices)


def test_required_phrases_beside_free_and_other_constrained_rows_in_one_batch(server, ckpt):
    requests = [
        {"prompt": "Pip", "max_new_chars": 120, "seed": 1, "num_samples": 2},
        {"prompt": "Pip", "max_new_chars": 120, "seed": 2, "num_samples": 3, "require": ["stars", "Joe"], "within": 40},
        {"prompt": "The", "max_new_chars": 120, "seed": 3, "num_samples": 2, "require": ["marshes"], "ban": ["o"]},
    ]

    async def together():
        async with httpx.AsyncClient(base_url=server.url, timeout=DEADLINE) as client:
            return await asyncio.gather(*(client.post("/v1/generate", json=body) for body in requests))

    for body, answer in zip(requests, asyncio.run(together()), strict=True):
        bias = ban_bias(ckpt.vocab, ban="".join(body.get("ban", []))) if "ban" in body else ()
        expected = generate_text(ckpt.model, ckpt.vocab, body["prompt"], length=120, num_samples=body["num_samples"],
                                 sampling=SampleConfig(0.8, logit_bias=bias), seed=body["seed"],
                                 require=tuple(body.get("require", ())), within=body.get("within"))  # fmt: skip
        assert answer.json()["samples"] == expected
        assert all(holds(s, body.get("require", []), body.get("within", 120)) for s in expected)


REFUSED = [
    ({"require": ["Joe"], "ban": ["J"]}, "require", "uses banned characters: 'J'"),
    ({"require": ["marshes", "stars"], "within": 10}, "require", "need 12 characters, more than the 10"),
    ({"require": ["Joe"], "within": 61}, "within", "within must be from 1 to max_new_chars (60), got 61"),
    ({"require": ["Joe"], "max_new_chars": 2}, "require", "need 3 characters, more than the 2"),
    ({"require": ["Joe#"]}, "require", "characters the model does not know: '#'"),
    ({"require": ["Joe"], "stop": "."}, "require", "require cannot go with stop"),
    ({"require": ["Joe"], "beam": 2}, "require", "the beam searches without it"),
    ({"within": 5}, "within", "give require too"),
]


@pytest.mark.parametrize("fields, field, message", REFUSED)
def test_phrases_that_cannot_appear_are_refused_naming_why(server, fields, field, message):
    body = {"prompt": "Pip", "max_new_chars": 60, **fields}
    answer = httpx.post(server.url + "/v1/generate", json=body, timeout=DEADLINE)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == field
    assert message in answer.json()["error"]["message"]
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    extra = {k: v for k, v in fields.items() if k not in ("max_new_chars", "stop")}
    options = {"max_tokens": fields.get("max_new_chars", 60), "stop": fields.get("stop")}
    with pytest.raises(
        openai.UnprocessableEntityError, match=re.escape(message.replace("max_new_chars", "max_tokens"))
    ):
        api.completions.create(model="charnn", prompt="Pip", extra_body=extra, **options)
