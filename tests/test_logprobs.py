"""Log-probabilities, echo and best_of in `/v1/completions`, through the `openai` client against a
real server on loopback: the figures are `charnn.scoring.score`'s, the ranking is `charnn generate --best-of`'s."""

import json
import math
import os
import re
import subprocess
import sys

import httpx
import openai
import pytest

from charnn.config import SampleConfig, ScoreConfig, ServeLimits
from charnn.generation import generate_best_of, generate_text
from charnn.run_folder import load_checkpoint
from charnn.scoring.score import score
from conftest import SRC, run_cli
from serving import DEADLINE, gated, running_server

LIMITS = ServeLimits(max_prompt_chars=64, max_new_chars=300, max_num_samples=4, max_streams=8)


@pytest.fixture(scope="module")
def server(tiny_run):
    with running_server(tiny_run, LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def ckpt(tiny_run):
    return load_checkpoint(tiny_run)


@pytest.fixture(scope="module")
def api(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=DEADLINE)


def drawn(ckpt, prompt, length, sampling, num_samples=1, seed=0):
    return generate_text(
        ckpt.model, ckpt.vocab, prompt, length=length, sampling=sampling, num_samples=num_samples, seed=seed
    )


def check_against_score(ckpt, text, logprobs, *, context, top, offset):
    """`logprobs` (the client's object, or a dict of its lists) scores `text` after `context` as
    `charnn.scoring.score` does, with `top` alternatives per character, offsets from `offset`."""
    get = logprobs.get if isinstance(logprobs, dict) else lambda key: getattr(logprobs, key)
    tokens, token_logprobs, top_logprobs = get("tokens"), get("token_logprobs"), get("top_logprobs")
    assert "".join(tokens) == text and all(len(t) == 1 for t in tokens)
    assert get("text_offset") == list(range(offset, offset + len(text)))
    records = list(score(ckpt.model, ckpt.vocab, text, ScoreConfig(top_k=top), context=context))
    assert len(token_logprobs) == len(top_logprobs) == len(records)
    for record, value, alternatives in zip(records, token_logprobs, top_logprobs, strict=True):
        if record.bits is None:  # an echoed prompt's first character: nothing before it
            assert value is None and alternatives is None
            continue
        assert value == pytest.approx(record.logprob, abs=1e-5)
        assert len(alternatives) == top  # the model's likeliest, whether the drawn one is among them or not
        assert list(alternatives) == [c for c, _ in record.alternatives]
        for (_, probability), logprob in zip(record.alternatives, alternatives.values(), strict=True):
            assert logprob == pytest.approx(math.log(probability), abs=1e-5)


# --- logprobs ------------------------------------------------------------------------------


def test_logprobs_are_the_models_figures_whatever_drew_the_text(api, ckpt):
    # Drawn at temperature 0.7 with top_k 5; scored under the model itself (temperature 1, every character).
    completion = api.completions.create(model="charnn", prompt="Pip", max_tokens=40, n=2, seed=4, temperature=0.7,
                                        logprobs=3, extra_body={"top_k": 5})  # fmt: skip
    expected = drawn(ckpt, "Pip", 40, SampleConfig(0.7, 5), num_samples=2, seed=4)
    choices = sorted(completion.choices, key=lambda c: c.index)
    assert [c.text for c in choices] == expected  # asking for logprobs leaves the text alone
    for choice in choices:
        check_against_score(ckpt, choice.text, choice.logprobs, context="Pip", top=3, offset=len("Pip"))


def test_without_logprobs_the_choice_has_none(api):
    completion = api.completions.create(model="charnn", prompt="Pip", max_tokens=5, seed=1)
    assert completion.choices[0].logprobs is None


def test_echo_scores_the_prompt_too(api, ckpt):
    prompt = "“Pip,” said Joe"
    completion = api.completions.create(model="charnn", prompt=prompt, max_tokens=30, seed=2, echo=True, logprobs=2)
    text = completion.choices[0].text
    assert text == prompt + drawn(ckpt, prompt, 30, SampleConfig(1.0), seed=2)[0]
    # Offsets into the prompt followed by the completion; the prompt's first character unscored.
    check_against_score(ckpt, text, completion.choices[0].logprobs, context="", top=2, offset=0)


def test_echo_with_no_new_characters_scores_a_text(api, ckpt):
    text = "Estella’s eyes — 你好."
    completion = api.completions.create(model="charnn", prompt=text, max_tokens=0, echo=True, logprobs=0)
    choice = completion.choices[0]
    assert choice.text == text and choice.finish_reason == "length"
    logprobs = choice.logprobs
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert logprobs.top_logprobs[1:] == [{}] * (len(text) - 1)  # logprobs 0: no alternatives
    records = list(score(ckpt.model, ckpt.vocab, text))
    assert logprobs.token_logprobs[1:] == pytest.approx([r.logprob for r in records[1:]], abs=1e-5)
    assert logprobs.text_offset == list(range(len(text)))
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (len(text), 0)
    plain = api.completions.create(model="charnn", prompt=text, max_tokens=0, logprobs=2).choices[0]
    assert plain.text == "" and plain.logprobs.tokens == [] and plain.logprobs.text_offset == []


@pytest.mark.parametrize("echo", [False, True])
def test_streamed_chunks_carry_their_characters_logprobs(server, api, ckpt, echo):
    prompt = "Joe"
    texts, pieces, chunks = ["", ""], [{}, {}], 0
    with gated(server.service.engine) as gate:  # held after its first characters until they are read
        stream = api.completions.create(model="charnn", prompt=prompt, max_tokens=200, n=2, seed=9, temperature=0.9,
                                        logprobs=4, echo=echo, stream=True)  # fmt: skip
        for chunk in stream:
            chunks += 1
            if chunks == 1 + 2 * echo:  # past the echoes, drawn text came while the engine was held
                assert chunk.choices[0].text and chunk.choices[0].finish_reason is None
                gate.open()
            for choice in chunk.choices:
                if choice.text:
                    # Each chunk's logprobs are those of its own characters.
                    assert "".join(choice.logprobs.tokens) == choice.text
                    start = len(texts[choice.index]) + (0 if echo else len(prompt))
                    assert choice.logprobs.text_offset[0] == start  # offsets into the prompt and completion
                    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                        pieces[choice.index].setdefault(key, []).extend(getattr(choice.logprobs, key))
                else:
                    assert choice.logprobs is None and choice.finish_reason == "length"
                texts[choice.index] += choice.text
    expected = drawn(ckpt, prompt, 200, SampleConfig(0.9), num_samples=2, seed=9)
    assert texts == [(prompt if echo else "") + t for t in expected]
    for text, logprobs in zip(texts, pieces, strict=True):
        if echo:
            check_against_score(ckpt, text, logprobs, context="", top=4, offset=0)
        else:
            check_against_score(ckpt, text, logprobs, context=prompt, top=4, offset=len(prompt))
    assert chunks > 4 + 2 * echo  # streamed in pieces


def test_requests_without_logprobs_do_no_scoring(tiny_run):
    with running_server(tiny_run, LIMITS) as server:
        calls = []
        run_scoring = server.service.run_scoring

        async def counted(*args, **kwargs):
            calls.append(args[0])
            return await run_scoring(*args, **kwargs)

        server.service.run_scoring = counted
        api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=DEADLINE)
        api.completions.create(model="charnn", prompt="Pip", max_tokens=20, n=2, echo=True)
        list(api.completions.create(model="charnn", prompt="Pip", max_tokens=20, stream=True))
        assert calls == []
        api.completions.create(model="charnn", prompt="Pip", max_tokens=20, logprobs=1)
        assert len(calls) == 1  # the counting sees scoring when there is some


# --- best_of -------------------------------------------------------------------------------


def test_best_of_picks_what_generate_best_of_picks(api, ckpt, tiny_run):
    options = {"prompt": "Pip", "max_tokens": 60, "n": 2, "seed": 11, "temperature": 1.2}
    completion = api.completions.create(model="charnn", best_of=4, logprobs=1, **options)
    ranked = generate_best_of(ckpt.model, ckpt.vocab, "Pip", 60, SampleConfig(1.2), best_of=4, seed=11)
    texts = [c.text for c in sorted(completion.choices, key=lambda c: c.index)]
    assert texts == ranked.best(2)
    assert ranked.order[:2] != [0, 1]  # the ranking changed something: not the first two drawn
    done = run_cli("generate", str(tiny_run), "--prime", "Pip", "--length", "60", "--seed", "11",
                   "--temperature", "1.2", "--best-of", "4", "--num-samples", "2", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["samples"] == texts
    # The returned choices' logprobs are their own; usage counts every sample drawn.
    for choice in completion.choices:
        check_against_score(ckpt, choice.text, choice.logprobs, context="Pip", top=1, offset=3)
    assert completion.usage.completion_tokens == 4 * 60


# --- mistakes ------------------------------------------------------------------------------

BAD = [
    ({"logprobs": 6}, 422, "logprobs", "less than or equal to 5"),
    ({"logprobs": -1}, 422, "logprobs", "greater than or equal to 0"),
    ({"logprobs": True}, 422, "logprobs", "valid integer"),
    ({"logprobs": 1.5}, 422, "logprobs", "valid integer"),
    ({"best_of": 0}, 422, "best_of", "greater than or equal to 1"),
    ({"best_of": 5}, 422, "best_of", "the server's max_num_samples limit"),
    ({"best_of": 2, "n": 3}, 422, "best_of", "best_of must be at least n (3), got 2"),
    ({"best_of": 2, "stream": True}, 422, "best_of", "cannot be used with stream"),
    ({"prompt": "Pip says xq", "echo": True, "logprobs": 1, "max_tokens": 0}, 400, "prompt", "'q', 'x'"),
    ({"prompt": "P" * 65, "echo": True, "logprobs": 1, "max_tokens": 0}, 422, "prompt", "max_prompt_chars limit"),
]


@pytest.mark.parametrize("body, status, field, message", BAD)
def test_mistakes_are_named(server, body, status, field, message):
    response = httpx.post(server.url + "/v1/completions", json={"prompt": "Pip", **body}, timeout=DEADLINE)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["field"] == field and error["type"] == "invalid_request_error"
    assert message in error["message"]


def test_the_openai_client_sees_best_of_with_stream_refused(api):
    with pytest.raises(openai.UnprocessableEntityError, match="best_of"):
        api.completions.create(model="charnn", prompt="Pip", max_tokens=5, best_of=2, stream=True)


def test_schema_describes_the_fields(server):
    schema = httpx.get(server.url + "/openapi.json", timeout=DEADLINE).json()
    request = schema["components"]["schemas"]["CompletionRequest"]
    assert request["properties"]["best_of"]["anyOf"][0]["maximum"] == LIMITS.max_num_samples
    assert request["properties"]["logprobs"]["anyOf"][0]["maximum"] == 5
    branches = next(rule["anyOf"] for rule in request["allOf"] if "anyOf" in rule)[1:]  # n = 2, 3, 4: best_of >= n
    assert [b["properties"]["n"]["minimum"] for b in branches] == list(range(2, LIMITS.max_num_samples + 1))
    assert all(b["properties"]["best_of"]["anyOf"][1]["minimum"] == b["properties"]["n"]["minimum"] for b in branches)
    choice = schema["components"]["schemas"]["CompletionChoice"]["properties"]["logprobs"]
    assert any(option.get("$ref", "").endswith("CompletionLogprobs") for option in choice["anyOf"])


def test_readme_example_runs(server):
    page = (SRC.parent / "docs" / "serving.md").read_text(encoding="utf-8")
    section = page.split("### Log-probabilities, echo, best of n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    assert "http://127.0.0.1:8000/v1" in code
    code = code.replace("http://127.0.0.1:8000/v1", server.url + "/v1")
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(SRC)),
                          capture_output=True, text=True, timeout=DEADLINE)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) >= 22 and lines[0].startswith("'")  # 20 characters, a total, a text (it may hold newlines)
    assert float(lines[20]) < 0
