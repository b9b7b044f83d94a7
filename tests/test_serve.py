"""`charnn serve` against a real server on loopback: API round trips, streaming, equality with
`charnn generate`, the OpenAI client, every limit and error, disconnects, and schemathesis."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from charnn.cli import build_parser, main
from charnn.config import SampleConfig, ServeLimits
from charnn.errors import ConfigError
from charnn.generation import generate_text
from charnn.run_folder import load_checkpoint
from conftest import SRC, run_cli
from serving import DEADLINE, gated, running_server, wait_until

LIMITS = ServeLimits(max_prompt_chars=64, max_new_chars=300, max_num_samples=4, max_streams=16)


@pytest.fixture(scope="module")
def server(tiny_run):
    with running_server(tiny_run, LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def ckpt(tiny_run):
    return load_checkpoint(tiny_run)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as c:
        yield c


def reference(ckpt, prompt, length, sampling=SampleConfig(0.8), num_samples=1, seed=0, stop=()):
    """What `charnn generate` gives (`--stop`: cut before the first stop sequence)."""
    return generate_text(ckpt.model, ckpt.vocab, prompt, length=length, sampling=sampling, num_samples=num_samples,
                         seed=seed, stop=tuple(stop))  # fmt: skip


def sse_events(response: httpx.Response) -> list[str]:
    """The data of each server-sent event, checking the framing on the way."""
    return sse_data(response.read())


def sse_data(raw: bytes) -> list[str]:
    body = raw.decode("utf-8")
    assert body.endswith("\n\n")
    events = []
    for block in body.split("\n\n")[:-1]:
        assert block.startswith("data: ") and "\n" not in block, repr(block)
        events.append(block[len("data: ") :])
    return events


# --- round trips -------------------------------------------------------------------------


def test_health_model_and_page(client, ckpt):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["max_streams"] == LIMITS.max_streams
    info = client.get("/v1/model").json()
    assert info["vocabulary"] == list(ckpt.vocab.characters)
    assert info["config"] == ckpt.config.to_dict()
    assert info["parameters"] == ckpt.model.num_parameters()
    assert info["training"]["val_loss"] == pytest.approx(ckpt.training["val_loss"])
    assert info["limits"] == {"max_prompt_chars": 64, "max_new_chars": 300, "max_num_samples": 4, "max_streams": 16}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="generate"' in page.text and 'id="stop"' in page.text


def test_samples_equal_charnn_generate_json(client, tiny_run):
    done = run_cli("generate", str(tiny_run), "--prime", "Pip", "--length", "90", "--seed", "11",
                   "--num-samples", "2", "--temperature", "0.8", "--top-k", "12", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    cli = json.loads(done.stdout)
    body = {"prompt": "Pip", "max_new_chars": 90, "seed": 11, "num_samples": 2, "temperature": 0.8, "top_k": 12}
    served = client.post("/v1/generate", json=body).json()
    assert served["samples"] == cli["samples"]
    assert served["seed"] == 11 and served["finish_reason"] == "length"
    assert served["finish_reasons"] == ["length", "length"]
    assert served["model"] == client.get("/v1/model").json()["name"]


@pytest.mark.parametrize(
    "prompt, options",
    [
        ("“Pip,” said Joe", {"temperature": 0}),
        ("你好", {"temperature": 1.0, "top_p": 0.9}),
        ("E", {"temperature": 1.3, "top_k": 4, "num_samples": 3}),
        ("The", {"temperature": 0.5, "max_new_chars": 0}),
    ],
)
def test_options_equal_generate_text(client, ckpt, prompt, options):
    body = {"prompt": prompt, "max_new_chars": 60, "seed": 5, **options}
    served = client.post("/v1/generate", json=body).json()
    sampling = SampleConfig(body["temperature"], body.get("top_k"), body.get("top_p"))
    assert served["samples"] == reference(ckpt, prompt, body["max_new_chars"], sampling, body.get("num_samples", 1), 5)


def test_without_a_seed_one_is_drawn_and_reported(client, ckpt):
    served = client.post("/v1/generate", json={"prompt": "Pip", "max_new_chars": 40}).json()
    assert isinstance(served["seed"], int)
    assert served["samples"] == reference(ckpt, "Pip", 40, seed=served["seed"])


def test_streaming_events(server, client, ckpt):
    body = {"prompt": "Pip", "max_new_chars": 300, "seed": 3, "num_samples": 2, "stream": True}
    # The engine is held after its first characters until the client has read them: they come
    # as they are produced, not with the rest, however fast either side is.
    with gated(server.service.engine) as gate, client.stream("POST", "/v1/generate", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        pieces = response.iter_bytes()
        raw = b""
        while not raw.endswith(b"\n\n"):
            raw += next(pieces)
        early = [json.loads(e) for e in sse_data(raw)]
        gate.open()
        events = sse_data(raw + b"".join(pieces))
    assert early and all(set(e) == {"text", "sample"} for e in early)  # text, before any sample ended
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    summary = parsed[-1]
    assert summary == {"finish_reason": "length", "finish_reasons": ["length", "length"], "seed": 3,
                       "model": summary["model"]}  # fmt: skip
    texts = ["", ""]
    finished = []
    for event in parsed[:-1]:
        assert set(event) <= {"text", "sample", "finish_reason"}
        assert event["sample"] not in finished, "text after a sample's finish event"
        texts[event["sample"]] += event["text"]
        if "finish_reason" in event:
            finished.append(event["sample"])
    assert sorted(finished) == [0, 1]
    assert texts == reference(ckpt, "Pip", 300, num_samples=2, seed=3)
    # Characters arrive as they are produced, not in one piece (text that arrives while the
    # reader is busy is joined into one event).
    assert len(parsed) > 4


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences(client, ckpt, stream):
    full = reference(ckpt, "Pip", 200, num_samples=3, seed=8)
    stop = [full[0][10:13], full[1][5:7]]  # strings that do occur, so that samples stop early
    body = {"prompt": "Pip", "max_new_chars": 200, "seed": 8, "num_samples": 3, "stop": stop, "stream": stream}
    expected = reference(ckpt, "Pip", 200, num_samples=3, seed=8, stop=stop)
    if stream:
        with client.stream("POST", "/v1/generate", json=body) as response:
            parsed = [json.loads(e) for e in sse_events(response)[:-1]]
        texts = ["", "", ""]
        for event in parsed[:-1]:
            texts[event["sample"]] += event["text"]
        reasons = parsed[-1]["finish_reasons"]
    else:
        served = client.post("/v1/generate", json=body).json()
        texts, reasons = served["samples"], served["finish_reasons"]
    assert texts == expected
    assert reasons == ["stop" if len(e) < 200 else "length" for e in expected]
    assert reasons[0] == "stop"


def test_concurrent_requests_share_batches_and_stay_exact(server, client, ckpt):
    bodies = [
        {"prompt": p, "max_new_chars": 100 + 10 * i, "seed": 20 + i, "num_samples": 2, "temperature": t, "top_k": k}
        for i, (p, t, k) in enumerate(
            [("Pip", 0.8, None), ("Joe", 1.0, 5), ("你好", 0.0, None), ("The river", 1.2, None),
             ("E", 0.6, 3), ("“", 0.9, None), ("Pip", 0.8, None), ("cold", 1.0, None)]
        )
    ]  # fmt: skip
    steps = server.service.engine.steps
    with ThreadPoolExecutor(len(bodies)) as pool, gated(server.service.engine) as gate:
        futures = [pool.submit(client.post, "/v1/generate", json=body) for body in bodies]
        # Held at its first step until all eight are in: they share the batch whatever the timing.
        wait_until(lambda: len(server.service.jobs) == len(bodies), message="all requests to arrive")
        gate.open()
        results = [future.result().json() for future in futures]
    for body, result in zip(bodies, results, strict=True):
        sampling = SampleConfig(body["temperature"], body["top_k"])
        assert result["samples"] == reference(ckpt, body["prompt"], body["max_new_chars"], sampling, 2, body["seed"])
    # Eight requests of 100 to 170 characters in far fewer steps than their sum: one batch.
    assert server.service.engine.steps - steps < sum(b["max_new_chars"] for b in bodies) / 2


# --- the OpenAI client --------------------------------------------------------------------


def test_openai_client_completions(server, ckpt):
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    completion = api.completions.create(model="charnn", prompt="Pip", max_tokens=50, n=2, seed=4, temperature=0.7)
    expected = reference(ckpt, "Pip", 50, SampleConfig(0.7), num_samples=2, seed=4)
    assert [c.text for c in sorted(completion.choices, key=lambda c: c.index)] == expected
    assert [c.finish_reason for c in completion.choices] == ["length", "length"]
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 100)
    assert completion.usage.total_tokens == 103

    stop = expected[0][20:22]
    stopped = api.completions.create(model="x", prompt="Pip", max_tokens=50, seed=4, temperature=0.7, stop=[stop])
    assert stopped.choices[0].text == expected[0][: expected[0].find(stop)]
    assert stopped.choices[0].finish_reason == "stop"

    echoed = api.completions.create(model="x", prompt="Pip", max_tokens=5, seed=4, temperature=0.7, echo=True)
    assert echoed.choices[0].text == "Pip" + expected[0][:5]


def test_openai_client_streaming(server, ckpt):
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    texts, reasons, usage, chunks = ["", ""], [None, None], None, 0
    with gated(server.service.engine) as gate:  # held after its first characters until they are read
        stream = api.completions.create(model="charnn", prompt="Joe", max_tokens=300, n=2, seed=9, temperature=0.9,
                                        top_p=0.95, stream=True, stream_options={"include_usage": True})  # fmt: skip
        for chunk in stream:
            if chunks == 0:  # read while the engine is held: text, before any sample ended
                assert chunk.choices and chunk.choices[0].text and chunk.choices[0].finish_reason is None
                gate.open()
            chunks += 1
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                texts[choice.index] += choice.text
                if choice.finish_reason is not None:
                    reasons[choice.index] = choice.finish_reason
    assert texts == reference(ckpt, "Joe", 300, SampleConfig(0.9, top_p=0.95), num_samples=2, seed=9)
    assert reasons == ["length", "length"]
    assert usage.completion_tokens == 600 and usage.prompt_tokens == 3
    assert chunks > 4  # streamed in pieces (text arriving while the reader is busy is joined)


def test_openai_client_sees_errors(server):
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        api.completions.create(model="charnn", prompt="Pipx", max_tokens=5)
    assert "'x'" in str(caught.value)
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        api.completions.create(model="charnn", prompt="Pip", max_tokens=10_000)


# --- limits and bad input -----------------------------------------------------------------

BAD_GENERATE = [
    ({"prompt": "Pip", "temperature": -0.5}, "temperature", "greater than or equal to 0"),
    ({"prompt": "Pip", "temperature": 2.5}, "temperature", "less than or equal to 2"),
    ({"prompt": "Pip", "temperature": "hot"}, "temperature", "valid number"),
    ({"prompt": "Pip", "temperature": True}, "temperature", "valid number"),
    ({"prompt": "Pip", "top_k": 0}, "top_k", "greater than or equal to 1"),
    ({"prompt": "Pip", "top_p": 0}, "top_p", "greater than 0"),
    ({"prompt": "Pip", "top_p": 1.5}, "top_p", "less than or equal to 1"),
    ({"prompt": "Pip", "seed": -1}, "seed", "greater than or equal to 0"),
    ({"prompt": "Pip", "seed": "7"}, "seed", "valid integer"),
    ({"prompt": "Pip", "max_new_chars": -1}, "max_new_chars", "greater than or equal to 0"),
    ({"prompt": "Pip", "max_new_chars": 301}, "max_new_chars", "the server's max_new_chars limit"),
    ({"prompt": "Pip", "max_new_chars": 2.5}, "max_new_chars", "valid integer"),
    ({"prompt": "Pip", "num_samples": 0}, "num_samples", "greater than or equal to 1"),
    ({"prompt": "Pip", "num_samples": 5}, "num_samples", "the server's max_num_samples limit"),
    ({"prompt": ""}, "prompt", "at least 1 character"),
    ({"prompt": "P" * 65}, "prompt", "the server's max_prompt_chars limit"),
    ({"prompt": 7}, "prompt", "valid string"),
    ({}, "prompt", "required"),
    ({"prompt": "Pip", "stop": ""}, "stop", "at least 1 character"),
    ({"prompt": "Pip", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"prompt": "Pip", "stream": "yes"}, "stream", "valid boolean"),
    ({"prompt": "Pip", "max_new_char": 10}, "max_new_char", "unknown field"),
]


@pytest.mark.parametrize("body, field, message", BAD_GENERATE)
def test_invalid_fields_are_named(client, body, field, message):
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"


BAD_COMPLETIONS = [
    ({"prompt": "Pip", "max_tokens": 301}, "max_tokens", "the server's max_new_chars limit"),
    ({"prompt": "Pip", "n": 5}, "n", "the server's max_num_samples limit"),
    ({"prompt": "Pip", "logprobs": 6}, "logprobs", "less than or equal to 5"),
    ({"prompt": "Pip", "best_of": 5}, "best_of", "the server's max_num_samples limit"),
    ({"prompt": "Pip", "presence_penalty": 0.5}, "presence_penalty", "not supported"),
    ({"prompt": "Pip", "stream_options": {"include_usage": 1}}, "stream_options", "valid boolean"),
    ({"prompt": ["Pip", "Joe"]}, "prompt", "valid string"),
]


@pytest.mark.parametrize("body, field, message", BAD_COMPLETIONS)
def test_invalid_completions_fields_are_named(client, body, field, message):
    response = client.post("/v1/completions", json={"model": "charnn", **body})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert message in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/completions"])
def test_unknown_characters_are_named(client, path):
    response = client.post(path, json={"prompt": "Pip says xq!"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "prompt"
    assert "'q'" in error["message"] and "'x'" in error["message"]


@pytest.mark.parametrize(
    "content, message",
    [(b'{"prompt": "Pip"', "not valid JSON"), (b"[1, 2]", "valid dictionary"), (b"", "JSON object body")],
)
def test_malformed_bodies(client, content, message):
    response = client.post("/v1/generate", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert message in response.json()["error"]["message"]


def test_unknown_paths_and_methods(client):
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Not Found"
    wrong = client.get("/v1/generate")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


def test_serve_limits_are_validated():
    with pytest.raises(ConfigError, match="`max_streams`"):
        ServeLimits(max_streams=0)


def test_a_stream_gives_back_its_slot_before_its_end_is_sent(tiny_run):
    # One slot: each request is sent as soon as the previous stream's [DONE] has been read, so
    # the slot must be free by then, whoever runs first on the server.
    with running_server(tiny_run, ServeLimits(max_streams=1)) as server:
        with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
            for seed in range(20):
                body = {"prompt": "Pip", "max_new_chars": 5, "seed": seed, "stream": True}
                with client.stream("POST", "/v1/generate", json=body) as response:
                    assert response.status_code == 200
                    assert list(response.iter_lines())[-2:] == ["data: [DONE]", ""]


def test_too_many_streams_then_a_disconnect_frees_a_slot(tiny_run):
    limits = ServeLimits(max_streams=2, max_new_chars=5000)
    # The engine is held at its first step: both streams are under way, however fast the machine.
    with running_server(tiny_run, limits) as server, gated(server.service.engine) as gate:
        service = server.service
        body = {"prompt": "Pip", "max_new_chars": 5000, "stream": True}
        with (
            httpx.Client(base_url=server.url, timeout=DEADLINE) as a,
            httpx.Client(base_url=server.url, timeout=DEADLINE) as b,
        ):
            with a.stream("POST", "/v1/generate", json=body) as first, b.stream("POST", "/v1/generate", json=body):
                lines = first.iter_lines()  # kept: a dropped iterator would close the connection
                assert next(lines).startswith("data: ")
                refused = httpx.post(server.url + "/v1/generate", json={"prompt": "Pip", "max_new_chars": 5},
                                     timeout=DEADLINE)  # fmt: skip
                assert refused.status_code == 429
                assert "max_streams limit is 2" in refused.json()["error"]["message"]
                assert refused.headers["retry-after"] == "1"
                # Two more steps: the second stream joins the batch (the engine holds again after).
                gate.allow(2)
                wait_until(lambda: service.engine.active_rows == 2, message="both streams' rows in the batch")
            # Both clients hung up mid-stream: their slots are free and their rows gone.
            wait_until(lambda: not service.jobs, message="slots to be given back")
            gate.open()
            wait_until(lambda: service.engine.active_rows == 0, message="rows to leave the batch")
        done = httpx.post(server.url + "/v1/generate", json={"prompt": "Pip", "max_new_chars": 5}, timeout=DEADLINE)
        assert done.status_code == 200


def test_a_non_streaming_client_that_hangs_up_frees_its_slot(tiny_run):
    # One step, then the engine holds: the request is under way until the client has hung up.
    with running_server(tiny_run, ServeLimits(max_new_chars=5000)) as server, gated(server.service.engine, 1) as gate:
        host, port = server.url.removeprefix("http://").split(":")
        body = json.dumps({"prompt": "Pip", "max_new_chars": 5000}).encode()
        request = (f"POST /v1/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(request)
            wait_until(lambda: server.service.engine.active_rows == 1, message="the request to start")
        wait_until(lambda: not server.service.jobs, message="the slot to be given back")
        gate.open()
        wait_until(lambda: server.service.engine.active_rows == 0, message="the row to leave the batch")


# --- the schema ----------------------------------------------------------------------------


def test_openapi_schema_states_the_limits(client, ckpt):
    schema = client.get("/openapi.json").json()
    generate = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert generate["prompt"]["maxLength"] == 64
    assert generate["max_new_chars"]["maximum"] == 300
    assert generate["num_samples"]["maximum"] == 4
    assert set(schema["paths"]) == {"/healthz", "/v1/model", "/v1/generate", "/v1/completions"}
    responses = schema["paths"]["/v1/generate"]["post"]["responses"]
    assert {"200", "400", "422", "429"} <= set(responses)
    assert "text/event-stream" in responses["200"]["content"]


def test_schemathesis_finds_no_server_errors(server, tmp_path):
    """Every check schemathesis has, against the live server; a fixed seed keeps it reproducible."""
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", server.url + "/openapi.json",
               "--checks", "all", "--max-examples", "25", "--seed", "1", "--generation-database", "none",
               "--workers", "1", "--no-color", "--request-timeout", str(DEADLINE)]  # fmt: skip
    hooks = Path(__file__).with_name("schemathesis_hooks.py")  # what the schema cannot say: fields compared
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, SCHEMATHESIS_HOOKS=str(hooks)))  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout


# --- the command line -----------------------------------------------------------------------


def test_cli_serve_defaults_to_loopback():
    args = build_parser().parse_args(["serve", "run"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)


def test_cli_serve_broken_checkpoint(capsys, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "checkpoint.json").write_text("{not json")
    assert main(["serve", str(tmp_path / "broken"), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("charnn: error: ") and "corrupt" in err[0]


def test_cli_serve_bad_limit(capsys, tiny_run):
    assert main(["serve", str(tiny_run), "--max-streams", "0"]) == 2
    assert "--max-streams must be at least 1" in capsys.readouterr().err


def test_cli_serve_end_to_end(tiny_run):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    limits = ["--max-new-chars", "50", "--max-prompt-chars", "10", "--max-num-samples", "2", "--max-streams", "3"]
    # Port 0: the system picks a free port and uvicorn says which (a port found free beforehand
    # could be taken by another process before the server binds it).
    command = [sys.executable, "-m", "charnn", "serve", str(tiny_run), "--port", "0", "--threads", "1", *limits]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, announced = [], threading.Event()

    def read_output():
        for line in process.stdout:
            lines.append(line)
            if "Uvicorn running on" in line:
                announced.set()
        announced.set()  # the output ended: the server is gone

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        announced.wait(DEADLINE)
        started = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", "".join(lines))
        assert started, "".join(lines)  # on loopback, the default
        url = started[1]
        assert httpx.get(url + "/healthz", timeout=DEADLINE).status_code == 200
        limits = httpx.get(url + "/v1/model", timeout=DEADLINE).json()["limits"]
        assert limits == {"max_prompt_chars": 10, "max_new_chars": 50, "max_num_samples": 2, "max_streams": 3}
        body = {"prompt": "Pip", "max_new_chars": 50, "seed": 1}
        served = httpx.post(url + "/v1/generate", json=body, timeout=DEADLINE).json()
        assert len(served["samples"][0]) == 50
    finally:
        process.terminate()
        process.wait(timeout=DEADLINE)
        reader.join(DEADLINE)
