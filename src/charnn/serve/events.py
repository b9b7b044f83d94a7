"""A job's events on their way to the client, shared by both generation routes.

`respond(service, job, http, stream, shape)` answers a request whose job has started: as
server-sent events (`EventStream`) or, collected whole, as one JSON body; a client that goes
away cancels the job, a failed generation ends the response with an error, and the job's slot
is given back however the response ends. What each route says is its `Shape`.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request as HttpRequest
from fastapi.responses import Response, StreamingResponse

from charnn.serve.engine import Job, JobDone, JobEvent, JobFailed, SampleFinished, SampleText
from charnn.serve.errors import error_body, error_response
from charnn.serve.service import Service


class Shape:
    """What one route says about its job: a stream's events, or the body of a response not streamed."""

    async def opening(self) -> str:
        """The server-sent events a stream starts with, before the job's first ("" for none)."""
        return ""

    async def batch(self, events: list[JobEvent]) -> str:
        """The server-sent events for a batch of the job's events (coalesced; never a failure)."""
        raise NotImplementedError

    async def answer(self, texts: list[str], reasons: list[str]) -> Any:
        """The body of a response that is not streamed: each sample's text and finish reason."""
        raise NotImplementedError


async def respond(service: Service, job: Job, http: HttpRequest, stream: bool, shape: Shape) -> Any:
    """The response to a request whose job has started, streamed or not. Without streaming: 500 when
    generation failed, 499 when the client went away first."""
    if stream:
        return EventStream(_stream(service, job, shape), service, job)
    try:
        result = await _collect(job, http)
    except _Failed as error:
        return error_response(500, None, str(error), "server_error")
    finally:
        service.finish(job)
    if result is None:
        return Response(status_code=499)
    return await shape.answer(*result)


async def _stream(service: Service, job: Job, shape: Shape) -> AsyncIterator[str]:
    opening = await shape.opening()
    if opening:
        yield opening
    async for batch in job_events(job, service):
        events = texts_coalesced(batch)
        failure = events.pop() if isinstance(events[-1], JobFailed) else None
        text = await shape.batch(events)
        if failure is not None:
            text += as_sse(error_body(None, failure.message, "server_error"))
        yield text


async def job_events(job: Job, service: Service | None = None) -> AsyncIterator[list[JobEvent]]:
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


def texts_coalesced(batch: list[JobEvent]) -> list[JobEvent]:
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


async def _collect(job: Job, http: HttpRequest) -> tuple[list[str], list[str]] | None:
    """The whole result, each sample's (text, finish reason); None when the client went away first."""
    num_samples = job.request.num_samples

    async def gather():
        texts, reasons = [[] for _ in range(num_samples)], ["length"] * num_samples
        async for batch in job_events(job):
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


class EventStream(StreamingResponse):
    """Server-sent events that give back the job's slot however the response ends."""

    def __init__(self, content, service: Service, job: Job):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.service, self.job = service, job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.service.finish(self.job)


def as_sse(data: Any) -> str:
    """One server-sent event: a JSON value, or a bare string such as [DONE]."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"
