"""The cost of a constraint per character: generation with and without a ban, an allowed set or
a required phrase, alone and in the server's batch.

Alone: `generate_text` for one stream and for --streams streams, on the compiled int8 step where
the CPU has it (`precision auto`). In the batch: the server's engine running --streams rows, all
free, against the same with one request of them constrained (its rows' text is the batch's pace,
since every row takes each step together). Each arm the best of --repeats rounds, the arms alternating:

    python benchmarks/constraints.py CHECKPOINT --threads 1
"""

import argparse
import asyncio
import platform
import time

import torch

from charnn.config import SampleConfig
from charnn.constraints import ban_bias, required_phrases
from charnn.generation import generate_text
from charnn.run_folder import load_checkpoint
from charnn.serve.engine import Engine, JobDone, Request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--length", type=int, default=3000, help="characters of the one-stream rows")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--constrained", type=int, default=4, help="rows of the constrained request in the batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    arms = {
        "free": SampleConfig(0.8),
        "--ban eE": SampleConfig(0.8, logit_bias=ban_bias(ckpt.vocab, ban="eE")),
        "--allow a-m[:space:][:punct:]": SampleConfig(
            0.8, logit_bias=ban_bias(ckpt.vocab, allow="a-m[:space:][:punct:]")
        ),
    }
    required = {"--require Pip": ("Pip",)}
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print(f"checkpoint: {ckpt.path}; characters/s, best of {args.repeats}")
    names = [*arms, *required]
    print("| where | streams | " + " | ".join(names) + " |\n|---|---|" + "---:|" * len(names))
    for streams, length in ((1, args.length), (args.streams, max(1, args.length // 10))):
        best = dict.fromkeys(names, 0.0)
        for round_ in range(args.repeats):
            for name in names:
                sampling = arms.get(name, arms["free"])
                started = time.perf_counter()
                generate_text(ckpt.model, ckpt.vocab, "The ", length=length, sampling=sampling, num_samples=streams,
                              seed=round_, require=required.get(name, ()))  # fmt: skip
                best[name] = max(best[name], streams * length / (time.perf_counter() - started))
        print(f"| alone | {streams} | " + " | ".join(f"{best[name]:,.0f}" for name in names) + " |", flush=True)
    length, best = max(1, args.length // 10), dict.fromkeys(names, 0.0)
    for _ in range(args.repeats):
        for name in names:
            rate = asyncio.run(_batch(ckpt, arms, required, name, args.streams, length, args.constrained))
            best[name] = max(best[name], rate)
    print(f"| batch, one request of {args.constrained} rows as named | {args.streams} | "
          + " | ".join(f"{best[name]:,.0f}" for name in names) + " |", flush=True)  # fmt: skip


async def _batch(ckpt, arms, required, name: str, streams: int, length: int, constrained: int = 4) -> float:
    """Characters a second of the engine's batch: `streams` rows, `constrained` of them in one request
    constrained as `name` says (none for "free"), the rest in a free one, all submitted together."""
    engine = Engine(ckpt.model, ckpt.vocab)
    engine.start(asyncio.get_running_loop())
    sampling = arms.get(name, arms["free"])
    phrases = required.get(name, ())
    rule = required_phrases(ckpt.vocab, phrases, length=length, within=None, logit_bias=(), rows=constrained)
    try:
        started = time.perf_counter()
        jobs = [
            engine.submit(Request("The ", length, arms["free"], streams - constrained, seed=1)),
            engine.submit(Request("The ", length, sampling, constrained, seed=2, required=rule)),
        ]
        for job in jobs:
            while not isinstance(await job.queue.get(), JobDone):
                pass
        return streams * length / (time.perf_counter() - started)
    finally:
        engine.stop()


if __name__ == "__main__":
    main()
