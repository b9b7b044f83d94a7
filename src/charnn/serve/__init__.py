"""`charnn serve`: an OpenAI-compatible HTTP API and a web page over one loaded model.

- `schemas`: the request and response bodies, error bodies and event-stream schemas;
- `app`: the FastAPI app (routes, error mapping, streaming) and `serve`, which runs it;
- `engine`: the background thread that advances every request together, a character per step;
- `static/index.html`: the web page.

    from charnn.config import ServeLimits
    from charnn.serve import create_app

    app = create_app("runs/ge", ServeLimits(max_streams=16))
"""

from charnn.serve.app import Service, create_app, serve

__all__ = ["Service", "create_app", "serve"]
