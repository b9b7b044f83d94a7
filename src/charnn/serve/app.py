"""The server's app: routes, error mapping and streaming over one loaded model, served by uvicorn.

`create_app(checkpoint, limits)` builds the app; `serve(...)` runs it. Every request goes
through one `engine.Engine`, which advances all concurrent requests together as a batch; the
bodies are in `schemas`.

- `POST /v1/generate`: `{prompt, max_new_chars, temperature, top_k, top_p, seed, num_samples,
  stop, stream}` -> `{samples, finish_reason, finish_reasons, seed, model}`; with `"stream": true`,
  server-sent events `{"text", "sample"}`, then `finish_reason`s, then `[DONE]`.
- `POST /v1/completions`: the OpenAI completions API, counting characters as tokens, with
  `logprobs` (scored by the plain model in fp32 as the text is delivered), `echo` and `best_of`.
- `GET /v1/model`, `GET /healthz`, and the page at `/`.

Mistakes come back as a 4xx with `{"error": {"field", "message", "type"}}`.

    app = create_app("runs/ge", ServeLimits(max_streams=16))
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

import asyncio
import dataclasses
import functools
import json
import math
import sys
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from charnn.config import SampleConfig, ServeLimits
from charnn.errors import ConfigError
from charnn.generation import rank_samples
from charnn.run_folder import load_checkpoint
from charnn.sample import new_seed
from charnn.scoring.score import ContinuationScorer, PieceScores
from charnn.serve.engine import Engine, Job, JobDone, JobEvent, JobFailed, Request, SampleFinished, SampleText
from charnn.serve.schemas import (
    COMPLETION_EVENTS,
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    ERRORS,
    GENERATE_EVENTS,
    MAX_TEMPERATURE,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    GenerateResponse,
    Usage,
    request_models,
)

# The server limit (a ServeLimits field) each request field is checked against, named in its error.
LIMITS = {
    "prompt": "max_prompt_chars",
    "max_new_chars": "max_new_chars",
    "max_tokens": "max_new_chars",
    "num_samples": "max_num_samples",
    "n": "max_num_samples",
    "best_of": "max_num_samples",
}

# OpenAI completions fields this server accepts only with their neutral values.
UNSUPPORTED = {
    "frequency_penalty": "leave it out or send 0",
    "presence_penalty": "leave it out or send 0",
    "logit_bias": "leave it out or send {}",
    "suffix": "leave it out or send null",
}


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
    if field in LIMITS and kind in ("less_than_equal", "string_too_long"):
        message += f" (the server's {LIMITS[field]} limit)"
    return _error(422, field, message)


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
        # Scoring (logprobs, best_of) runs the plain model in fp32 here, one pass at a time, off the
        # event loop and beside the engine thread; requests that ask for neither never touch it.
        self.scoring = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charnn-scoring")
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
        # The one check of the prompt's characters (the schema's pattern only documents them):
        # a 400 that names each one, before a slot is taken; the engine trusts its Request.
        unknown = self.checkpoint.vocab.unknown(prompt)
        if unknown:
            shown = ", ".join(repr(c) for c in unknown)
            raise ApiError(400, "prompt", f"prompt has characters the model does not know: {shown}")
        if len(self.jobs) >= self.limits.max_streams:
            raise ApiError(
                429,
                None,
                f"too many generation requests in flight (the server's max_streams limit is "
                f"{self.limits.max_streams}); try again shortly",
                "rate_limit_error",
            )
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        job = self.engine.submit(Request(prompt, max_new_chars, sampling, num_samples, seed, stops))
        self.jobs.add(job)
        return job

    async def run_scoring(self, function, *args, **kwargs):
        """`function(*args, **kwargs)` on the scoring thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.scoring, functools.partial(function, *args, **kwargs))

    def finish(self, job: Job) -> None:
        """Give back a job's slot and stop its rows at the next step (a finished job has none)."""
        job.cancel()
        self.jobs.discard(job)


# --- streaming -----------------------------------------------------------------------------


async def _events(job: Job, service: "Service | None" = None) -> AsyncIterator[list[JobEvent]]:
    """The job's events, a batch at a time: whatever has arrived since the last batch.

    With `service`, the job's slot is given back before its last batch is handed on: a client
    that has read the end of its stream may send its next request at once and find the slot free.
    """
    while True:
        batch = [await job.queue.get()]
        while not job.queue.empty():
            batch.append(job.queue.get_nowait())
        last = isinstance(batch[-1], JobDone | JobFailed)
        if last and service is not None:
            service.finish(job)
        yield batch
        if last:
            return


def _coalesced(batch: list[JobEvent]) -> list[JobEvent]:
    """Join the text of each sample within a batch, so a slow reader gets fewer, longer events."""
    out: list[JobEvent] = []
    pending: dict[int, str] = {}
    for event in batch:
        if isinstance(event, SampleText):
            pending[event.sample] = pending.get(event.sample, "") + event.text
            continue
        if isinstance(event, SampleFinished) and event.sample in pending:
            out.append(SampleText(event.sample, pending.pop(event.sample)))
        out.append(event)
    # Text that arrived after everything else in the batch (no finish or done followed it).
    tail = [SampleText(k, t) for k, t in pending.items()]
    if out and isinstance(out[-1], JobDone | JobFailed):
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
                if isinstance(event, SampleText):
                    texts[event.sample].append(event.text)
                elif isinstance(event, SampleFinished):
                    reasons[event.sample] = event.reason
                elif isinstance(event, JobFailed):
                    raise _Failed(event.message)
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


def create_app(checkpoint_path: str | Path, *, limits: ServeLimits = ServeLimits()) -> FastAPI:
    """The app for one checkpoint; raises CheckpointError for a broken one."""
    service = Service(Path(checkpoint_path), limits)
    GenerateRequest, CompletionRequest = request_models(limits, service.checkpoint.vocab.characters)
    page = (files("charnn.serve") / "static" / "index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.engine.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            service.engine.stop()
            service.scoring.shutdown(wait=False, cancel_futures=True)

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
            return _EventStream(_generate_stream(job, seed, service), service, job)
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
        if body.best_of is not None:
            if body.best_of < n:
                raise ApiError(422, "best_of", f"best_of must be at least n ({n}), got {body.best_of}")
            if body.stream and body.best_of > 1:
                message = "best_of cannot be used with stream: the best samples are known only when all are drawn"
                raise ApiError(422, "best_of", message)
        drawn = body.best_of or n  # samples to draw; the n best are returned
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        seed = body.seed if body.seed is not None else new_seed()
        job = service.start(body.prompt, max_tokens, sampling, drawn, seed, body.stop)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = service.name
        echo = body.prompt if body.echo else ""
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            stream = _completion_stream(job, head, n, echo, usage, service, body.logprobs)
            return _EventStream(stream, service, job)
        result = await _finish(service, job, http, drawn)
        if isinstance(result, Response):
            return result
        texts, reasons = result
        chosen = list(range(n))
        if drawn > 1 and body.best_of is not None:  # as `charnn generate --best-of` ranks them
            model, vocab = service.checkpoint.model, service.checkpoint.vocab
            chosen = (await service.run_scoring(rank_samples, model, vocab, body.prompt, texts)).order[:n]
        logprobs: list[CompletionLogprobs | None] = [None] * n
        if body.logprobs is not None:
            picked = [texts[i] for i in chosen]
            logprobs = await service.run_scoring(
                _choices_logprobs, service, body.prompt, picked, bool(echo), body.logprobs
            )
        choices = [
            CompletionChoice(text=echo + texts[i], index=k, finish_reason=reasons[i], logprobs=logprobs[k])
            for k, i in enumerate(chosen)
        ]
        # Every sample drawn counts, as OpenAI counts best_of's.
        prompt, generated = len(body.prompt), sum(len(t) for t in texts)
        usage = Usage(prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated)
        return Completion(**head, choices=choices, usage=usage)

    return app


async def _generate_stream(job: Job, seed: int, service: Service) -> AsyncIterator[str]:
    reasons, model = ["length"] * job.request.num_samples, service.name
    async for batch in _events(job, service):
        chunk = []
        for event in _coalesced(batch):
            if isinstance(event, SampleText):
                chunk.append(_sse({"text": event.text, "sample": event.sample}))
            elif isinstance(event, SampleFinished):
                reasons[event.sample] = event.reason
                chunk.append(_sse({"text": "", "sample": event.sample, "finish_reason": event.reason}))
            elif isinstance(event, JobDone):
                summary = {"finish_reason": _overall(reasons), "finish_reasons": reasons, "seed": seed, "model": model}
                chunk += [_sse(summary), _sse("[DONE]")]
            else:
                chunk.append(_sse({"error": {"field": None, "message": event.message, "type": "server_error"}}))
        yield "".join(chunk)


async def _completion_stream(
    job: Job, head: dict, n: int, echo: str, include_usage: bool, service: Service, logprobs: int | None
) -> AsyncIterator[str]:
    def chunk(index: int, text: str, reason: str | None, scores: dict | None = None) -> str:
        choice = {"text": text, "index": index, "logprobs": scores, "finish_reason": reason}
        return _sse({**head, "choices": [choice]})

    generated, prompt = 0, job.request.prompt
    scorers: list[_ChoiceScorer] = []
    prompt_scores: dict | None = None
    if logprobs is not None:
        prompt_scores, scorers = await service.run_scoring(_start_scoring, service, prompt, bool(echo), logprobs, n)
    if echo:
        yield "".join(chunk(k, echo, None, prompt_scores) for k in range(n))
    async for batch in _events(job, service):
        events = _coalesced(batch)
        scores: list[dict] = []
        if scorers:  # every sample's new text of this batch in one call to the scoring thread
            pieces = [(scorers[e.sample], e.text) for e in events if isinstance(e, SampleText)]
            scores = await service.run_scoring(_feed_all, pieces)
        out = []
        for event in events:
            if isinstance(event, SampleText):
                generated += len(event.text)
                out.append(chunk(event.sample, event.text, None, scores.pop(0) if scores else None))
            elif isinstance(event, SampleFinished):
                out.append(chunk(event.sample, "", event.reason))
            elif isinstance(event, JobDone):
                if include_usage:
                    usage = {"prompt_tokens": len(prompt), "completion_tokens": generated}
                    usage["total_tokens"] = len(prompt) + generated
                    out.append(_sse({**head, "choices": [], "usage": usage}))
                out.append(_sse("[DONE]"))
            else:
                out.append(_sse({"error": {"field": None, "message": event.message, "type": "server_error"}}))
        yield "".join(out)


# --- log-probabilities (on the scoring thread) -----------------------------------------------


def _logprobs_object(text: str, scores: PieceScores, offset: int, *, unscored_first: bool = False) -> dict:
    """OpenAI's legacy logprobs object for `text` at `offset`; with `unscored_first`, its first character
    has nothing before it (an echoed prompt's) and gets nulls, as OpenAI gives it."""
    head = [None] if unscored_first else []
    return {
        "tokens": list(text),
        "token_logprobs": head + scores.logprobs,
        "top_logprobs": head + [dict(alternatives) for alternatives in scores.alternatives],
        "text_offset": list(range(offset, offset + len(text))),
    }


class _ChoiceScorer:
    """One choice's log-probabilities, piece by piece as its text is delivered. Offsets count through
    the prompt and then the completion, echoed or not, as OpenAI counts them."""

    def __init__(self, scorer: ContinuationScorer, offset: int):
        self.scorer, self.offset = scorer, offset

    def feed(self, text: str) -> dict:
        scores = _logprobs_object(text, self.scorer.feed(text), self.offset)
        self.offset += len(text)
        return scores


def _start_scoring(service: Service, prompt: str, echo: bool, top_k: int, count: int):
    """(the prompt's logprobs object with echo, else None; a scorer per choice that goes on after the prompt)."""
    model, vocab = service.checkpoint.model, service.checkpoint.vocab
    if echo:
        scorer = ContinuationScorer(model, vocab, prompt[:1], top_k=top_k)
        prompt_scores = _logprobs_object(prompt, scorer.feed(prompt[1:]), 0, unscored_first=True)
    else:
        scorer, prompt_scores = ContinuationScorer(model, vocab, prompt, top_k=top_k), None
    return prompt_scores, [_ChoiceScorer(scorer.fork(), len(prompt)) for _ in range(count)]


def _feed_all(pieces: list[tuple[_ChoiceScorer, str]]) -> list[dict]:
    return [scorer.feed(text) for scorer, text in pieces]


def _choices_logprobs(service: Service, prompt: str, texts: list[str], echo: bool, top_k: int):
    """Each whole choice's logprobs object (the echoed prompt's first), for a non-streamed answer."""
    prompt_scores, scorers = _start_scoring(service, prompt, echo, top_k, len(texts))
    objects = []
    for scorer, text in zip(scorers, texts, strict=True):
        scores = scorer.feed(text)
        if prompt_scores is not None:
            scores = {key: prompt_scores[key] + values for key, values in scores.items()}
        objects.append(CompletionLogprobs(**scores))
    return objects


def serve(
    checkpoint_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits = ServeLimits(),
    threads: int | None = None,
) -> None:
    """Load the checkpoint and serve until interrupted."""
    import uvicorn

    if threads is not None and threads < 1:
        raise ConfigError(f"`threads` must be at least 1, got {threads}")
    if threads is not None:
        torch.set_num_threads(threads)
    # The engine thread takes the GIL back after every tensor operation; with Python's default
    # 5 ms switch interval a busy event loop can hold it off for that long each time.
    sys.setswitchinterval(0.0005)
    app = create_app(checkpoint_path, limits=limits)
    uvicorn.run(app, host=host, port=port, log_level="info")
