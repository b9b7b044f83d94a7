"""Load benchmark for `charnn serve`: N concurrent streaming clients on loopback, for a bounded time,
beside `charnn generate --num-samples N` on the same model in the same run.

Starts `charnn serve` in a subprocess on 127.0.0.1 with a reference-size model (Embedding 256 ->
GRU 1024 -> Linear over 82 characters; random weights unless --checkpoint is given: speed does
not depend on what the weights have learned), then for each client count runs that many
clients, each sending one streaming `POST /v1/generate` after another for --duration seconds.
Requests still running at the deadline finish and count. Prints requests/s, characters/s,
latency to the first and to the last character (p50/p99), and errors; then, right after each
count, the rate of `charnn generate --num-samples N` (N = the client count; the CLI run in a
subprocess, timed around its generation: a run of length 1 is subtracted, which removes
start-up and loading) and the server's share of it.

Characters per CPU-second (the server's, and generate's over all its threads) compare the
two when other programs share the machine and take a varying share of its cores.

    .venv/bin/python benchmarks/serve_load.py --clients 1,8,32,64 --duration 15
"""

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Pip",
    "My father was called Pirrip, and my name",
    "It was a dark night",
    "Joe said, ",
    "Estella looked at me",
    "The marshes were",
    "Miss Havisham",
    "I never saw",
]


def reference_checkpoint(folder: Path) -> Path:
    """A checkpoint of the reference model's size, with random weights (speed is all we measure)."""
    import torch

    from charnn.checkpoint import save_checkpoint
    from charnn.config import ModelConfig
    from charnn.model import CharRNN
    from charnn.vocab import Vocabulary

    corpora = Path(os.environ.get("CHARNN_CORPUS_DIR") or ROOT.parent / "shared" / "corpora")
    corpus = corpora / "great-expectations.txt"
    if corpus.is_file():
        vocab = Vocabulary.from_text(corpus.read_text(encoding="utf-8"))  # the reference's 82 characters
    else:
        vocab = Vocabulary(tuple("\n" + "".join(chr(c) for c in range(32, 127))))  # printable ASCII: 96 characters
    assert not vocab.unknown("".join(PROMPTS))
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(vocab)))
    training = {"note": "random weights, for the load benchmark"}
    return save_checkpoint(folder / "reference", model, vocab, training=training, corpus={"name": "none"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, port: int, threads: int | None, max_streams: int, log) -> subprocess.Popen:
    command = [sys.executable, "-m", "charnn", "serve", str(checkpoint), "--port", str(port)]
    command += ["--max-streams", str(max_streams)]
    if threads:
        command += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}; see its log")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit("the server did not start within 120 s")


class Connection:
    """One keep-alive HTTP/1.1 connection. A bare client on purpose: the load generator shares the
    machine with the server, and every cycle it spends parsing is one the server does not get."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post_stream(self, path: str, body: dict):
        """Send a POST; yield each server-sent event's data (bytes) as it arrives."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n")  # fmt: skip
        self.writer.write(head.encode() + payload)
        status = int((await self.reader.readline()).split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if status != 200:
            size = int(headers.get("content-length", "0"))
            text = (await self.reader.readexactly(size)).decode("utf-8", "replace")
            raise RuntimeError(f"HTTP {status}: {text[:200]}")
        if headers.get("transfer-encoding") != "chunked":
            raise RuntimeError(f"expected a chunked event stream, got headers {headers}")
        buffer = b""
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()  # the empty trailer: the connection is ready for the next request
                return
            buffer += (await self.reader.readexactly(size + 2))[:-2]
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: "):
                    raise RuntimeError(f"not a server-sent event: {event[:100]!r}")
                yield event[6:]

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None


async def one_request(connection: Connection, body: dict) -> tuple[float, float, int]:
    """(seconds to the first character, seconds to the last, characters); raises on any fault."""
    start = time.perf_counter()
    first = last = None
    characters = 0
    done = False
    try:
        async for data in connection.post_stream("/v1/generate", body):
            if data == b"[DONE]":
                done = True
                continue
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            if event.get("text"):
                now = time.perf_counter()
                first = first if first is not None else now
                last = now
                characters += len(event["text"])
    except BaseException:
        await connection.close()  # a half-read response leaves the connection unusable
        raise
    if not done or characters != body["max_new_chars"]:
        raise RuntimeError(f"stream ended early: {characters} characters, [DONE] {'seen' if done else 'missing'}")
    return first - start, last - start, characters


# Times `charnn generate` in a process of its own, as the CLI runs it; stdout goes to /dev/null.
_GENERATE = """
import contextlib, os, sys, time
from charnn.cli import main
checkpoint, samples, length = sys.argv[1], sys.argv[2], int(sys.argv[3])
def run(n):
    argv = ["generate", checkpoint, "--num-samples", samples, "--length", str(n), "--seed", "1", "--prime", "Pip"]
    with open(os.devnull, "w") as out, contextlib.redirect_stdout(out):
        start, cpu = time.perf_counter(), time.process_time()
        assert main(argv) == 0
        return time.perf_counter() - start, time.process_time() - cpu
run(1)
(wall, cpu), short = run(length), [run(1), run(1)]
characters = int(samples) * (length - 1)
print(characters / (wall - min(s[0] for s in short)), characters / (cpu - min(s[1] for s in short)))
"""


def generate_rate(checkpoint: Path, num_samples: int, characters: int) -> tuple[float, float]:
    """New characters a second of `charnn generate --num-samples N` (about `characters` in all), and
    per second of CPU time (all its threads)."""
    length = max(200, characters // num_samples)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    command = [sys.executable, "-c", _GENERATE, str(checkpoint), str(num_samples), str(length)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    wall, cpu = done.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), sum(ticks) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_level(base_url: str, clients: int, duration: float, max_new_chars: int, seed: int, pid: int) -> dict:
    rng = random.Random(seed)
    cpu_server, cpu_client, (busy, total) = cpu_seconds(pid), own_cpu_seconds(), machine_cpu_seconds()
    results: list[tuple[float, float, int]] = []
    errors: list[str] = []
    host, port = base_url.removeprefix("http://").split(":")
    start = time.perf_counter()
    deadline = start + duration

    async def user():
        connection = Connection(host, int(port))
        while time.perf_counter() < deadline:
            body = {"prompt": rng.choice(PROMPTS), "max_new_chars": max_new_chars, "temperature": 0.8,
                    "seed": rng.randrange(2**31), "stream": True}  # fmt: skip
            try:
                results.append(await asyncio.wait_for(one_request(connection, body), 120))
            except Exception as error:  # every failure counts as an error, whatever it is
                errors.append(f"{type(error).__name__}: {error}")
        await connection.close()

    await asyncio.gather(*(user() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    cpu_server, cpu_client = cpu_seconds(pid) - cpu_server, own_cpu_seconds() - cpu_client
    busy_after, total_after = machine_cpu_seconds()
    others = (busy_after - busy) - cpu_server - cpu_client  # what other programs used meanwhile
    firsts = sorted(r[0] for r in results)
    lasts = sorted(r[1] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "seconds": elapsed,
        "requests_per_s": len(results) / elapsed,
        "chars_per_s": sum(r[2] for r in results) / elapsed,
        "first_p50": percentile(firsts, 50),
        "first_p99": percentile(firsts, 99),
        "last_p50": percentile(lasts, 50),
        "last_p99": percentile(lasts, 99),
        "errors": len(errors),
        "server_cpu": cpu_server / elapsed,
        "chars_per_cpu_s": sum(r[2] for r in results) / max(cpu_server, 1e-9),
        "client_cpu": cpu_client / elapsed,
        "others_cpu": max(0.0, others) / elapsed,
        "machine_busy": (busy_after - busy) / (total_after - total),
        "error_examples": sorted(set(errors))[:3],
    }


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8,32,64", help="comma-separated client counts (default: 1,8,32,64)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per client count (default: 15)")
    parser.add_argument("--max-new-chars", type=int, default=2000, help="characters per request (default: 2000)")
    what = "characters of `charnn generate` timed per client count; 0 skips it (default: 60000)"
    parser.add_argument("--generate-chars", type=int, default=60_000, help=what)
    parser.add_argument("--threads", type=int, default=None, help="the server's --threads (default: charnn serve's)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="serve this instead of a random reference model")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or reference_checkpoint(Path(tmp))
        port = free_port()
        with open(Path(tmp) / "server.log", "w") as log:
            server = start_server(checkpoint, port, args.threads, max(64, max(counts)), log)
            try:
                base_url = f"http://127.0.0.1:{port}"
                asyncio.run(run_level(base_url, 1, 2.0, 50, 0, server.pid))  # warm up
                rows = []
                for count in counts:
                    row = asyncio.run(run_level(base_url, count, args.duration, args.max_new_chars, count, server.pid))
                    # Right after the load, while the machine's other work is much the same.
                    rate, per_cpu = (0.0, 0.0)
                    if args.generate_chars:
                        rate, per_cpu = generate_rate(checkpoint, count, args.generate_chars)
                    rows.append(row | {"generate_chars_per_s": rate, "generate_chars_per_cpu_s": per_cpu})
                    print_row(rows[-1], rows[0], header=len(rows) == 1)
            finally:
                server.terminate()
                server.wait(timeout=30)
    for row in rows:
        for example in row["error_examples"]:
            print(f"  error with {row['clients']} clients: {example}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any(row["errors"] for row in rows) else 0


def print_row(row: dict, base: dict, header: bool) -> None:
    if header:
        print("| clients | requests | requests/s | chars/s | vs 1 client | generate, N samples: chars/s "
              "| server / generate | chars per CPU-second: server / generate (ratio) | first char p50 / p99 (ms) "
              "| last char p50 / p99 (ms) | errors | CPU server / client / others |")  # fmt: skip
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ms = lambda s: f"{1000 * s:,.0f}"  # noqa: E731
    rate = row["generate_chars_per_s"]
    versus = f"{rate:,.0f} | {row['chars_per_s'] / rate:.0%}" if rate else "- | -"
    per_cpu, own = row["generate_chars_per_cpu_s"], row["chars_per_cpu_s"]
    versus += f" | {own:,.0f} / {per_cpu:,.0f} ({own / per_cpu:.0%})" if rate else " | -"
    print(
        f"| {row['clients']} | {row['requests']} | {row['requests_per_s']:.2f} | {row['chars_per_s']:,.0f} "
        f"| {row['chars_per_s'] / base['chars_per_s']:.1f}× | {versus} "
        f"| {ms(row['first_p50'])} / {ms(row['first_p99'])} "
        f"| {ms(row['last_p50'])} / {ms(row['last_p99'])} | {row['errors']} "
        f"| {row['server_cpu']:.0%} / {row['client_cpu']:.0%} / {row['others_cpu']:.0%} |",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
