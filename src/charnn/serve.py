"""An HTTP API and a web page over one loaded model: FastAPI, served by uvicorn.

`create_app(checkpoint, limits)` builds the app; `serve(...)` runs it. Every request goes
through one `batching.Engine`, which advances all concurrent requests together as a batch.

- `POST /v1/generate`: `{prompt, max_new_chars, temperature, top_k, top_p, seed, num_samples,
  stop, stream}` -> `{samples, finish_reason, finish_reasons, seed, model}`; with `"stream": true`,
  server-sent events `{"text", "sample"}`, then `finish_reason`s, then `[DONE]`.
- `POST /v1/completions`: the OpenAI completions API, counting characters as tokens.
- `GET /v1/model`, `GET /healthz`, and the page at `/`.

Mistakes come back as a 4xx with `{"error": {"field", "message", "type"}}`.

    app = create_app("runs/ge", ServeLimits(max_streams=16))
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

import asyncio
import dataclasses
import json
import math
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException

from charnn.batching import Engine, Event, Job, Request
from charnn.config import SampleConfig, ServeLimits
from charnn.errors import ConfigError, UnknownCharactersError
from charnn.run_folder import load_checkpoint
from charnn.sample import new_seed

MAX_TEMPERATURE = 2.0
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 50
MAX_SEED = 2**53 - 1  # the largest integer a JavaScript client can send exactly
DEFAULT_NEW_CHARS = 200  # /v1/generate; /v1/completions keeps OpenAI's default of 16
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


LIMIT_FLAGS = {
    "prompt": "--max-prompt-chars",
    "max_new_chars": "--max-new-chars",
    "max_tokens": "--max-new-chars",
    "num_samples": "--max-num-samples",
    "n": "--max-num-samples",
}

# OpenAI completions fields this server accepts only with their neutral values.
UNSUPPORTED = {
    "frequency_penalty": "leave it out or send 0",
    "presence_penalty": "leave it out or send 0",
    "logit_bias": "leave it out or send {}",
    "logprobs": "leave it out or send null",
    "best_of": "leave it out or send 1",
    "suffix": "leave it out or send null",
}

# --- request and response bodies ---------------------------------------------------------


def _integral(value: Any) -> Any:
    # JSON Schema counts 41.0 as an integer; the models are otherwise strict (no "41", no true).
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _integer(**constraints):
    return Annotated[int, Field(**constraints), BeforeValidator(_integral)]


Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Stops = Stop | Annotated[list[Stop], Field(max_length=MAX_STOP_SEQUENCES)] | None
Seed = Annotated[_integer(ge=0, le=MAX_SEED) | None, Field(description="the same seed gives the same text")]
FinishReason = Literal["stop", "length"]


class ErrorDetail(BaseModel):
    field: str | None = Field(description="the request field at fault, when there is one")
    message: str
    type: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class GenerateResponse(BaseModel):
    samples: list[str] = Field(description="the new text of each sample, without the prompt")
    finish_reason: FinishReason = Field(description='"length" if any sample reached max_new_chars, else "stop"')
    finish_reasons: list[FinishReason]
    seed: int
    model: str


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: FinishReason


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


def _pattern(characters) -> str:
    """A regular expression (valid in JSON Schema and in Python) for text made of `characters`."""
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
    parts = []
    for c in characters:
        if c in named:
            parts.append(named[c])
        elif c in "\\]^-[":
            parts.append("\\" + c)
        elif ord(c) < 32 or ord(c) == 127:
            parts.append(f"\\u{ord(c):04x}")
        else:
            parts.append(c)
    return f"^[{''.join(parts)}]+$"


def _request_models(limits: ServeLimits, characters) -> tuple[type[BaseModel], type[BaseModel]]:
    """The two request bodies, with the server's limits and the model's characters in their schema."""
    # The pattern documents which characters a prompt may hold; the server checks them itself,
    # so that a mistake gets a 400 that names the unknown characters.
    Prompt = Annotated[
        str,
        Field(min_length=1, max_length=limits.max_prompt_chars, json_schema_extra={"pattern": _pattern(characters)}),
    ]
    Temperature = Annotated[float, Field(ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)]
    TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
    TopK = _integer(ge=1)
    Zero = Annotated[float, Field(ge=0, le=0)]

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        prompt: Prompt = Field(description="text to continue: characters the model knows")
        max_new_chars: _integer(ge=0, le=limits.max_new_chars) = min(DEFAULT_NEW_CHARS, limits.max_new_chars)
        temperature: Temperature = Field(0.8, description="0 is greedy; higher is more random")
        top_k: TopK | None = None
        top_p: TopP | None = None
        seed: Seed = None
        num_samples: _integer(ge=1, le=limits.max_num_samples) = 1
        stop: Stops = Field(None, description="end a sample before the first of these strings")
        stream: bool = Field(False, description="server-sent events as characters are produced")

    class CompletionRequest(BaseModel):
        """OpenAI's completions request; tokens are characters."""

        model_config = ConfigDict(extra="forbid", strict=True)
        model: str | None = Field(None, description="accepted and ignored: this server serves one model")
        prompt: Prompt
        max_tokens: _integer(ge=0, le=limits.max_new_chars) | None = COMPLETIONS_DEFAULT_MAX_TOKENS
        temperature: Temperature | None = 1.0
        top_p: TopP | None = 1.0
        top_k: TopK | None = Field(None, description="an extension to OpenAI's API")
        n: _integer(ge=1, le=limits.max_num_samples) | None = 1
        stop: Stops = None
        seed: Seed = None
        stream: bool | None = False
        stream_options: StreamOptions | None = None
        echo: bool | None = Field(False, description="put the prompt before each choice's text")
        user: str | None = Field(None, description="accepted and ignored")
        # Sent by some clients with their neutral values; anything else is not supported.
        frequency_penalty: Zero | None = Field(None, description="only 0 is supported")
        presence_penalty: Zero | None = Field(None, description="only 0 is supported")
        logit_bias: Annotated[dict[str, int], Field(max_length=0)] | None = Field(None, description="only {}")
        logprobs: None = Field(None, description="not supported")
        best_of: _integer(ge=1, le=1) | None = Field(None, description="only 1 is supported")
        suffix: None = Field(None, description="not supported")

    return GenerateRequest, CompletionRequest


# --- errors --------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, field: str | None, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.field, self.message, self.kind = status, field, message, kind


def _error(status: int, field: str | None, message: str, kind: str = "invalid_request_error", headers=None):
    body = {"error": {"field": field, "message": message, "type": kind}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_error(error: RequestValidationError) -> JSONResponse:
    errors = error.errors()
    first = errors[0]
    # A field with several types (stop: a string or a list) fails once per type; the error that
    # is not about the type is the one that says what is wrong.
    same_field = [e for e in errors if tuple(e.get("loc", ()))[:2] == tuple(first.get("loc", ()))[:2]]
    first = next((e for e in same_field if not e.get("type", "").endswith("_type")), first)
    loc = [str(part) for part in first.get("loc", ())]
    if loc[:1] == ["body"]:
        loc = loc[1:]
    field = loc[0] if loc else "body"
    kind = first.get("type", "")
    if kind == "missing" and not loc:
        message = "the request needs a JSON object body"
    elif kind == "json_invalid":
        field, message = "body", f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
    elif kind == "extra_forbidden":
        message = f"unknown field {field!r}"
    else:
        message = f"{field}: {first.get('msg', 'invalid value')}"
        if kind.startswith(("value_error",)):
            message = f"{field} {first.get('msg', '').removeprefix('Value error, ')}"
    if field in UNSUPPORTED:
        message = f"{field} is not supported by this server: {UNSUPPORTED[field]}"
    if field in LIMIT_FLAGS and kind in ("less_than_equal", "string_too_long"):
        message += f" (a server limit, set by {LIMIT_FLAGS[field]})"
    return _error(422, field, message)


ERRORS = {
    400: {"model": ErrorBody, "description": "characters the model does not know"},
    422: {"model": ErrorBody, "description": "a field that is missing, of the wrong type or out of range"},
    429: {"model": ErrorBody, "description": "too many generation requests in flight (--max-streams)"},
}


def _events_schema(*data: dict) -> dict:
    """A text/event-stream response: each event's data is one of these JSON objects, or [DONE]."""
    json_data = {"contentMediaType": "application/json", "contentSchema": {"anyOf": list(data)}}
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {"event": {"type": "string"}, "data": {"anyOf": [{"const": "[DONE]"}, json_data]}},
    }
    return {"text/event-stream": {"itemSchema": event}}


_REASON = {"enum": ["stop", "length"]}
_ERROR_EVENT = {"type": "object", "required": ["error"], "properties": {"error": {"type": "object"}}}
GENERATE_EVENTS = _events_schema(
    {
        "type": "object",
        "description": "new characters of one sample; its last event has finish_reason",
        "required": ["text", "sample"],
        "properties": {
            "text": {"type": "string"},
            "sample": {"type": "integer", "minimum": 0},
            "finish_reason": _REASON,
        },
    },
    {
        "type": "object",
        "description": "the last event before [DONE]",
        "required": ["finish_reason", "finish_reasons", "seed", "model"],
        "properties": {
            "finish_reason": _REASON,
            "finish_reasons": {"type": "array", "items": _REASON},
            "seed": {"type": "integer"},
            "model": {"type": "string"},
        },
    },
    _ERROR_EVENT,
)
_CHOICE = {
    "type": "object",
    "required": ["text", "index", "finish_reason"],
    "properties": {
        "text": {"type": "string"},
        "index": {"type": "integer", "minimum": 0},
        "logprobs": {"type": "null"},
        "finish_reason": {"anyOf": [_REASON, {"type": "null"}]},
    },
}
COMPLETION_EVENTS = _events_schema(
    {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "text_completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": _CHOICE},
            "usage": {"type": "object"},
        },
    },
    _ERROR_EVENT,
)


# --- the model as the server sees it ------------------------------------------------------


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a training record that holds one reports null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _model_name(path: Path) -> str:
    return "/".join(part for part in (path.parent.name, path.name) if part)


class Service:
    """The loaded model, its engine, and the count of generation requests in flight."""

    def __init__(self, checkpoint_path: Path, limits: ServeLimits):
        self.checkpoint = load_checkpoint(checkpoint_path)
        self.limits = limits
        self.name = _model_name(self.checkpoint.path)
        self.engine = Engine(self.checkpoint.model, self.checkpoint.vocab)
        self.jobs: set[Job] = set()  # generation requests in flight, each holding a slot
        model = self.checkpoint.model
        self.info = _finite(
            {
                "name": self.name,
                "checkpoint": str(self.checkpoint.path),
                "parameters": model.num_parameters(),
                "layers": [{"layer": n, "output_shape": s, "parameters": p} for n, s, p in model.summary()],
                "config": self.checkpoint.config.to_dict(),
                "vocabulary": self.checkpoint.vocab.to_json(),
                "training": self.checkpoint.training,
                "corpus": self.checkpoint.corpus,
                "limits": dataclasses.asdict(limits),
                "max_temperature": MAX_TEMPERATURE,
            }
        )

    def start(self, prompt: str, max_new_chars: int, sampling: SampleConfig, num_samples: int, seed, stop) -> Job:
        """Validate what the schema cannot, take a slot, and hand the request to the engine."""
        unknown = self.checkpoint.vocab.unknown(prompt)
        if unknown:
            shown = ", ".join(repr(c) for c in unknown)
            raise ApiError(400, "prompt", f"prompt has characters the model does not know: {shown}")
        if len(self.jobs) >= self.limits.max_streams:
            raise ApiError(
                429,
                None,
                f"too many generation requests in flight (the limit is {self.limits.max_streams}, "
                "set by --max-streams); try again shortly",
                "rate_limit_error",
            )
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        request = Request(prompt, max_new_chars, sampling, num_samples, seed, stops)
        try:
            job = self.engine.submit(request)
        except UnknownCharactersError as error:  # checked above; kept for safety
            raise ApiError(400, "prompt", str(error)) from None
        self.jobs.add(job)
        return job

    def finish(self, job: Job) -> None:
        """Give back a job's slot and stop its rows at the next step (a finished job has none)."""
        job.cancel()
        self.jobs.discard(job)


async def _events(job: Job) -> AsyncIterator[list[Event]]:
    """The job's events, a batch at a time: whatever has arrived since the last batch."""
    while True:
        batch = [await job.queue.get()]
        while not job.queue.empty():
            batch.append(job.queue.get_nowait())
        yield batch
        if batch[-1].kind in ("done", "error"):
            return


def _coalesced(batch: list[Event]) -> list[Event]:
    """Join the text of each sample within a batch, so a slow reader gets fewer, longer events."""
    out: list[Event] = []
    pending: dict[int, str] = {}
    for event in batch:
        if event.kind == "text":
            pending[event.sample] = pending.get(event.sample, "") + event.text
            continue
        if event.kind == "finish" and event.sample in pending:
            out.append(Event("text", event.sample, pending.pop(event.sample)))
        out.append(event)
    # Text that arrived after everything else in the batch (no finish or done followed it).
    tail = [Event("text", k, t) for k, t in pending.items()]
    if out and out[-1].kind in ("done", "error"):
        return out[:-1] + tail + out[-1:]
    return out + tail


class _Failed(Exception):
    pass


async def _finish(service, job: Job, http: HttpRequest, num_samples: int):
    """A non-streaming request's (texts, finish reasons), or the Response that ends it instead:
    500 when generation failed, 499 when the client went away. The job's slot is freed either way."""
    try:
        result = await _collect(job, http, num_samples)
    except _Failed as error:
        return _error(500, None, str(error), "server_error")
    finally:
        service.finish(job)
    if result is None:
        return Response(status_code=499)
    return result


async def _collect(job: Job, http: HttpRequest, num_samples: int) -> tuple[list[str], list[str]] | None:
    """The whole result; None when the client went away first."""

    async def gather():
        texts, reasons = [[] for _ in range(num_samples)], ["length"] * num_samples
        async for batch in _events(job):
            for event in batch:
                if event.kind == "text":
                    texts[event.sample].append(event.text)
                elif event.kind == "finish":
                    reasons[event.sample] = event.text
                elif event.kind == "error":
                    raise _Failed(event.text)
        return ["".join(t) for t in texts], reasons

    async def disconnected():
        while (await http.receive())["type"] != "http.disconnect":
            pass

    result, watch = asyncio.ensure_future(gather()), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({result, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not result.done():
            result.cancel()
    return result.result() if result.done() and not result.cancelled() else None


class _EventStream(StreamingResponse):
    """Server-sent events that give back the job's slot however the response ends."""

    def __init__(self, content, service: Service, job: Job):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.service, self.job = service, job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.service.finish(self.job)


def _sse(data: Any) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"


def _overall(reasons: list[str]) -> str:
    return "length" if "length" in reasons else "stop"


# --- the app -------------------------------------------------------------------------------


def create_app(checkpoint_path: str | Path, limits: ServeLimits = ServeLimits()) -> FastAPI:
    """The app for one checkpoint; raises CheckpointError for a broken one."""
    service = Service(Path(checkpoint_path), limits)
    GenerateRequest, CompletionRequest = _request_models(limits, service.checkpoint.vocab.characters)
    page = (files("charnn") / "static" / "index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.engine.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            service.engine.stop()

    app = FastAPI(
        title="charnn",
        summary="Generate text with a character-level recurrent language model.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        headers = {"Retry-After": "1"} if error.status == 429 else None
        return _error(error.status, error.field, error.message, error.kind, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error: RequestValidationError):
        return _validation_error(error)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        kind = "not_found" if error.status_code == 404 else "http"
        return _error(error.status_code, None, str(error.detail), kind, getattr(error, "headers", None))

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", summary="Liveness and load")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": service.name,
            "in_flight": len(service.jobs),
            "max_streams": limits.max_streams,
            "active_rows": service.engine.active_rows,
        }

    @app.get("/v1/model", summary="The model: vocabulary, configuration, training record, limits")
    async def model_info() -> dict[str, Any]:
        return service.info

    @app.post(
        "/v1/generate",
        summary="Generate text from a prompt",
        response_model=GenerateResponse,
        responses={200: {"content": GENERATE_EVENTS}, **ERRORS},
    )
    async def generate(body: GenerateRequest, http: HttpRequest):
        sampling = SampleConfig(body.temperature, body.top_k, body.top_p)
        seed = body.seed if body.seed is not None else new_seed()
        job = service.start(body.prompt, body.max_new_chars, sampling, body.num_samples, seed, body.stop)
        if body.stream:
            return _EventStream(_generate_stream(job, seed, service.name), service, job)
        result = await _finish(service, job, http, body.num_samples)
        if isinstance(result, Response):
            return result
        samples, reasons = result
        return GenerateResponse(
            samples=samples, finish_reason=_overall(reasons), finish_reasons=reasons, seed=seed, model=service.name
        )

    @app.post(
        "/v1/completions",
        summary="OpenAI-compatible completions (tokens are characters)",
        response_model=Completion,
        responses={200: {"content": COMPLETION_EVENTS}, **ERRORS},
    )
    async def completions(body: CompletionRequest, http: HttpRequest):
        temperature = 1.0 if body.temperature is None else body.temperature
        sampling = SampleConfig(temperature, body.top_k, body.top_p)
        n = body.n or 1
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        seed = body.seed if body.seed is not None else new_seed()
        job = service.start(body.prompt, max_tokens, sampling, n, seed, body.stop)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = service.name
        echo = body.prompt if body.echo else ""
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return _EventStream(_completion_stream(job, head, n, echo, usage), service, job)
        result = await _finish(service, job, http, n)
        if isinstance(result, Response):
            return result
        texts, reasons = result
        choices = [
            CompletionChoice(text=echo + t, index=k, finish_reason=r)
            for k, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ]
        prompt, generated = len(body.prompt), sum(len(t) for t in texts)
        usage = Usage(prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated)
        return Completion(**head, choices=choices, usage=usage)

    return app


async def _generate_stream(job: Job, seed: int, model: str) -> AsyncIterator[str]:
    reasons = ["length"] * job.request.num_samples
    async for batch in _events(job):
        chunk = []
        for event in _coalesced(batch):
            if event.kind == "text":
                chunk.append(_sse({"text": event.text, "sample": event.sample}))
            elif event.kind == "finish":
                reasons[event.sample] = event.text
                chunk.append(_sse({"text": "", "sample": event.sample, "finish_reason": event.text}))
            elif event.kind == "done":
                summary = {"finish_reason": _overall(reasons), "finish_reasons": reasons, "seed": seed, "model": model}
                chunk += [_sse(summary), _sse("[DONE]")]
            else:
                chunk.append(_sse({"error": {"field": None, "message": event.text, "type": "server_error"}}))
        yield "".join(chunk)


async def _completion_stream(job: Job, head: dict, n: int, echo: str, include_usage: bool) -> AsyncIterator[str]:
    def chunk(index: int, text: str, reason: str | None) -> str:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": reason}
        return _sse({**head, "choices": [choice]})

    generated = 0
    if echo:
        yield "".join(chunk(k, echo, None) for k in range(n))
    async for batch in _events(job):
        out = []
        for event in _coalesced(batch):
            if event.kind == "text":
                generated += len(event.text)
                out.append(chunk(event.sample, event.text, None))
            elif event.kind == "finish":
                out.append(chunk(event.sample, "", event.text))
            elif event.kind == "done":
                if include_usage:
                    prompt = len(job.request.prompt)
                    usage = {"prompt_tokens": prompt, "completion_tokens": generated}
                    usage["total_tokens"] = prompt + generated
                    out.append(_sse({**head, "choices": [], "usage": usage}))
                out.append(_sse("[DONE]"))
            else:
                out.append(_sse({"error": {"field": None, "message": event.text, "type": "server_error"}}))
        yield "".join(out)


def serve(
    checkpoint_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits = ServeLimits(),
    threads: int | None = None,
) -> None:
    """Load the checkpoint and serve until interrupted."""
    import uvicorn

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    if threads is not None:
        torch.set_num_threads(threads)
    # The engine thread takes the GIL back after every tensor operation; with Python's default
    # 5 ms switch interval a busy event loop can hold it off for that long each time.
    sys.setswitchinterval(0.0005)
    app = create_app(checkpoint_path, limits)
    uvicorn.run(app, host=host, port=port, log_level="info")
