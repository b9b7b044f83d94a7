"""`POST /v1/completions`: OpenAI's completions API, counting characters as tokens.

Beyond sampling: `echo` (the prompt before each choice), `best_of` (draw that many and return the
`n` the model finds likeliest, as `charnn generate --best-of` ranks them) and `logprobs` (OpenAI's
legacy log-probabilities object, scored by the plain model in fp32 on the service's scoring thread
as the text is delivered). Fields OpenAI has and this server does not are in `schemas.UNSUPPORTED`.
Extensions, as `/v1/generate` has them: `ban`, `allow`, `require` and `within`, and `beam` with
`length_penalty` (the `n` most likely continuations, never streamed).
"""

import time
import uuid
from typing import Any

from fastapi import Request as HttpRequest

from charnn.generation import rank_samples
from charnn.sample import new_seed
from charnn.scoring.score import ContinuationScorer, PieceScores
from charnn.serve.engine import JobDone, JobEvent, SampleFinished, SampleText
from charnn.serve.errors import ApiError
from charnn.serve.events import Shape, as_sse, respond
from charnn.serve.schemas import COMPLETIONS_DEFAULT_MAX_TOKENS, Completion, CompletionChoice, CompletionLogprobs, Usage
from charnn.serve.service import Service, stops

NAMES = {"length": "max_tokens", "num_samples": "n"}  # the library's names for the request's fields, where they differ


async def completion_response(service: Service, body: Any, http: HttpRequest):
    """The response to a `CompletionRequest`."""
    n = body.n or 1
    if body.best_of is not None:
        if body.best_of < n:
            raise ApiError(422, "best_of", f"best_of must be at least n ({n}), got {body.best_of}")
        if body.stream and body.best_of > 1:
            message = "best_of cannot be used with stream: the best samples are known only when all are drawn"
            raise ApiError(422, "best_of", message)
    max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    # best_of's own checks are OpenAI's, above; the library's say what goes with beam.
    service.check(NAMES, length=max_tokens, num_samples=n, stream=bool(body.stream), beam=body.beam,
                  best_of=body.best_of if body.beam is not None else None, require=tuple(body.require or ()),
                  within=body.within, length_penalty=body.length_penalty, stop=stops(body.stop))  # fmt: skip
    temperature = 1.0 if body.temperature is None else body.temperature
    sampling = service.sampling(temperature, body.top_k, body.top_p, body)
    if body.beam is not None:
        found = await service.beam(body.prompt, max_tokens, sampling, body.beam, body.stop, body.length_penalty)
        kept = found.continuations[:n]
        return await _Completion(service, body, len(kept)).answer([c.text for c in kept],
                                                                  [c.finish_reason for c in kept])  # fmt: skip
    drawn = body.best_of or n  # samples to draw; the n best are returned
    seed = body.seed if body.seed is not None else new_seed()
    job = service.start(body.prompt, max_tokens, sampling, drawn, seed, body.stop, body.require, body.within, NAMES)
    return await respond(service, job, http, bool(body.stream), _Completion(service, body, n))


class _Completion(Shape):
    def __init__(self, service: Service, body: Any, n: int):
        self.service, self.body, self.n = service, body, n
        self.head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        self.head["model"] = service.name
        self.echo = body.prompt if body.echo else ""
        self.scorers: list[_ChoiceScorer] = []  # with logprobs, one per choice as it streams
        self.generated = 0  # characters streamed, for usage

    def _chunk(self, index: int, text: str, reason: str | None, scores: dict | None = None) -> str:
        choice = {"text": text, "index": index, "logprobs": scores, "finish_reason": reason}
        return as_sse({**self.head, "choices": [choice]})

    async def opening(self) -> str:
        prompt_scores: dict | None = None
        if self.body.logprobs is not None:
            prompt_scores, self.scorers = await self.service.run_scoring(
                _start_scoring, self.service, self.body.prompt, bool(self.echo), self.body.logprobs, self.n
            )
        return "".join(self._chunk(k, self.echo, None, prompt_scores) for k in range(self.n)) if self.echo else ""

    async def batch(self, events: list[JobEvent]) -> str:
        scores: list[dict] = []
        if self.scorers:  # every sample's new text of this batch in one call to the scoring thread
            pieces = [(self.scorers[e.sample], e.text) for e in events if isinstance(e, SampleText)]
            scores = await self.service.run_scoring(_feed_all, pieces)
        out = []
        for event in events:
            if isinstance(event, SampleText):
                self.generated += len(event.text)
                out.append(self._chunk(event.sample, event.text, None, scores.pop(0) if scores else None))
            elif isinstance(event, SampleFinished):
                out.append(self._chunk(event.sample, "", event.reason))
            elif isinstance(event, JobDone):
                options = self.body.stream_options
                if options is not None and options.include_usage:
                    prompt = len(self.body.prompt)
                    usage = {"prompt_tokens": prompt, "completion_tokens": self.generated}
                    usage["total_tokens"] = prompt + self.generated
                    out.append(as_sse({**self.head, "choices": [], "usage": usage}))
                out.append(as_sse("[DONE]"))
        return "".join(out)

    async def answer(self, texts: list[str], reasons: list[str]) -> Completion:
        service, body, n = self.service, self.body, self.n
        chosen = list(range(n))
        if len(texts) > 1 and body.best_of is not None:  # as `charnn generate --best-of` ranks them
            model, vocab = service.checkpoint.model, service.checkpoint.vocab
            chosen = (await service.run_scoring(rank_samples, model, vocab, body.prompt, texts)).order[:n]
        logprobs: list[CompletionLogprobs | None] = [None] * n
        if body.logprobs is not None:
            picked = [texts[i] for i in chosen]
            logprobs = await service.run_scoring(
                _choices_logprobs, service, body.prompt, picked, bool(self.echo), body.logprobs
            )
        choices = [
            CompletionChoice(text=self.echo + texts[i], index=k, finish_reason=reasons[i], logprobs=logprobs[k])
            for k, i in enumerate(chosen)
        ]
        # Every sample drawn counts, as OpenAI counts best_of's.
        prompt, generated = len(body.prompt), sum(len(t) for t in texts)
        usage = Usage(prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated)
        return Completion(**self.head, choices=choices, usage=usage)


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
