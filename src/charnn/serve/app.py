"""The server's app: the routes over one loaded model, and `serve`, which runs it under uvicorn.

`create_app(checkpoint, limits)` builds the app; `serve(...)` runs it. Every request goes
through one `engine.Engine`, which advances all concurrent requests together as a batch.

- `POST /v1/generate` (`generate.py`): charnn's own API, streamed as server-sent events or not.
- `POST /v1/completions` (`completions.py`): the OpenAI completions API, counting characters as
  tokens, with `logprobs`, `echo` and `best_of`.
- `GET /v1/model`, `GET /healthz`, and the page at `/`.

Mistakes come back as a 4xx with `{"error": {"field", "message", "type"}}` (`errors.py`).

    app = create_app("runs/ge", ServeLimits(max_streams=16))
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import HTMLResponse

from charnn.config import ServeLimits
from charnn.errors import ConfigError
from charnn.serve.completions import completion_response
from charnn.serve.errors import add_error_handlers
from charnn.serve.generate import generate_response
from charnn.serve.schemas import (
    COMPLETION_EVENTS,
    ERRORS,
    GENERATE_EVENTS,
    Completion,
    GenerateResponse,
    request_models,
)
from charnn.serve.service import Service


def create_app(checkpoint_path: str | Path, *, limits: ServeLimits = ServeLimits()) -> FastAPI:
    """The app for one checkpoint; raises CheckpointError for a broken one."""
    service = Service(Path(checkpoint_path), limits)
    GenerateRequest, CompletionRequest = request_models(limits, service.checkpoint.vocab.characters)
    page = (files("charnn.serve") / "static" / "index.html").read_text(encoding="utf-8")

    app = FastAPI(
        title="charnn",
        summary="Generate text with a character-level recurrent language model.",
        version="1",
        lifespan=lambda app: service.running(),
    )
    app.state.service = service
    add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", summary="Liveness and load")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": service.name,
            "in_flight": len(service.jobs),
            "max_streams": limits.max_streams,
            "active_rows": service.engine.active_rows,
        }

    @app.get("/v1/model", summary="The model: vocabulary, configuration, training record, limits")
    async def model_info() -> dict[str, Any]:
        return service.info

    @app.post(
        "/v1/generate",
        summary="Generate text from a prompt",
        response_model=GenerateResponse,
        response_model_exclude_none=True,  # copies only when asked for
        responses={200: {"content": GENERATE_EVENTS}, **ERRORS},
    )
    async def generate(body: GenerateRequest, http: HttpRequest):  # its name is in /openapi.json
        return await generate_response(service, body, http)

    @app.post(
        "/v1/completions",
        summary="OpenAI-compatible completions (tokens are characters)",
        response_model=Completion,
        responses={200: {"content": COMPLETION_EVENTS}, **ERRORS},
    )
    async def completions(body: CompletionRequest, http: HttpRequest):
        return await completion_response(service, body, http)

    return app


def serve(
    checkpoint_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits = ServeLimits(),
    threads: int | None = None,
) -> None:
    """Load the checkpoint and serve until interrupted."""
    import uvicorn

    if threads is not None and threads < 1:
        raise ConfigError(f"`threads` must be at least 1, got {threads}")
    if threads is not None:
        torch.set_num_threads(threads)
    # The engine thread takes the GIL back after every tensor operation; with Python's default
    # 5 ms switch interval a busy event loop can hold it off for that long each time.
    sys.setswitchinterval(0.0005)
    app = create_app(checkpoint_path, limits=limits)
    uvicorn.run(app, host=host, port=port, log_level="info")
