"""Scale: `charnn prepare` on a large generated corpus, data loading from the memory map, and
training speed with one and two processes on this machine.

    CHARNN_CORPUS_DIR=../shared/corpora .venv/bin/python benchmarks/scale.py        # a 1 GB corpus
    .venv/bin/python benchmarks/scale.py --size-mb 100 --train-steps 8              # a smoke run

The corpus is Great Expectations (its text, without the Gutenberg licence) repeated up to
--size-mb, written under /tmp and deleted at the end; a built-in paragraph stands in when the
novel is not found. `prepare` runs in a fresh process: throughput is timed inside it, so
start-up is excluded (wall and CPU time both), and its peak memory is that process's VmHWM
(everything: interpreter, numpy, buffers). Rerunning it on the unchanged corpus is timed the
same way, and as a whole command with start-up.

Data loading: drawing (inputs, targets) batches of 64 x 100 from the memory map of the
prepared training text (the page cache is warm: the file was just written), beside the time of
a training step. Training: `charnn train DATA_DIR` on a --train-mb slice of the corpus (so the
final evaluation is short), the reference model (Embedding 256 -> GRU 1024, batch 64 x 100),
one process with every core's thread, one with a single thread, and `--nproc 2` (gloo, one
thread each), each --repeats times, for --train-steps steps or --minutes; characters/s
between the first and the last progress record, so start-up and evaluation are left out.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

FALLBACK = (
    "“Pip,” said Joe, “old chap! you and me was ever friends.” The marshes were dark — the river ran on, "
    "and Estella’s eyes, cold as the stars, never looked at me twice. Café, naïve, 你好.\n"
)
PREPARE_PROBE = """
import json, sys, time
from charnn.data.prepare import prepare
corpus, data = sys.argv[1:3]
wall, cpu = time.perf_counter(), time.process_time()
result = prepare(corpus, data)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) // 1024
print(json.dumps({"reused": result.reused, "wall": wall, "cpu": cpu, "peak_mib": peak, "manifest": result.manifest}))
"""


class CpuWatch:
    """CPU used meanwhile by this process and its children, and by everyone else (in cores)."""

    def __enter__(self):
        self.started = time.perf_counter()
        self.busy, self.mine = _busy_seconds(), _own_seconds()
        return self

    def __exit__(self, *exc):
        seconds = time.perf_counter() - self.started
        mine = _own_seconds() - self.mine
        self.cores_mine = mine / seconds
        self.cores_others = max(0.0, (_busy_seconds() - self.busy - mine) / seconds)


def _busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _own_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def generate(path: Path, size_mb: int) -> None:
    from charnn.data.corpus import load_corpus

    source = Path(os.environ.get("CHARNN_CORPUS_DIR", "")) / "great-expectations.txt"
    text = load_corpus(str(source)).text if source.is_file() else FALLBACK * 2000
    block = text.encode("utf-8")
    with open(path, "wb") as f:
        for _ in range((size_mb << 20) // len(block) + 1):
            f.write(block)


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(SRC), **extra)


def run_prepare(corpus: Path, data: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PREPARE_PROBE, str(corpus), str(data)], env=_env(),
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout)


def data_loading(data: Path, threads: int, batches: int = 300) -> tuple[float, float]:
    """Seconds to draw one batch of 64 x 100 from the memory map with `threads` PyTorch threads:
    windows touched for the first time (page faults), then the same windows again (mapped)."""
    import torch

    from charnn.data.batches import Batches
    from charnn.data.prepare import open_prepared

    torch.set_num_threads(threads)
    prepared = open_prepared(data)
    loader = Batches(torch.from_numpy(prepared.train), 64, 100, seed=1)
    timings = []
    for _ in range(2):
        epoch = loader.epoch(0)
        next(epoch)  # the epoch's permutation of windows is drawn once
        started = time.perf_counter()
        for _ in range(batches):
            next(epoch)
        timings.append((time.perf_counter() - started) / batches)
    return timings[0], timings[1]


def train_speed(data: Path, run: Path, steps: int, minutes: float, nproc: int, threads: int) -> dict:
    command = [sys.executable, "-m", "charnn", "train", str(data), "--out", str(run), "--max-steps", str(steps),
               "--time-limit", str(minutes), "--log-every-seconds", "2", "--threads", str(threads),
               "--overwrite"]  # fmt: skip
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    with CpuWatch() as watch:
        subprocess.run(command, env=_env(), capture_output=True, text=True, check=True)
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in logs if r["kind"] == "log"]
    first, last = logs[0], logs[-1]
    rate = (last["characters_seen"] - first["characters_seen"]) / (last["elapsed"] - first["elapsed"])
    newest = max(run.glob("ckpt_*"), key=lambda path: path.stat().st_mtime)
    precision = json.loads((newest / "checkpoint.json").read_text())["training"]["precision"]
    return {"nproc": nproc, "threads": threads, "chars_per_sec": rate, "steps_timed": last["step"] - first["step"],
            "precision": precision, "others": watch.cores_others}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the generated corpus (MiB)")
    parser.add_argument("--train-mb", type=int, default=20, help="MiB of it to train on")
    parser.add_argument("--train-steps", type=int, default=40, help="steps per training run")
    parser.add_argument("--minutes", type=float, default=1.5, help="time limit of each training run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each training set-up (the machine is noisy)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="charnn-scale-", dir="/tmp"))
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "python": platform.python_version()}  # fmt: skip
    try:
        corpus = folder / "corpus.txt"
        generate(corpus, args.size_mb)
        size = corpus.stat().st_size
        with CpuWatch() as watch:
            first = run_prepare(corpus, folder / "data")
        again = run_prepare(corpus, folder / "data")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "charnn", "prepare", str(corpus), "--out", str(folder / "data")],
                       env=_env(), capture_output=True, check=True)  # fmt: skip
        command_seconds = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import charnn.cli"], env=_env(), check=True)
        startup = time.perf_counter() - started
        m = first["manifest"]
        results["prepare"] = {
            "bytes": size, "characters": m["corpus"]["characters"], "vocabulary": len(m["vocabulary"]),
            "dtype": m["dtype"], "seconds": first["wall"], "cpu_seconds": first["cpu"],
            "mb_per_sec": size / 1e6 / first["wall"], "cpu_mb_per_sec": size / 1e6 / first["cpu"],
            "peak_mib": first["peak_mib"], "others_cores": watch.cores_others,
            "reuse_seconds": again["wall"], "reused": again["reused"], "reuse_peak_mib": again["peak_mib"],
            "reuse_command_seconds": command_seconds, "startup_seconds": startup,
        }  # fmt: skip
        cores = os.cpu_count() or 1
        results["batch_seconds"] = {threads: data_loading(folder / "data", threads) for threads in {cores, 1}}

        train_corpus = folder / "train.txt"
        with open(corpus, "rb") as source, open(train_corpus, "wb") as target:
            target.write(source.read(args.train_mb << 20).rsplit(b"\n", 1)[0] + b"\n")
        subprocess.run([sys.executable, "-m", "charnn", "prepare", str(train_corpus), "--out", str(folder / "small"),
                        "--val-fraction", "0.002"], env=_env(), capture_output=True, check=True)  # fmt: skip
        setups = [(1, cores), (1, 1), (2, 1)]
        results["train"] = [
            train_speed(folder / "small", folder / "run", args.train_steps, args.minutes, nproc, threads)
            for _ in range(args.repeats)
            for nproc, threads in setups
        ]
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    p = results["prepare"]
    print(f"machine: {results['machine']}, Python {results['python']}")
    print(f"\nprepare {p['bytes'] / 1e6:,.0f} MB ({p['characters']:,} characters, {p['vocabulary']} distinct, "
          f"{p['dtype']}):")  # fmt: skip
    print(f"  {'throughput (wall)':<34}{p['mb_per_sec']:>10.1f} MB/s  ({p['seconds']:.1f} s)")
    print(f"  {'throughput (CPU time)':<34}{p['cpu_mb_per_sec']:>10.1f} MB/s")
    print(f"  {'peak resident memory':<34}{p['peak_mib']:>10} MiB")
    print(f"  {'others on the machine':<34}{p['others_cores']:>10.2f} cores busy")
    print(f"  {'rerun, unchanged (in process)':<34}{p['reuse_seconds']:>10.3f} s")
    print(f"  {'rerun, whole command':<34}{p['reuse_command_seconds']:>10.3f} s  "
          f"(Python start-up and imports: {p['startup_seconds']:.3f} s)")  # fmt: skip
    print(f"\n{'training (GRU 1024, batch 64 x 100)':<40}{'chars/s':>9}{'step (s)':>10}{'batch (ms)':>12}"
          f"{'share':>8}  precision  others")  # fmt: skip
    for r in results["train"]:
        processes, threads = f"{r['nproc']} process" + "es" * (r["nproc"] > 1), f"{r['threads']} thread"
        label = f"{processes} x {threads}" + "s" * (r["threads"] > 1)
        step = 6400 / r["chars_per_sec"]
        batch = results["batch_seconds"][r["threads"]][0]
        print(f"  {label:<38}{r['chars_per_sec']:>9,.0f}{step:>10.2f}{batch * 1e3:>12.3f}{batch / step:>8.2%}  "
              f"{r['precision']:<9}  {r['others']:.2f} cores")  # fmt: skip
    print("\ndata loading, a batch of 64 x 100 from the memory map of the prepared training text:")
    for threads, (cold, warm) in results["batch_seconds"].items():
        print(f"  {threads} PyTorch thread{'s' * (threads > 1)}: {cold * 1e3:.3f} ms when its windows are first "
              f"touched, {warm * 1e3:.3f} ms once mapped")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
