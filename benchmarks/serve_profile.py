"""Where a server's time goes under N streaming clients: py-spy samples of `charnn serve`, sorted into parts.

Starts `charnn serve` as `serve_load.py` does, runs N streaming clients for a while, and samples
the server with py-spy (every thread, idle ones too) meanwhile. Each sample is put in one part,
by the innermost frame that names it (the engine thread's step, sampling and bookkeeping; the
event loop's JSON and SSE framing, starlette and uvicorn, asyncio, waiting in epoll), and the
table gives each part's share of the run's wall time per thread. The load generator's own CPU
comes from /proc, as in serve_load.py.

    pip install py-spy  # not a dependency of charnn
    .venv/bin/python benchmarks/serve_profile.py --clients 32 --duration 15
"""

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import free_port, reference_checkpoint, run_level, start_server  # noqa: E402

# (thread, part, what marks it): the first match, innermost frame first, names a sample's part.
PARTS = [
    ("engine", "compiled step (GIL released)", ("fused_step", "_fused_step")),
    ("engine", "compiled sampler", ("in sample (charnn/fast/step.py",)),
    ("engine", "prompt pass (prefill)", ("prefill",)),
    ("engine", "random draws", ("_uniforms", "RandomStreams", "_draw")),
    ("engine", "text out: decode, stops, events", ("_flush", "_deliver_text", "_held_back", "_send", "_finish_rows")),
    ("engine", "waiting for work", ("wait (threading.py",)),
    ("engine", "bookkeeping (other Python)", ("_advance", "_run")),
    ("loop", "JSON and SSE framing", ("_sse", "dumps", "_chunk", "encode (json", "iterencode")),
    ("loop", "engine events into queues", ("_deliver", "put_nowait", "_coalesced", "_events")),
    ("loop", "request parsing and validation", ("validate", "pydantic", "fastapi/routing.py", "request_models")),
    ("loop", "starlette and uvicorn (send, HTTP)", ("starlette", "uvicorn", "httptools", "anyio")),
    ("loop", "waiting in uvloop (idle)", ("Runner.run (asyncio/runners.py",)),
]


MODES = {"wall": ["--idle"], "cpu": [], "gil": ["--gil"]}


def part(stack: list[str]) -> tuple[str, str]:
    thread = "engine" if "charnn-engine" in stack[0] else "loop"
    for frame in reversed(stack):
        for owner, name, marks in PARTS:
            if owner == thread and any(m in frame for m in marks):
                return thread, name
    return thread, "other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent streaming clients (default: 32)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load (default: 15)")
    parser.add_argument("--max-new-chars", type=int, default=2000, help="characters per request (default: 2000)")
    parser.add_argument("--threads", type=int, default=None, help="the server's --threads (default: charnn serve's)")
    parser.add_argument("--keep", type=Path, default=None, help="copy py-spy's raw profiles into this folder")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="the py-spy program")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = reference_checkpoint(Path(tmp))
        port = free_port()
        with open(Path(tmp) / "server.log", "w") as log:
            server = start_server(checkpoint, port, args.threads, max(64, args.clients), log)
            try:
                url = f"http://127.0.0.1:{port}"
                asyncio.run(run_level(url, 1, 2.0, 50, 0, server.pid))  # warm up
                # Three samplers at once: every thread whatever it does (wall time), only threads
                # on a CPU, and only the thread that holds the GIL.
                spies = []
                for kind, flag in MODES.items():
                    command = [args.py_spy, "record", "--pid", str(server.pid), "--threads", "--nonblocking"]
                    command += [*flag, "--rate", "100", "--duration", str(int(args.duration))]
                    command += ["--format", "raw", "-o", str(Path(tmp) / f"{kind}.txt")]
                    run = threading.Thread(target=subprocess.run, args=(command,), kwargs={"capture_output": True})
                    spies.append(run)
                for spy in spies:
                    spy.start()
                row = asyncio.run(run_level(url, args.clients, args.duration, args.max_new_chars, 1, server.pid))
                for spy in spies:
                    spy.join()
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    for kind in MODES:
                        shutil.copy(Path(tmp) / f"{kind}.txt", args.keep / f"{kind}.txt")
                profiles = {kind: (Path(tmp) / f"{kind}.txt").read_text().splitlines() for kind in MODES}
            finally:
                server.terminate()
                server.wait(timeout=30)
    counts = {kind: collections.Counter() for kind in MODES}
    for kind, lines in profiles.items():
        for line in lines:
            stack, _, n = line.rpartition(" ")
            counts[kind][part(stack.split(";"))] += int(n)
    wall = counts["wall"]
    totals = collections.Counter()
    for (thread, _), n in wall.items():
        totals[thread] += n
    gil_total = sum(counts["gil"].values())
    print(f"{args.clients} clients, {row['chars_per_s']:,.0f} chars/s, {row['errors']} errors, "
          f"first char p99 {1000 * row['first_p99']:.0f} ms; CPU server / load generator / others: "
          f"{row['server_cpu']:.0%} / {row['client_cpu']:.0%} / {row['others_cpu']:.0%} of a core")  # fmt: skip
    print("| thread | part | wall time | on a CPU | holding the GIL (share of all GIL samples) |")
    print("|---|---|---:|---:|---:|")
    for key, n in sorted(wall.items(), key=lambda item: (item[0][0], -item[1])):
        thread, name = key
        on_cpu, gil = counts["cpu"][key] / totals[thread], counts["gil"][key] / max(1, gil_total)
        print(f"| {thread} | {name} | {n / totals[thread]:.1%} | {on_cpu:.1%} | {gil:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
