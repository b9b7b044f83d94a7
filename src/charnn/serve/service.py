"""The model as the server holds it: the loaded checkpoint, its engine, the scoring thread and the limits.

`Service.start` is the one way a request becomes an engine job: it checks what the schema
cannot and takes one of the server's `max_streams` slots; `Service.finish` gives the slot back.
"""

import asyncio
import dataclasses
import functools
import math
import re
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from charnn.beam import Beams, beam_search
from charnn.config import BAN, SampleConfig, ServeLimits
from charnn.constraints import required_phrases
from charnn.errors import CharnnError, ConfigError
from charnn.generation import check_options
from charnn.run_folder import load_checkpoint
from charnn.serve.engine import Engine, Job, Request
from charnn.serve.errors import ApiError
from charnn.serve.schemas import MAX_TEMPERATURE


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a training record that holds one reports null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _api_error(error: ConfigError, names: dict[str, str], field: str | None = None) -> ApiError:
    """A library's ConfigError as a 422: its backticked names (`length`, `num_samples`) as the request calls
    them; the field at fault is `field`, else the first of them."""
    named = re.findall(r"`(\w+)`", str(error))
    message = re.sub(r"`(\w+)`", lambda match: names.get(match[1], match[1]), str(error))
    return ApiError(422, field or (names.get(named[0], named[0]) if named else None), message)


def stops(stop) -> tuple[str, ...]:
    """A request's `stop`: none, one string or a list, as a tuple."""
    return (stop,) if isinstance(stop, str) else tuple(stop or ())


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

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The engine's thread, serving the running event loop, and the scoring thread, while the app runs."""
        self.engine.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            self.engine.stop()
            self.scoring.shutdown(wait=False, cancel_futures=True)

    async def copy_index(self):
        """The training text's `CopyIndex`, built on the scoring thread by the first request that asks."""
        from charnn.scoring.copies import index_of

        try:
            return await self.run_scoring(index_of, self.checkpoint)
        except CharnnError as error:
            raise ApiError(422, "copies", f"no training text to compare with ({error})") from None

    def sampling(self, temperature: float, top_k, top_p, body: Any) -> SampleConfig:
        """A request's sampling options, its `ban`, `allow` and `logit_bias` made one logit bias (the schema has
        checked that they name the model's characters and indices)."""
        ban, allow = getattr(body, "ban", None), getattr(body, "allow", None)
        if ban is not None and allow is not None:
            raise ApiError(422, "allow", "give ban or allow, not both")
        characters = self.checkpoint.vocab.characters
        bias = {index: BAN for index, c in enumerate(characters) if c in (ban or ()) or (allow and c not in allow)}
        for key, value in (getattr(body, "logit_bias", None) or {}).items():
            bias[int(key)] = min(bias.get(int(key), value), value)  # a character banned stays banned
        if len(bias) == len(characters) and all(value <= BAN for value in bias.values()):
            raise ApiError(422, "logit_bias", "the request bans every character; leave at least one to draw")
        return SampleConfig(temperature, top_k, top_p, logit_bias=tuple(sorted(bias.items())))

    def check(self, names: dict[str, str], **options) -> None:
        """`charnn.generation.check_options` on a request's options, under the route's `names` for them."""
        try:
            check_options(**options)
        except ConfigError as error:
            raise _api_error(error, names) from None

    def check_prompt(self, prompt: str) -> None:
        """The one check of the prompt's characters (the schema's pattern only documents them): a 400 that
        names each one, before a slot is taken; the engine trusts its Request."""
        unknown = self.checkpoint.vocab.unknown(prompt)
        if unknown:
            shown = ", ".join(repr(c) for c in unknown)
            raise ApiError(400, "prompt", f"prompt has characters the model does not know: {shown}")

    def start(self, prompt: str, max_new_chars: int, sampling: SampleConfig, num_samples: int, seed, stop,
              require=None, within=None, names: dict[str, str] | None = None) -> Job:  # fmt: skip
        """Validate what the schema cannot, take a slot, and hand the request to the engine.

        Required phrases hold in every sample: the engine forces each row's (`charnn.constraints.Required`)."""
        self.check_prompt(prompt)
        try:
            required = required_phrases(self.checkpoint.vocab, tuple(require or ()), length=max_new_chars,
                                        within=within, logit_bias=sampling.logit_bias, rows=num_samples)  # fmt: skip
        except ConfigError as error:
            field = "within" if str(error).startswith("`within`") else "require"
            raise _api_error(error, names or {}, field) from None
        if len(self.jobs) >= self.limits.max_streams:
            raise ApiError(
                429,
                None,
                f"too many generation requests in flight (the server's max_streams limit is "
                f"{self.limits.max_streams}); try again shortly",
                "rate_limit_error",
            )
        job = self.engine.submit(Request(prompt, max_new_chars, sampling, num_samples, seed, stops(stop), required))
        self.jobs.add(job)
        return job

    async def beam(self, prompt: str, length: int, sampling: SampleConfig, width: int, stop, length_penalty) -> Beams:
        """Beam search (`charnn.beam.beam_search`) on the scoring thread, outside the batch: the same text
        every time, from the plain model in fp32."""
        self.check_prompt(prompt)
        model, vocab = self.checkpoint.model, self.checkpoint.vocab
        try:
            return await self.run_scoring(beam_search, model, vocab, prompt, length=length, width=width,
                                          logit_bias=sampling.logit_bias, stop=stops(stop),
                                          length_penalty=length_penalty or 0.0)  # fmt: skip
        except ConfigError as error:
            raise _api_error(error, {}, "beam") from None

    async def run_scoring(self, function, *args, **kwargs):
        """`function(*args, **kwargs)` on the scoring thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.scoring, functools.partial(function, *args, **kwargs))

    def finish(self, job: Job) -> None:
        """Give back a job's slot and stop its rows at the next step (a finished job has none)."""
        job.cancel()
        self.jobs.discard(job)
