"""Progress on standard error: a tqdm bar on a terminal; plain log lines when stderr is a file or a pipe (CI).

One adapter for every command: training's events (`on_event`), the phases of a slow computation
(called as `progress(phase, done, total)`, as evaluate_text and export_onnx report them), and a
stream of scored records (`follow`).
"""

import math
import sys


class Progress:
    def __init__(self, heading: str | None = None, *, minimum: int = 0):
        self.heading = heading  # printed when training starts
        self.minimum = minimum  # a total below this is over too soon for a bar to help
        self.interactive = sys.stderr.isatty()
        self.bar = None
        self.phase: str | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None

    def _open(self, total: int, **options) -> None:
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(total=total, dynamic_ncols=True, file=sys.stderr, **options)

    def _wanted(self, total: int) -> bool:
        return self.interactive and total >= self.minimum

    # --- phases and streams of characters ------------------------------------------------------------------

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self._wanted(total):
            return
        if phase != self.phase:
            self._open(total, unit="char", unit_scale=True, desc=phase)
            self.phase = phase
        self.bar.update(min(done, total) - self.bar.n)

    def follow(self, records, total: int, description: str):
        """`records` passed through, counted on a bar of `total` characters."""
        if not self._wanted(total):
            yield from records
            return
        self._open(total, unit="char", unit_scale=True, desc=description)
        pending = 0
        for record in records:
            pending += 1
            if pending == 8192:  # an update per character would slow a fast scoring loop
                self.bar.update(pending)
                pending = 0
            yield record
        self.bar.update(pending)

    # --- training ------------------------------------------------------------------------------------------

    def on_event(self, event) -> None:
        if event.kind == "start":
            print(self.heading, file=sys.stderr, flush=True)
        if event.kind == "warning":
            self.warn(event.message)
        elif self.interactive:
            self._draw(event)
        elif event.kind in ("start", "log", "eval", "epoch", "checkpoint"):
            self._print(describe(event))

    def warn(self, message: str) -> None:
        self._print(f"warning: {message}")

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def _draw(self, event) -> None:
        if self.bar is None:
            self._open(event.total_steps, unit="step")
        self.bar.n = event.step
        self.bar.set_description(f"epoch {event.epoch}", refresh=False)
        postfix = f"loss {event.loss:.4f}, {event.chars_per_sec:,.0f} chars/s"
        if event.val_loss is not None:
            postfix += f", val {event.val_loss:.4f}"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh() if event.kind != "step" else self.bar.update(0)
        if event.kind in ("checkpoint", "eval", "epoch"):
            self._print(describe(event))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def describe(event) -> str:
    """A training event as one log line."""
    if event.kind == "start":
        text = f"training: {event.total_steps:,} steps, {event.steps_per_epoch:,} per epoch"
        return f"{text}; {event.message}" if event.message else text
    if event.kind == "checkpoint":
        return f"saved {event.path}"
    text = (
        f"epoch {event.epoch} step {event.step:,}/{event.total_steps:,} loss {event.loss:.4f} "
        f"{event.chars_per_sec:,.0f} chars/s elapsed {_duration(event.elapsed)} eta {_duration(event.eta)}"
    )
    if event.val_loss is not None:
        text += f" val_loss {event.val_loss:.4f} ({event.val_loss / math.log(2):.3f} bits/char)"
    return text
