"""charnn serve: the HTTP API and the page that tries it, for one checkpoint."""

import argparse

from charnn.cli.flags import add_config_flags, checkpoint, config_from_args
from charnn.config import ServeLimits
from charnn.errors import CharnnError


def add_parser(commands) -> None:
    p = commands.add_parser("serve", help="serve an HTTP API and a web page for a checkpoint", parents=[checkpoint()],
                            description="Serve the model: an HTTP API (/v1/generate, OpenAI's /v1/completions, "
                            "/docs) and a page to try it at /.")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: every core; the web "
                   "server's own work is small, see docs/results.md)")  # fmt: skip
    add_config_flags(p, ServeLimits)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from charnn.serve import serve
    except ImportError as error:
        raise CharnnError(f"charnn serve needs FastAPI and uvicorn ({error}); pip install 'charnn[serve]'") from None

    limits = config_from_args(args, ServeLimits)
    serve(args.checkpoint, host=args.host, port=args.port, limits=limits, threads=args.threads)
    return 0
