"""Speed of charnn against plain PyTorch loops on this machine: one table, from one run.

Training: charnn's trainer (`charnn.training.train`, precision auto) against a plain fp32
Embedding -> nn.GRU -> Linear loop written here, at the reference configuration (batch 64,
window 100, embedding 256, GRU 1024). Generation: `charnn.generation.generate` against the plain
loop that calls the model once per character, for one stream and for 64 at once. Where auto
means int8, a row also shows int8 through PyTorch's operations instead of the compiled step.

The two sides of each row alternate, `--repeats` short rounds, and each keeps its best round:
other work on the machine then slows both alike instead of whichever happened to run during
it, and a quiet moment counts for both.

    PYTHONPATH=src python benchmarks/speed.py            # 2 to 8 minutes on 2 cores, with the load
    PYTHONPATH=src python benchmarks/speed.py --quick    # a smoke run: that it works, not how fast
    PYTHONPATH=src python benchmarks/speed.py --profile  # and where the time goes
    PYTHONPATH=src python benchmarks/speed.py --isa avx2 # the kernels' AVX2 path on a CPU that has more
    PYTHONPATH=src python benchmarks/speed.py --isa none # no compiled kernel: PyTorch's operations

--isa forces charnn's compiled kernels only (CHARNN_ISA; none is CHARNN_KERNELS=0): PyTorch's own
operations, the matrix products of training among them, still use all that the CPU offers.
"""

import argparse
import math
import os
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from charnn.config import ModelConfig, SampleConfig, TrainConfig
from charnn.data.batches import Batches
from charnn.data.corpus import Corpus, load_corpus
from charnn.errors import CorpusError
from charnn.fast import build
from charnn.fast.step import Stepper, int8_supported, resolve_step_precision
from charnn.generation import _generate, generate
from charnn.model import CharRNN
from charnn.sample import RandomStreams, sample_next
from charnn.training import train
from charnn.vocab import Vocabulary

BATCH, WINDOW = 64, 100
SAMPLING = SampleConfig(temperature=0.8)


class PlainModel(nn.Module):
    """The reference: what one writes first in PyTorch. Same parameter names as CharRNN."""

    def __init__(self, vocab_size: int, embedding_dim: int = 256, hidden_size: int = 1024, num_layers: int = 1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = nn.GRU(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens, state=None):
        x, state = self.rnn(self.embedding(tokens), state)
        return self.head(x), state


def load_text() -> Corpus:
    try:
        return load_corpus("great-expectations")
    except CorpusError:
        # No corpus here (no network, no CHARNN_CORPUS_DIR): speed does not depend on the text.
        generator = torch.Generator().manual_seed(0)
        letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"-\n0123456789()"
        picks = torch.randint(0, len(letters), (1_000_000,), generator=generator).tolist()
        return Corpus("random letters", "".join(letters[i] for i in picks))


def plain_training_rate(model: PlainModel, batches: Batches, steps: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    iterator = batches.epoch(0)
    times = []
    for _ in range(steps + 1):  # the first step warms up and is not counted
        inputs, targets = next(iterator)
        start = time.perf_counter()
        logits, _ = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        times.append(time.perf_counter() - start)
    return steps * BATCH * WINDOW / sum(times[1:])


def charnn_training_rate(corpus: Corpus, vocab: Vocabulary, steps: int, model: ModelConfig | None = None) -> float:
    """Characters per second of `train` itself, first to last step event; the reference model by default."""
    stamps = []

    def on_event(event) -> None:
        if event.kind == "step" or event.kind == "log":
            stamps.append(time.perf_counter())

    model = model or ModelConfig(len(vocab))
    config = TrainConfig(max_steps=steps + 1, val_fraction=0.0, log_every_seconds=1e9, precision="auto")
    with tempfile.TemporaryDirectory() as run_dir:
        train(corpus, model, config, Path(run_dir) / "run", on_event=on_event)
    return steps * BATCH * WINDOW / (stamps[-1] - stamps[0])


def plain_generation_rate(model: PlainModel, streams: int, length: int) -> float:
    uniforms = torch.rand(length, streams, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.inference_mode():
        logits, state = model(torch.zeros(streams, 1, dtype=torch.long))
        for i in range(length):
            chosen = sample_next(logits[:, -1], SAMPLING, uniforms[i])
            chosen.tolist()
            logits, state = model(chosen.unsqueeze(1), state)
    return streams * length / (time.perf_counter() - start)


def charnn_generation_rate(model: CharRNN, vocab: Vocabulary, streams: int, length: int, precision: str) -> float:
    start = time.perf_counter()
    if precision == "int8 (PyTorch ops)":  # the int8 path without the compiled step, for comparison
        prime = torch.from_numpy(vocab.encode(vocab.characters[0]))
        stepper = Stepper(model, "int8", compiled=False)
        steps = _generate(stepper, vocab, prime, length, SAMPLING, RandomStreams(0, streams))
    else:
        steps = generate(
            model,
            vocab,
            vocab.characters[0],
            length=length,
            sampling=SAMPLING,
            num_samples=streams,
            seed=0,
            precision=precision,
        )
    for _ in steps:
        pass
    return streams * length / (time.perf_counter() - start)


def best_of(repeats: int, measures: dict) -> dict:
    """Run each measure once per round, rounds alternating between them; keep each one's best."""
    best = dict.fromkeys(measures, 0.0)
    for _ in range(repeats):
        for name, measure in measures.items():
            best[name] = max(best[name], measure())
    return best


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, torch {torch.__version__}"


def step_breakdown(model: CharRNN, plain: PlainModel) -> None:
    """Microseconds per call of each piece of one-stream generation, best of 7 rounds."""

    def time_us(run, calls=500) -> float:
        run()
        best = math.inf
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(calls):
                run()
            best = min(best, (time.perf_counter() - start) / calls)
        return best * 1e6

    token = torch.zeros(1, dtype=torch.long)
    hidden = model.config.hidden_size
    logits = torch.randn(1, len(model.embedding.weight))
    uniform = torch.rand(1)
    print("\none stream, microseconds per call (best of 7 rounds of 500):")
    with torch.inference_mode():
        state = None
        for precision in ("fp32", "bf16", resolve_step_precision("auto", torch.device("cpu"))):
            stepper = Stepper(model, precision, compiled=False)  # PyTorch's operations, piece by piece
            h = stepper.init_state(1)
            stepper.step(token, h)
            w = stepper.weights
            gi, rz, n = stepper._gi, stepper._rz, stepper._n
            gh = w.layers[0].recurrent(h[0], stepper._gh)

            def gates(h=h[0], gi=gi, gh=gh, rz=rz, n=n):
                torch.add(gi[:, : 2 * hidden], gh[:, : 2 * hidden], out=rz).sigmoid_()
                torch.addcmul(gi[:, 2 * hidden :], rz[:, :hidden], gh[:, 2 * hidden :], out=n).tanh_()
                torch.lerp(n, h, rz[:, hidden:], out=h)

            pieces = {
                "whole step": lambda s=stepper, h=h: s.step(token, h),
                "recurrent product": lambda r=w.layers[0].recurrent, h=h, out=stepper._gh: r(h[0], out),
                "gates (5 ops)": gates,
                "output layer": lambda w=w, h=h, out=stepper._logits: w.head(h[0], out),
                "table lookup": lambda w=w, gi=gi: torch.index_select(w.table, 0, token, out=gi),
            }
            print(f"  charnn Stepper, {precision}: " + ", ".join(f"{k} {time_us(f):.1f}" for k, f in pieces.items()))
        compiled = Stepper(model, "int8") if int8_supported() else None
        if compiled is not None and compiled.fused is not None:
            h = compiled.init_state(1)
            whole = time_us(lambda: compiled.step(token, h))
            sampler = time_us(lambda: compiled.sample(logits, SAMPLING, uniform))
            print(f"  charnn compiled int8 step (charnn.fast.step): whole step {whole:.1f}, its sampler {sampler:.1f}")
        _, state = plain(token.unsqueeze(1))
        x = token.unsqueeze(1)
        print(f"  plain model(x, state) call: {time_us(lambda: plain(x, state)):.1f}")
        sampling = time_us(lambda: sample_next(logits, SAMPLING, uniform))
        print(f"  sample_next (temperature 0.8), in the plain loop and charnn fp32/bf16: {sampling:.1f}")


def profile(corpus: Corpus, vocab: Vocabulary, model: CharRNN, plain: PlainModel) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    def show(title, run) -> None:
        run()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        print(f"\n{title}\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    step_breakdown(model, plain)
    show("profile: charnn trainer, 3 steps", lambda: charnn_training_rate(corpus, vocab, 2))
    for streams, length in ((1, 500), (64, 50)):
        show(f"profile: charnn generation, {streams} stream(s), {length} characters, precision auto",
             partial(charnn_generation_rate, model, vocab, streams, length, "auto"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps: checks that it runs, not the speed")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating rounds per row (default 6, quick 1)")
    parser.add_argument("--profile", action="store_true", help="also print where charnn's time goes")
    parser.add_argument("--only", choices=("training", "generation"), help="measure only these rows")
    parser.add_argument("--isa", choices=("auto", *build.ISAS, "none"), default="auto",
                        help="the compiled kernels' instruction set (none: PyTorch's operations only)")  # fmt: skip
    args = parser.parse_args()
    if args.isa == "none":
        os.environ["CHARNN_KERNELS"] = "0"
    elif args.isa != "auto":
        os.environ["CHARNN_ISA"] = args.isa
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 6)
    train_steps, one_length, many_length = (2, 200, 20) if args.quick else (4, 1000, 100)

    corpus = load_text()
    vocab = Vocabulary.from_text(corpus.text)
    tokens = torch.from_numpy(vocab.encode(corpus.text))
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(len(vocab))).eval()
    plain = PlainModel(len(vocab))
    plain.load_state_dict(model.state_dict())
    auto = resolve_step_precision("auto", torch.device("cpu"))
    print(f"machine: {machine()}")
    print(f"corpus: {corpus.name}, {len(vocab)} symbols; generation precision auto = {auto}; repeats {repeats}")
    isas = {role: build.chosen_isa(role) or "PyTorch's operations" for role in (build.GENERATION, build.TRAINING)}
    print(f"kernels: generation {isas[build.GENERATION]}, training {isas[build.TRAINING]}")

    rows = []
    if args.only != "generation":
        batches = Batches(tokens, BATCH, WINDOW)
        # The reference model, and a two-layer one (the recurrence serves stacked GRUs too).
        for label, layers, hidden, target in (
            ("batch 64 x window 100", 1, 1024, 3),
            ("the same, 2 x GRU 512", 2, 512, None),
        ):
            train_model = PlainModel(len(vocab), hidden_size=hidden, num_layers=layers)
            model_config = ModelConfig(len(vocab), hidden_size=hidden, num_layers=layers)
            rates = best_of(repeats, {
                "plain": partial(plain_training_rate, train_model, batches, train_steps),
                "charnn": partial(charnn_training_rate, corpus, vocab, train_steps, model_config),
            })  # fmt: skip
            rows.append((f"training, {label}", rates["plain"], rates["charnn"], "precision auto", target))
    for streams, length, target in ((1, one_length, 4), (64, many_length, 3)) if args.only != "training" else ():
        precisions = ["fp32", "bf16", auto] + (["int8 (PyTorch ops)"] if auto == "int8" else [])
        for precision in ("fp32", "bf16", auto):
            Stepper(model, precision)  # weights are prepared once per model, as in a server: not timed
        measures = {"plain": partial(plain_generation_rate, plain, streams, length)}
        for precision in precisions:
            measures[precision] = partial(charnn_generation_rate, model, vocab, streams, length, precision)
        rates = best_of(repeats, measures)
        label = f"generation, {streams} stream{'s' if streams > 1 else ''}"
        rows.append((label, rates["plain"], rates[auto], f"precision auto ({auto})", target))
        for precision in precisions:
            if precision != auto:
                rows.append((label, rates["plain"], rates[precision], f"precision {precision}", None))

    print()
    header = ("what (characters/s)", "plain loop", "charnn", "ratio", "charnn setting", "target")
    print("| {:<34}| {:>11} | {:>9} | {:>6} | {:<30}| {} |".format(*header))
    print(f"|{'-' * 35}|{'-' * 13}|{'-' * 11}|{'-' * 8}|{'-' * 31}|--------|")
    for what, base, ours, setting, target in rows:
        ratio = ours / base
        verdict = "" if target is None else f">= {target}x {'met' if ratio >= target else 'NOT met'}"
        print(f"| {what:<34}| {base:>11,.0f} | {ours:>9,.0f} | {ratio:>5.2f}x | {setting:<30}| {verdict} |")

    if args.profile:
        profile(corpus, vocab, model, plain)


if __name__ == "__main__":
    main()
