"""The server's engine: one loaded model advances every running request together, a character per step.

A single background thread owns the model. A new request is fed its prompt on its own
(`Stepper.prefill`), exactly as `charnn.generation.generate` feeds it, then its rows (one per
sample) join the shared batch. Each step draws one character for every active row, each row
from its own random stream and with its own request's sampling options, then runs one
forward of the model over all rows: `(B, 1)` tokens and a `(layers, B, hidden)` state. Rows
join and leave between steps, so ten concurrent users cost one batch of ten rows rather
than ten forwards. A request's required phrases are kept row by row as `generate` keeps them.

Results come back to the asyncio side as events on each job's queue: `SampleText`,
`SampleFinished`, then `JobDone`, or `JobFailed`. Text is delivered in bulk, not per character:
a new sample's first character at once, then every `flush_interval` all that each sample drew
meanwhile, one `SampleText` per sample, decoded in one operation for the whole batch by the
engine thread; a sample's last text comes with its `SampleFinished`. So the event loop's work
grows with the number of streams, not with characters per second. A job whose client has gone
away is cancelled; its rows leave the batch at the next step.

    engine = Engine(ckpt.model, ckpt.vocab)
    engine.start(asyncio.get_running_loop())
    job = engine.submit(Request("Pip", 100, SampleConfig(0.8), num_samples=2, seed=7))
    event = await job.queue.get()  # SampleText(sample=0, text="...")
"""

import asyncio
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from charnn.config import SampleConfig
from charnn.constraints import Required
from charnn.fast.step import Stepper
from charnn.generation import held_back
from charnn.model import CharRNN, State, concat_rows, select_rows
from charnn.sample import BLOCK, RandomStreams
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
    required: Required | None = None  # its phrases' automata, one row per sample (owned by the engine)


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class SampleText:
    """Every character one sample drew since its previous SampleText (one or many).

    Anything drawn per character belongs here as a sequence beside `text`, one entry per
    character, gathered from per-row arrays as the characters are. (The API's `logprobs` are not:
    they are the fp32 model's figures, not the sampling step's, and `completions` computes them from the
    delivered text on its scoring thread, so the engine does the same work with or without them.)
    """

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
        self.live = request.num_samples  # samples not yet finished

    def cancel(self) -> None:
        # A plain attribute: the engine thread reads it once per step.
        self.cancelled = True


class _Row:
    """One sample of one job: where its numbers live in the engine's arrays, and its text held back."""

    __slots__ = ("job", "sample", "slot", "tail", "held")

    def __init__(self, job: Job, sample: int, slot: int):
        self.job = job
        self.sample = sample
        self.slot = slot  # its row of the engine's per-row arrays (uniforms, tokens, characters left)
        self.tail = ""  # with stop sequences: the last characters drawn, enough to see a stop end
        self.held = ""  # with stop sequences: drawn, not sent, as it may be the start of a stop


# How long drawn text may wait in the engine before it goes to the event loop, in seconds. One
# delivery carries every character each stream drew since its last one, so the event loop's work
# (a queue, a task wake-up, an SSE event, a socket write per stream) is paid per delivery, not per
# character: at most 1 / FLUSH_INTERVAL deliveries a second per stream, however fast the step.
FLUSH_INTERVAL = 0.02
_COLUMNS = 512  # characters a row can hold between deliveries; a full buffer is delivered at once


class Engine:
    """Owns the model; advances all running jobs together in one background thread.

    Per step, the bookkeeping is a few numpy operations over all rows, whatever their number:
    each row's uniforms, drawn characters and characters left live in per-row arrays (a row's
    `slot`), and the text of every row is decoded in one operation when it is delivered. Only rows
    with stop sequences are looked at one by one each step.
    """

    def __init__(
        self, model: CharRNN, vocab: Vocabulary, precision: str = "auto", flush_interval: float = FLUSH_INTERVAL
    ):
        self.model = model
        self.vocab = vocab
        self.device = next(model.parameters()).device
        # The same fast step as `generate`, with the same weights precision, so a request's
        # text equals `charnn generate`'s for the same seed and options.
        self.stepper = Stepper(model, precision)
        self.flush_interval = flush_interval
        self._inbox: list[Job] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The batch: one entry of `rows` per row of `logits` (B, V) and of `state` (layers, B, H).
        self._rows: list[_Row] = []
        self._logits: torch.Tensor | None = None
        self._state: State | None = None
        # Per-row arrays, indexed by slot (a row keeps its slot while it is in the batch): the
        # uniforms of its random stream and how many of them are used, characters it may still
        # draw, and the characters drawn since the last delivery (columns `start` to `columns`).
        self._uniforms = np.zeros((0, BLOCK))
        self._used = np.zeros(0, dtype=np.int64)
        self._left = np.zeros(0, dtype=np.int64)
        self._start = np.zeros(0, dtype=np.int64)
        self._drawn = np.zeros((0, _COLUMNS), dtype=np.int32)
        self._free: list[int] = []
        self._columns = 0  # columns of `_drawn` filled since the last delivery
        self._last_flush = 0.0
        # Derived from `rows`, rebuilt when rows join or leave: their slots, the rows with stops,
        # each job's rows by sample where it has required phrases, and the rows of each sampling configuration.
        self._slots = np.zeros(0, dtype=np.int64)
        self._stopping_rows: list[tuple[int, _Row]] = []
        self._required: dict[Required, list[int]] = {}
        self._groups: list[tuple[SampleConfig, torch.Tensor | None]] = []
        # Unicode code points of the vocabulary: text is decoded a whole array at a time.
        self._code_points = np.array([ord(c) for c in vocab.characters], dtype="<u4")
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
        self._free = list(range(len(self._left)))
        self._columns = 0
        self._rebuild()
        self.active_rows = 0

    def _send(self, events: list[tuple[Job, JobEvent]]) -> None:
        # One hop into the event loop per delivery, not one per character or per stream.
        if events and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_deliver, events)

    def flush(self) -> None:
        """Deliver every character drawn so far. From the engine thread only, before a wait of unknown
        length (the tests' gate that holds a step)."""
        self._send(self._flush_all([]))

    def _rebuild(self) -> None:
        """The views of `rows` that each step uses, after rows joined or left."""
        self._slots = np.array([row.slot for row in self._rows], dtype=np.int64)
        self._stopping_rows = [(i, row) for i, row in enumerate(self._rows) if row.job.request.stop]
        self._required = defaultdict(list)
        for i, row in enumerate(self._rows):  # a job's rows are in the batch together, by sample
            if row.job.request.required is not None:
                self._required[row.job.request.required].append(i)
        groups: dict[SampleConfig, list[int]] = defaultdict(list)
        for i, row in enumerate(self._rows):
            groups[row.job.request.sampling].append(i)
        if len(groups) == 1:
            self._groups = [(next(iter(groups)), None)]
        else:
            self._groups = [(sampling, torch.tensor(rows)) for sampling, rows in groups.items()]

    def _allocate_slots(self, count: int) -> list[int]:
        if len(self._free) < count:
            old = len(self._left)
            new = max(2 * old, old + count, 8)
            grow = lambda a, fill=0: np.concatenate([a, np.full((new - old, *a.shape[1:]), fill, a.dtype)])  # noqa: E731
            self._uniforms, self._used = grow(self._uniforms), grow(self._used)
            self._left, self._start, self._drawn = grow(self._left), grow(self._start), grow(self._drawn)
            self._free += range(old, new)
        slots, self._free = self._free[-count:], self._free[:-count]
        return slots

    def _keep(self, keep: list[int]) -> None:
        """Keep only the rows at these indices (in this order); the others' slots are freed."""
        if len(keep) == len(self._rows):
            return
        kept = set(keep)
        self._free += [row.slot for i, row in enumerate(self._rows) if i not in kept]
        if not keep:
            self._rows, self._logits, self._state = [], None, None
            self._columns = 0
            self._rebuild()
            return
        index = torch.tensor(keep, device=self.device)
        self._rows = [self._rows[i] for i in keep]
        if self._logits is not None:
            self._logits = self._logits.index_select(0, index)
        self._state = select_rows(self._state, index)
        self._rebuild()

    def _admit(self, jobs: list[Job], events: list[tuple[Job, JobEvent]]) -> None:
        """Feed the prompts of newly arrived jobs and add their rows (one per sample) to the batch."""
        for job in jobs:
            n = job.request.num_samples
            if job.request.max_new_chars == 0:
                events += [(job, SampleFinished(k, "length")) for k in range(n)] + [(job, JobDone())]
                continue
            # Each prompt goes in exactly as `generate` feeds it (every sample a copy), so that the
            # request's text is `generate`'s.
            logits, state = self.stepper.prefill(job.tokens.unsqueeze(0).expand(n, -1))  # (n, V)
            slots = self._allocate_slots(n)
            for k, slot in enumerate(slots):
                self._uniforms[slot] = job.streams.block(k)
            self._used[slots] = 0
            self._left[slots] = job.request.max_new_chars
            # A new row's first character goes out at once (see `_advance`): it starts at that column.
            self._start[slots] = self._columns
            self._rows += [_Row(job, k, slot) for k, slot in enumerate(slots)]
            if self._logits is None:
                self._logits, self._state = logits, state
            else:
                self._logits = torch.cat([self._logits, logits])
                self._state = concat_rows([self._state, state])
        if jobs:
            self._rebuild()

    def _draw_uniforms(self) -> torch.Tensor:
        """One uniform per row from its own stream, exactly as `RandomStreams.next()` gives them to `generate`."""
        slots = self._slots
        used = self._used[slots]
        values = self._uniforms[slots, used]
        self._used[slots] = used + 1
        for i in np.flatnonzero(used + 1 == BLOCK):  # a row used up its block: the next one of its stream
            row = self._rows[i]
            self._uniforms[row.slot] = row.job.streams.block(row.sample)
            self._used[row.slot] = 0
        # float64, as `RandomStreams.next()` gives them to `generate`: the draws must be identical.
        return torch.from_numpy(values)

    def _sample(self) -> torch.Tensor:
        uniforms = self._draw_uniforms()
        if len(self._groups) == 1:
            return self.stepper.sample(self._logits, self._groups[0][0], uniforms)
        chosen = torch.empty(len(self._rows), dtype=torch.long, device=self._logits.device)
        for sampling, index in self._groups:
            chosen[index] = self.stepper.sample(self._logits.index_select(0, index), sampling, uniforms[index])
        return chosen

    def _texts(self, indices: list[int] | np.ndarray) -> list[str]:
        """The text each of these rows drew since its last delivery, decoded in one operation."""
        columns = self._columns
        slots = self._slots[indices]
        if not columns or not len(slots):
            return [""] * len(slots)
        joined = self._code_points[self._drawn[slots, :columns]].tobytes().decode("utf-32-le")
        starts = self._start[slots].tolist()
        return [joined[k * columns + start : (k + 1) * columns] for k, start in enumerate(starts)]

    def _text_events(self, rows: list[_Row], texts: list[str], events: list[tuple[Job, JobEvent]]) -> None:
        for row, text in zip(rows, texts, strict=True):
            if row.job.request.stop:
                # Characters that may begin a stop sequence wait until it is clear they do not.
                text = row.held + text
                keep = len(text) - held_back(text, row.job.request.stop)
                text, row.held = text[:keep], text[keep:]
            if text:
                events.append((row.job, SampleText(row.sample, text)))

    def _flush_all(self, events: list[tuple[Job, JobEvent]]) -> list[tuple[Job, JobEvent]]:
        self._text_events(self._rows, self._texts(np.arange(len(self._rows))), events)
        self._columns = 0
        self._start[self._slots] = 0
        self._last_flush = time.monotonic()
        return events

    def _advance(self, arrivals: list[Job]) -> None:
        events: list[tuple[Job, JobEvent]] = []
        # Rows of jobs whose clients left are dropped before any more work is spent on them.
        if any(row.job.cancelled for row in self._rows):
            self._keep([i for i, row in enumerate(self._rows) if not row.job.cancelled])
        before = len(self._rows)
        self._admit([job for job in arrivals if not job.cancelled], events)
        if not self._rows:
            self._send(events)
            return
        if self._columns == _COLUMNS:
            self._flush_all(events)

        for required, rows in self._required.items():  # rows whose phrases only just fit take their next character
            self._logits = required.force(self._logits, rows)
        chosen = self._sample()  # (B,)
        drawn = chosen.numpy()
        for required, rows in self._required.items():
            required.advance(drawn[rows].tolist())
        slots = self._slots
        self._drawn[slots, self._columns] = drawn
        self._columns += 1
        left = self._left[slots] - 1
        self._left[slots] = left
        finished: dict[int, int | None] = {int(i): None for i in np.flatnonzero(left == 0)}  # row -> stop length
        characters = self.vocab.characters
        for i, row in self._stopping_rows:
            stops = row.job.request.stop
            row.tail = (row.tail + characters[drawn[i]])[-max(len(stop) for stop in stops) :]
            ending = [len(stop) for stop in stops if row.tail.endswith(stop)]
            if ending:
                finished[i] = max(ending)  # of several stops ending here, the longest starts first

        if finished:
            ended = sorted(finished)
            for i, text in zip(ended, self._texts(ended), strict=True):
                row, stop_length = self._rows[i], finished[i]
                text, row.held = row.held + text, ""
                if stop_length is not None:  # the stop sequence itself is not part of the text
                    text = text[: len(text) - stop_length]
                if text:
                    events.append((row.job, SampleText(row.sample, text)))
                events.append((row.job, SampleFinished(row.sample, "length" if stop_length is None else "stop")))
                row.job.live -= 1
                if row.job.live == 0:
                    events.append((row.job, JobDone()))
            self._start[slots[ended]] = self._columns  # all of their text is out
        if time.monotonic() - self._last_flush >= self.flush_interval:
            self._flush_all(events)
        else:  # a new row's first character goes out at once; then its text waits for the interval
            new = [i for i in range(before, len(self._rows)) if i not in finished]
            self._text_events([self._rows[i] for i in new], self._texts(new), events)
            self._start[slots[new]] = self._columns
        self._send(events)

        if finished:
            keep = [i for i in range(len(self._rows)) if i not in finished]
            if keep:
                chosen = chosen.index_select(0, torch.tensor(keep))
            self._logits = None  # replaced by the step below
            self._keep(keep)
            if not keep:
                return
        # The stepper updates the state in place and reuses its logits buffer next step.
        self._logits = self.stepper.step(chosen, self._state)  # (B, V)
        self.steps += 1


def _deliver(events: list[tuple[Job, JobEvent]]) -> None:
    for job, event in events:
        job.queue.put_nowait(event)
