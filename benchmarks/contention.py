"""Training and generation on a machine whose cores are busy with other work (issue 29).

Whole commands, start-up included, timed as a user would meet them: `charnn train TEXT
--max-steps N` (from random weights, the reference model) and `charnn generate CKPT --length L`
(one stream), each with and without other processes keeping cores busy
(`python3 -c 'while True: pass'`, one or two of them). Each setting's rate is set beside its
own idle rate; the conditions alternate within each round, so a quiet moment counts for all.

    CHARNN_CORPUS_DIR=../shared/corpora PYTHONPATH=src python benchmarks/contention.py
    ... --setting "2 threads=--threads 2" --setting "passive=--threads 2;OMP_WAIT_POLICY=PASSIVE"

A setting is NAME=FLAGS[;VAR=VALUE...]: flags given to both commands, and environment variables.
"""

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY = [sys.executable, "-c", "while True: pass"]


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def parse_setting(text: str) -> tuple[str, list[str], dict[str, str]]:
    name, _, rest = text.partition("=")
    flags, *variables = rest.split(";")
    return name, shlex.split(flags), dict(v.split("=", 1) for v in variables if v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default="great-expectations", help="a text file or corpus name")
    parser.add_argument("--steps", type=int, default=25, help="training steps per run")
    parser.add_argument("--length", type=int, default=20_000, help="characters per generation run")
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="busy processes in each condition")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--setting", action="append", default=None, help="NAME=FLAGS[;VAR=VALUE...] (repeatable)")
    parser.add_argument("--only", choices=("train", "generate"), default=None)
    parser.add_argument("--train-args", default="", help="more flags for `charnn train` alone (e.g. a smaller model)")
    args = parser.parse_args()
    settings = [parse_setting(s) for s in args.setting or ["default="]]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; text {args.text}, "
          f"{args.steps} steps, {args.length:,} characters generated; {args.rounds} rounds")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        charnn = [sys.executable, "-m", "charnn"]
        run = Path(tmp) / "run"
        base_env = dict(os.environ)
        # A checkpoint to generate from (not timed).
        more = shlex.split(args.train_args)
        subprocess.run([*charnn, "train", args.text, "--init-from", "none", "--max-steps", "2", "--out", str(run),
                        "--overwrite", *more], check=True, env=base_env, stdout=subprocess.DEVNULL)  # fmt: skip
        kinds = {
            "train": lambda flags: [*charnn, "train", args.text, "--init-from", "none", "--max-steps", str(args.steps),
                                    "--out", str(Path(tmp) / "timed"), "--overwrite", *more, *flags],
            "generate": lambda flags: [*charnn, "generate", str(run / "best"), "--length", str(args.length),
                                       "--prime", "The ", *flags],
        }  # fmt: skip
        kinds = {k: v for k, v in kinds.items() if args.only in (None, k)}
        best: dict[tuple, float] = {}
        for _ in range(args.rounds):
            for busy in args.busy:
                hogs = [subprocess.Popen(BUSY) for _ in range(busy)]
                try:
                    for kind, command in kinds.items():
                        for name, flags, variables in settings:
                            seconds = timed(command(flags), {**base_env, **variables})
                            work = args.steps if kind == "train" else args.length
                            key = (kind, name, busy)
                            best[key] = max(best.get(key, 0.0), work / seconds)
                finally:
                    for hog in hogs:
                        hog.kill()
                        hog.wait()

    print("\n| command | setting | busy processes | rate (whole runs) | of its idle rate |\n|---|---|---|---:|---:|")
    for (kind, name, busy), rate in best.items():
        unit = "steps/s" if kind == "train" else "characters/s"
        idle = best.get((kind, name, 0))
        share = f"{rate / idle:.0%}" if idle else ""
        print(f"| {kind} | {name} | {busy} | {rate:,.2f} {unit} | {share} |")


if __name__ == "__main__":
    main()
