"""The server's engine: one loaded model advances every running request together, a character per step.

A single background thread owns the model. A new request is fed its prompt in one forward
pass of its own, exactly as `charnn.generation.generate` feeds it, then its rows (one per
sample) join the shared batch. Each step draws one character for every active row, each row
from its own random stream and with its own request's sampling options, then runs one
forward of the model over all rows: `(B, 1)` tokens and a `(layers, B, hidden)` state. Rows
join and leave between steps, so ten concurrent users cost one batch of ten rows rather
than ten forwards.

Results come back to the asyncio side as events on each job's queue: `SampleText`,
`SampleFinished`, then `JobDone`, or `JobFailed`. A job whose client has gone away is
cancelled; its rows leave the batch at the next step.

    engine = Engine(ckpt.model, ckpt.vocab)
    engine.start(asyncio.get_running_loop())
    job = engine.submit(Request("Pip", 100, SampleConfig(0.8), num_samples=2, seed=7))
    event = await job.queue.get()  # SampleText(sample=0, text="...")
"""

import asyncio
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import torch

from charnn.config import SampleConfig
from charnn.fast.step import Stepper
from charnn.model import CharRNN, State
from charnn.sample import RandomStreams
from charnn.vocab import Vocabulary


@dataclass(frozen=True)
class Request:
    """One generation request, already validated: `prompt` is non-empty and in the vocabulary."""

    prompt: str
    max_new_chars: int
    sampling: SampleConfig = SampleConfig()
    num_samples: int = 1
    seed: int = 0
    stop: tuple[str, ...] = ()


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class SampleText:
    """New characters of one sample."""

    sample: int
    text: str


@dataclass(frozen=True, slots=True)
class SampleFinished:
    """One sample ended: at a stop sequence, or at max_new_chars."""

    sample: int
    reason: FinishReason


@dataclass(frozen=True, slots=True)
class JobDone:
    """Every sample of the job has ended; the last event of a job that succeeded."""


@dataclass(frozen=True, slots=True)
class JobFailed:
    """The job failed; the last event of its queue."""

    message: str


JobEvent = SampleText | SampleFinished | JobDone | JobFailed


class Job:
    """A request in flight. The asyncio side reads `queue` and may call `cancel()`."""

    def __init__(self, request: Request, tokens: torch.Tensor):
        self.request = request
        self.tokens = tokens  # (P,) the encoded prompt
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self.cancelled = False
        self.streams = RandomStreams(request.seed, request.num_samples)
        self.steps = 0  # characters drawn so far for each sample
        self.live = request.num_samples  # samples not yet finished

    def cancel(self) -> None:
        # A plain attribute: the engine thread reads it once per step.
        self.cancelled = True


class _Row:
    """One sample of one job: its text so far, and how much of it has been sent."""

    __slots__ = ("job", "sample", "text", "sent")

    def __init__(self, job: Job, sample: int):
        self.job = job
        self.sample = sample
        self.text = ""
        self.sent = 0


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could still be the start of a stop sequence."""
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:k]):
                held = k
                break
    return held


def _select(state: State, index: torch.Tensor) -> State:
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)
    return state.index_select(1, index)


def _concat(states: list[State]) -> State:
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*states, strict=True))
    return torch.cat(states, dim=1)


class Engine:
    """Owns the model; advances all running jobs together in one background thread."""

    def __init__(self, model: CharRNN, vocab: Vocabulary, precision: str = "auto"):
        self.model = model
        self.vocab = vocab
        self.device = next(model.parameters()).device
        # The same fast step as `generate`, with the same weights precision, so a request's
        # text equals `charnn generate`'s for the same seed and options.
        self.stepper = Stepper(model, precision)
        self._inbox: list[Job] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The batch: one entry of `rows` per row of `logits` (B, V) and of `state` (layers, B, H).
        self._rows: list[_Row] = []
        self._logits: torch.Tensor | None = None
        self._state: State | None = None
        self.active_rows = 0  # rows in the batch after the last step (for health checks and tests)
        self.steps = 0  # batched forward steps run so far

    # --- the asyncio side ---------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="charnn-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def submit(self, request: Request) -> Job:
        """Queue a request; raises UnknownCharactersError for a prompt the model cannot read."""
        job = Job(request, torch.from_numpy(self.vocab.encode(request.prompt)))
        with self._wake:
            if self._stopping:
                raise RuntimeError("the engine has stopped")
            self._inbox.append(job)
            self._wake.notify()
        return job

    # --- the engine thread ----------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._inbox and not self._rows and not self._stopping:
                        self._wake.wait()
                    if self._stopping:
                        break
                    arrivals, self._inbox = self._inbox, []
                try:
                    self._advance(arrivals)
                    self.active_rows = len(self._rows)
                except Exception as error:  # a bug: fail the jobs it touched, keep serving others
                    jobs = {id(r.job): r.job for r in self._rows} | {id(j): j for j in arrivals}
                    self._clear()
                    self._send([(job, JobFailed(f"generation failed: {error!r}")) for job in jobs.values()])
        jobs = {id(r.job): r.job for r in self._rows} | {id(j): j for j in self._inbox}
        self._clear()
        self._send([(job, JobFailed("the server is shutting down")) for job in jobs.values()])

    def _clear(self) -> None:
        self._rows, self._logits, self._state = [], None, None
        self.active_rows = 0

    def _send(self, events: list[tuple[Job, JobEvent]]) -> None:
        # One hop into the event loop per step, not one per character.
        if events and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_deliver, events)

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._clear()
            return
        index = torch.tensor(keep, device=self._logits.device)
        self._rows = [self._rows[i] for i in keep]
        self._logits = self._logits.index_select(0, index)
        self._state = _select(self._state, index)

    def _admit(self, jobs: list[Job], events: list[tuple[Job, JobEvent]]) -> None:
        """Feed the prompts of newly arrived jobs and add their rows (one per sample) to the batch."""
        for job in jobs:
            n = job.request.num_samples
            if job.request.max_new_chars == 0:
                events += [(job, SampleFinished(k, "length")) for k in range(n)] + [(job, JobDone())]
                continue
            # Each prompt goes in exactly as `generate` feeds it: every sample a copy, one pass,
            # so that the request's text is `generate`'s.
            logits, state = self.stepper.prefill(job.tokens.unsqueeze(0).expand(n, -1))  # (n, V)
            self._rows += [_Row(job, k) for k in range(n)]
            if self._logits is None:
                self._logits, self._state = logits, state
            else:
                self._logits = torch.cat([self._logits, logits])
                self._state = _concat([self._state, state])

    def _uniforms(self) -> torch.Tensor:
        """One uniform per row: each job's streams advance once per step, whichever rows remain."""
        drawn: dict[int, list[float]] = {}
        values = []
        for row in self._rows:
            job = row.job
            if id(job) not in drawn:
                drawn[id(job)] = job.streams.next().tolist()
            values.append(drawn[id(job)][row.sample])
        # float64, as `RandomStreams.next()` gives them to `generate`: the draws must be identical.
        return torch.tensor(values, dtype=torch.float64)

    def _sample(self) -> torch.Tensor:
        uniforms = self._uniforms()
        groups: dict[SampleConfig, list[int]] = defaultdict(list)
        for i, row in enumerate(self._rows):
            groups[row.job.request.sampling].append(i)
        if len(groups) == 1:
            return self.stepper.sample(self._logits, next(iter(groups)), uniforms)
        chosen = torch.empty(len(self._rows), dtype=torch.long, device=self._logits.device)
        for sampling, rows in groups.items():
            index = torch.tensor(rows, device=self._logits.device)
            chosen[index] = self.stepper.sample(self._logits.index_select(0, index), sampling, uniforms[rows])
        return chosen

    def _advance(self, arrivals: list[Job]) -> None:
        events: list[tuple[Job, JobEvent]] = []
        # Rows of jobs whose clients left are dropped before any more work is spent on them.
        self._keep([i for i, row in enumerate(self._rows) if not row.job.cancelled])
        self._admit([job for job in arrivals if not job.cancelled], events)
        if not self._rows:
            self._send(events)
            return

        chosen = self._sample()
        for job in {id(r.job): r.job for r in self._rows}.values():
            job.steps += 1
        characters = self.vocab.characters
        keep = []
        for i, (row, index) in enumerate(zip(self._rows, chosen.tolist(), strict=True)):
            job, request = row.job, row.job.request
            row.text += characters[index]
            reason, end = None, len(row.text)
            for stop in request.stop:
                if row.text.endswith(stop):
                    # Of several stops ending here, the longest starts first.
                    if reason is None or len(row.text) - len(stop) < end:
                        reason, end = "stop", len(row.text) - len(stop)
            if reason is None and job.steps >= request.max_new_chars:
                reason = "length"
            if reason is None:
                end = len(row.text) - _held_back(row.text, request.stop) if request.stop else len(row.text)
            if end > row.sent:
                events.append((job, SampleText(row.sample, row.text[row.sent : end])))
                row.sent = end
            if reason is None:
                keep.append(i)
                continue
            events.append((job, SampleFinished(row.sample, reason)))
            job.live -= 1
            if job.live == 0:
                events.append((job, JobDone()))
        self._send(events)

        if len(keep) < len(self._rows):
            if not keep:
                self._clear()
                return
            index = torch.tensor(keep, device=self._logits.device)
            self._rows = [self._rows[i] for i in keep]
            self._state = _select(self._state, index)
            chosen = chosen.index_select(0, index)
        # The stepper updates the state in place and reuses its logits buffer next step.
        self._logits = self.stepper.step(chosen, self._state)  # (B, V)
        self.steps += 1


def _deliver(events: list[tuple[Job, JobEvent]]) -> None:
    for job, event in events:
        job.queue.put_nowait(event)
