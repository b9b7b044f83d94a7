"""Constraints through the server: `ban` and `allow` on both routes, OpenAI's `logit_bias` sent by the
openai client, and constrained rows beside unconstrained ones in one batch."""

import asyncio
import json

import httpx
import openai
import pytest

from charnn.config import SampleConfig
from charnn.constraints import ban_bias
from charnn.generation import generate_text
from charnn.run_folder import load_checkpoint
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
