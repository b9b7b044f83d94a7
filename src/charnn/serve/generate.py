"""`POST /v1/generate`: charnn's own API, several samples of one prompt with their seed.

`{prompt, max_new_chars, temperature, top_k, top_p, seed, num_samples, stop, stream, ban, allow, require,
within, beam, length_penalty, copies}` -> `{samples, finish_reason, finish_reasons, seed, model}`, with
`"copies": true` also each sample's copy report (what it copied from the model's training text); with
`"stream": true`, server-sent events `{"text", "sample"}`, then each sample's `finish_reason`, then a
summary, then `[DONE]`. With `beam`, the `num_samples` most likely continuations instead, with their
`logprobs` and `scores` and no seed, never streamed.
"""

from typing import Any

from fastapi import Request as HttpRequest

from charnn.sample import new_seed
from charnn.serve.engine import JobDone, JobEvent, SampleFinished, SampleText
from charnn.serve.events import Shape, as_sse, respond
from charnn.serve.schemas import GenerateResponse
from charnn.serve.service import Service, stops

NAMES = {"length": "max_new_chars"}  # the library's names for the request's fields, where they differ


async def generate_response(service: Service, body: Any, http: HttpRequest):
    """The response to a `GenerateRequest`."""
    service.check(NAMES, length=body.max_new_chars, num_samples=body.num_samples, stream=body.stream,
                  beam=body.beam, require=tuple(body.require or ()), within=body.within,
                  length_penalty=body.length_penalty, stop=stops(body.stop))  # fmt: skip
    sampling = service.sampling(body.temperature, body.top_k, body.top_p, body)
    index = await service.copy_index() if body.copies else None  # a 422 before generating, when there is none
    if body.beam is not None:
        return await _beam(service, body, sampling, index)
    seed = body.seed if body.seed is not None else new_seed()
    job = service.start(body.prompt, body.max_new_chars, sampling, body.num_samples, seed, body.stop, body.require,
                        body.within, NAMES)  # fmt: skip
    shape = _Generation(body.num_samples, seed, service, index)
    return await respond(service, job, http, body.stream, shape)


async def _beam(service: Service, body: Any, sampling, index) -> GenerateResponse:
    """The `num_samples` most likely continuations, with their log-probabilities and scores (no seed)."""
    found = await service.beam(body.prompt, body.max_new_chars, sampling, body.beam, body.stop, body.length_penalty)
    kept = found.continuations[: body.num_samples]
    shape = _Generation(len(kept), None, service, index)
    answer = await shape.answer([c.text for c in kept], [c.finish_reason for c in kept])
    return answer.model_copy(update={"logprobs": [c.logprob for c in kept], "scores": [c.score for c in kept]})


def _overall(reasons: list[str]) -> str:
    return "length" if "length" in reasons else "stop"


class _Generation(Shape):
    def __init__(self, num_samples: int, seed: int | None, service: Service, index=None):
        self.reasons, self.seed, self.service, self.model = ["length"] * num_samples, seed, service, service.name
        self.index = index  # the training text's CopyIndex, when copies were asked for
        self.texts: list[list[str]] = [[] for _ in range(num_samples)]  # streamed so far, for the copy report

    async def _copies(self, texts: list[str]) -> dict:
        if self.index is None:
            return {}
        reports = await self.service.run_scoring(lambda: [self.index.report(t).to_dict() for t in texts])
        return {"copies": reports}

    async def batch(self, events: list[JobEvent]) -> str:
        out = []
        for event in events:
            if isinstance(event, SampleText):
                self.texts[event.sample].append(event.text)
                out.append(as_sse({"text": event.text, "sample": event.sample}))
            elif isinstance(event, SampleFinished):
                self.reasons[event.sample] = event.reason
                out.append(as_sse({"text": "", "sample": event.sample, "finish_reason": event.reason}))
            elif isinstance(event, JobDone):
                reasons = self.reasons
                summary = {"finish_reason": _overall(reasons), "finish_reasons": reasons, "seed": self.seed}
                summary |= {"model": self.model, **await self._copies(["".join(t) for t in self.texts])}
                out += [as_sse(summary), as_sse("[DONE]")]
        return "".join(out)

    async def answer(self, texts: list[str], reasons: list[str]) -> GenerateResponse:
        return GenerateResponse(
            samples=texts,
            finish_reason=_overall(reasons),
            finish_reasons=reasons,
            seed=self.seed,
            model=self.model,
            **await self._copies(texts),
        )
