"""The server's engine: every row gives exactly what generate_text gives; rows join and leave freely."""

import asyncio
import math
import time

import pytest
import torch

from charnn.config import ModelConfig, SampleConfig
from charnn.generation import generate_text
from charnn.model import CharRNN
from charnn.run_folder import load_checkpoint
from charnn.serve.engine import Engine, JobDone, JobFailed, Request, SampleFinished, SampleText
from charnn.vocab import Vocabulary
from conftest import TINY_TEXT
from serving import DEADLINE, gated


async def collect(job, seen=(), timeout: float = DEADLINE) -> tuple[list[str], list[str]]:
    """Every sample's text and finish reason; `seen` holds events already taken off the queue."""
    n = job.request.num_samples
    texts, reasons = [""] * n, [None] * n
    pending = list(seen)
    while True:
        event = pending.pop(0) if pending else await asyncio.wait_for(job.queue.get(), timeout)
        if isinstance(event, SampleText):
            texts[event.sample] += event.text
        elif isinstance(event, SampleFinished):
            reasons[event.sample] = event.reason
        elif isinstance(event, JobDone):
            return texts, reasons
        else:
            raise AssertionError(event)


def expected(model, vocab, request: Request) -> list[str]:
    samples = generate_text(
        model,
        vocab,
        request.prompt,
        length=request.max_new_chars,
        sampling=request.sampling,
        num_samples=request.num_samples,
        seed=request.seed,
    )
    cut = []
    for text in samples:
        ends = [text.find(stop) for stop in request.stop if stop in text]
        cut.append(text[: min(ends)] if ends else text)
    return cut


def run(model, vocab, scenario):
    async def main():
        engine = Engine(model, vocab)
        engine.start(asyncio.get_running_loop())
        try:
            return await scenario(engine)
        finally:
            engine.stop()

    return asyncio.run(main())


REQUESTS = [
    Request("Pip", 60, SampleConfig(0.8), num_samples=2, seed=1),
    Request("“Pip,” said Joe", 45, SampleConfig(1.0, top_k=5), num_samples=3, seed=2),
    Request("你好", 70, SampleConfig(0), num_samples=2, seed=3),
    Request("The marshes", 80, SampleConfig(1.2, top_p=0.9), num_samples=2, seed=4, stop=("e ", "’")),
    Request("E", 30, SampleConfig(0.5), num_samples=1, seed=5),
]


@pytest.fixture(scope="module")
def tiny(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    return ckpt.model, ckpt.vocab


@pytest.fixture(scope="module")
def lstm():
    """Two LSTM layers: a state that is a tuple, and several layers to pack and select."""
    torch.manual_seed(3)
    vocab = Vocabulary.from_text(TINY_TEXT)
    return CharRNN(
        ModelConfig(vocab_size=len(vocab), embedding_dim=8, hidden_size=24, cell="lstm", num_layers=2)
    ).eval(), vocab


@pytest.mark.parametrize("which", ["tiny", "lstm"])
def test_concurrent_requests_equal_generate_text(request, which):
    model, vocab = request.getfixturevalue(which)

    async def scenario(engine):
        # Held at its first step: the first request is under way when the others arrive, and they
        # arrive together, however the engine thread and this one are scheduled.
        with gated(engine):
            first = engine.submit(REQUESTS[0])
            seen = [await asyncio.wait_for(first.queue.get(), DEADLINE)]
            jobs = [engine.submit(r) for r in REQUESTS[1:]]
        results = await asyncio.gather(collect(first, seen), *(collect(job) for job in jobs))
        return results, engine.steps

    results, steps = run(model, vocab, scenario)
    for request_, (texts, reasons) in zip(REQUESTS, results, strict=True):
        assert texts == expected(model, vocab, request_)
        for text, reason in zip(texts, reasons, strict=True):
            assert reason == ("length" if len(text) == request_.max_new_chars else "stop")
    # One shared step per character position, not one per request: the batch was shared.
    assert steps < sum(r.max_new_chars for r in REQUESTS)


def test_zero_length_and_first_character_stop(tiny):
    model, vocab = tiny
    greedy_first = expected(model, vocab, Request("Pip", 1, SampleConfig(0)))[0]

    async def scenario(engine):
        none = engine.submit(Request("Pip", 0, num_samples=2))
        stopped = engine.submit(Request("Pip", 50, SampleConfig(0), stop=(greedy_first,)))
        return await collect(none), await collect(stopped)

    (texts, reasons), (stopped, stop_reasons) = run(model, vocab, scenario)
    assert texts == ["", ""] and reasons == ["length", "length"]
    assert stopped == [""] and stop_reasons == ["stop"]


def test_a_cancelled_job_leaves_the_batch(tiny):
    model, vocab = tiny

    async def scenario(engine):
        long = engine.submit(Request("Pip", 100_000, num_samples=3))
        await long.queue.get()
        assert engine.active_rows in (0, 3)  # counted after each step
        long.cancel()
        deadline = time.monotonic() + DEADLINE  # a safety net: the rows leave at the next step
        while (engine.active_rows or engine._rows) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        rows_after_cancel = len(engine._rows)
        after = await collect(engine.submit(Request("Pip", 10)))
        return rows_after_cancel, after

    rows_after_cancel, (texts, _) = run(model, vocab, scenario)
    assert rows_after_cancel == 0
    assert len(texts[0]) == 10


def test_a_failing_step_fails_its_jobs_and_the_engine_goes_on(tiny):
    model, vocab = tiny

    async def scenario(engine):
        def broken(tokens, state=None):
            raise RuntimeError("boom")

        engine.stepper.prefill = broken
        job = engine.submit(Request("Pip", 10))
        event = await asyncio.wait_for(job.queue.get(), DEADLINE)
        del engine.stepper.prefill
        return event, await collect(engine.submit(Request("Pip", 10)))

    event, (texts, _) = run(model, vocab, scenario)
    assert isinstance(event, JobFailed) and "boom" in event.message
    assert len(texts[0]) == 10


@pytest.mark.parametrize("flush_interval", [0.0, math.inf])
def test_text_comes_in_bulk_and_equals_generate_text(tiny, flush_interval):
    # Longer than a block of uniforms (1024) and than the engine's text buffer (512 characters):
    # rows refill their random streams and deliver a full buffer, mid-request.
    model, vocab = tiny
    requests = [
        Request("Pip", 1500, SampleConfig(0.9), num_samples=2, seed=11),
        Request("Joe", 700, SampleConfig(1.0, top_k=4), seed=12, stop=("xyz",)),
        Request("E", 40, SampleConfig(0.7), seed=13),
    ]

    async def scenario(engine):
        engine.flush_interval = flush_interval
        jobs = [engine.submit(r) for r in requests]
        pieces = []
        for job in jobs:
            events = []
            while not events or not isinstance(events[-1], JobDone):
                events.append(await asyncio.wait_for(job.queue.get(), DEADLINE))
            pieces.append([e.text for e in events if isinstance(e, SampleText) and e.sample == 0])
        return pieces

    pieces = run(model, vocab, scenario)
    for request_, texts in zip(requests, pieces, strict=True):
        assert "".join(texts) == expected(model, vocab, request_)[0]
        if flush_interval == 0:  # every step delivers: one character an event
            assert all(len(t) == 1 for t in texts)
        else:  # the first character at once, then a full buffer (512 columns) at a time, the rest at the end
            assert len(texts[0]) == 1 and all(len(t) <= 512 for t in texts)
            assert len(texts) <= 3 + request_.max_new_chars // 512
