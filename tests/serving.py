"""A real charnn server for the tests: uvicorn on 127.0.0.1 in a background thread, on a free port."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from charnn.config import ServeLimits
from charnn.serve import Service, create_app


@dataclass
class Running:
    url: str
    service: Service


@contextmanager
def running_server(checkpoint: Path, limits: ServeLimits = ServeLimits()) -> Iterator[Running]:
    app = create_app(checkpoint, limits)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(f"http://127.0.0.1:{port}", app.state.service)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def slowed(service: Service, seconds: float) -> Iterator[None]:
    """Make each model step take at least `seconds`, so that requests overlap and streams stay open."""
    stepper = service.engine.stepper
    step = stepper.step

    def slow_step(tokens, state):
        time.sleep(seconds)
        return step(tokens, state)

    stepper.step = slow_step
    try:
        yield
    finally:
        del stepper.step  # back to the method


def wait_until(condition, timeout: float = 5.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.01)
