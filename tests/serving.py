"""A real charnn server for the tests: uvicorn on 127.0.0.1 in a background thread, on a free port.

Nothing here depends on how fast the machine is: `gated` holds the engine at a chosen step until
the test lets it go on (so a request is under way, or has produced only part of its text, for as
long as the test needs), and `wait_until` waits for a condition, with a deadline that is only a
safety net.
"""

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from charnn.config import ServeLimits
from charnn.serve import Service, create_app
from charnn.serve.engine import Engine

# How long to wait for something that should happen at once: only a safety net against a hang,
# generous for a loaded machine; a test never relies on it passing.
DEADLINE = 120.0


@dataclass
class Running:
    url: str
    service: Service


@contextmanager
def running_server(checkpoint: Path, limits: ServeLimits = ServeLimits()) -> Iterator[Running]:
    app = create_app(checkpoint, limits=limits)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + DEADLINE
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(f"http://127.0.0.1:{port}", app.state.service)
    finally:
        server.should_exit = True
        thread.join(timeout=DEADLINE)


class Gate:
    """Model steps wait here until the test allows them: `allow(n)` lets n more through, `open()` all."""

    def __init__(self, allowed: float):
        self._allowed = allowed
        self._changed = threading.Condition()

    def allow(self, steps: int) -> None:
        with self._changed:
            self._allowed += steps
            self._changed.notify_all()

    def open(self) -> None:
        self.allow(math.inf)

    def pass_through(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._allowed > 0)
            self._allowed -= 1


@contextmanager
def gated(engine: Engine, allowed: int = 0) -> Iterator[Gate]:
    """Let the engine run `allowed` more model steps, then hold it before the next until the test
    allows more (leaving the block opens the gate). However fast the machine, a request admitted
    meanwhile has drawn at most one character per sample more than the steps allowed, so it is
    still under way; requests that arrive while the engine is held join the batch together."""
    gate = Gate(allowed)
    stepper = engine.stepper
    step = stepper.step

    def gated_step(tokens, state):
        engine.flush()  # a held step is a long one: what was drawn before it goes out first
        gate.pass_through()
        return step(tokens, state)

    stepper.step = gated_step
    try:
        yield gate
    finally:
        gate.open()
        del stepper.step  # back to the method


def wait_until(condition, timeout: float = DEADLINE, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.01)
