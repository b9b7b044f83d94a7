"""`POST /v1/generate`: charnn's own API, several samples of one prompt with their seed.

`{prompt, max_new_chars, temperature, top_k, top_p, seed, num_samples, stop, stream, ban, allow}` ->
`{samples, finish_reason, finish_reasons, seed, model}`; with `"stream": true`, server-sent
events `{"text", "sample"}`, then each sample's `finish_reason`, then a summary, then `[DONE]`.
"""

from typing import Any

from fastapi import Request as HttpRequest

from charnn.sample import new_seed
from charnn.serve.engine import JobDone, JobEvent, SampleFinished, SampleText
from charnn.serve.events import Shape, as_sse, respond
from charnn.serve.schemas import GenerateResponse
from charnn.serve.service import Service


async def generate_response(service: Service, body: Any, http: HttpRequest):
    """The response to a `GenerateRequest`."""
    sampling = service.sampling(body.temperature, body.top_k, body.top_p, body)
    seed = body.seed if body.seed is not None else new_seed()
    job = service.start(body.prompt, body.max_new_chars, sampling, body.num_samples, seed, body.stop)
    return await respond(service, job, http, body.stream, _Generation(body.num_samples, seed, service.name))


def _overall(reasons: list[str]) -> str:
    return "length" if "length" in reasons else "stop"


class _Generation(Shape):
    def __init__(self, num_samples: int, seed: int, model: str):
        self.reasons, self.seed, self.model = ["length"] * num_samples, seed, model

    async def batch(self, events: list[JobEvent]) -> str:
        out = []
        for event in events:
            if isinstance(event, SampleText):
                out.append(as_sse({"text": event.text, "sample": event.sample}))
            elif isinstance(event, SampleFinished):
                self.reasons[event.sample] = event.reason
                out.append(as_sse({"text": "", "sample": event.sample, "finish_reason": event.reason}))
            elif isinstance(event, JobDone):
                reasons = self.reasons
                summary = {"finish_reason": _overall(reasons), "finish_reasons": reasons, "seed": self.seed}
                out += [as_sse({**summary, "model": self.model}), as_sse("[DONE]")]
        return "".join(out)

    async def answer(self, texts: list[str], reasons: list[str]) -> GenerateResponse:
        return GenerateResponse(
            samples=texts, finish_reason=_overall(reasons), finish_reasons=reasons, seed=self.seed, model=self.model
        )
