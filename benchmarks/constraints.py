"""The cost of a constraint per character: generation with and without a ban or an allowed set.

For one stream and for --streams streams, on the compiled int8 step where the CPU has it
(`precision auto`), each arm the best of --repeats rounds, the arms alternating:

    python benchmarks/constraints.py CHECKPOINT --threads 1
"""

import argparse
import platform
import time

import torch

from charnn.config import SampleConfig
from charnn.constraints import ban_bias
from charnn.generation import generate_text
from charnn.run_folder import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--length", type=int, default=3000, help="characters of the one-stream rows")
    parser.add_argument("--streams", type=int, default=64)
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
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print(f"checkpoint: {ckpt.path}; characters/s, best of {args.repeats}")
    print("| streams | " + " | ".join(arms) + " |\n|---|" + "---:|" * len(arms))
    for streams, length in ((1, args.length), (args.streams, max(1, args.length // 10))):
        best = dict.fromkeys(arms, 0.0)
        for round_ in range(args.repeats):
            for name, sampling in arms.items():
                started = time.perf_counter()
                generate_text(ckpt.model, ckpt.vocab, "The ", length=length, sampling=sampling, num_samples=streams,
                              seed=round_)  # fmt: skip
                best[name] = max(best[name], streams * length / (time.perf_counter() - started))
        print(f"| {streams} | " + " | ".join(f"{best[name]:,.0f}" for name in arms) + " |", flush=True)


if __name__ == "__main__":
    main()
