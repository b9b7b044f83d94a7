"""`charnn serve`: an OpenAI-compatible HTTP API and a web page over one loaded model.

- `app`: `create_app` (the routes) and `serve`, which runs the app under uvicorn;
- `service`: the loaded model, its engine and scoring thread, and the slots of requests in flight;
- `generate`, `completions`: the two generation APIs (`/v1/generate`, and OpenAI's `/v1/completions`
  with its log-probabilities);
- `events`: a job's events on their way to the client, streamed or collected, for both APIs;
- `errors`: the error body every mistake comes back in;
- `schemas`: the request and response bodies, error bodies and event-stream schemas;
- `engine`: the background thread that advances every request together, a character per step;
- `static/index.html`: the web page.

    from charnn.config import ServeLimits
    from charnn.serve import create_app

    app = create_app("runs/ge", ServeLimits(max_streams=16))
"""

from charnn.serve.app import create_app, serve
from charnn.serve.service import Service

__all__ = ["Service", "create_app", "serve"]
