"""How often does batching change a character? The engine under concurrent load vs `generate_text`.

Rows computed in a batch can differ from rows computed alone in the last bit of a float (the
CPU's matrix kernels depend on the batch size), which changes a character only when a random
draw lands within that rounding of a boundary between two characters. This submits requests
of mixed prompts, temperatures and sample counts at staggered times to one engine, on a
reference-size model (Embedding 256 -> GRU 1024 -> Linear; random weights), and compares
every sample with what `generate_text` gives for the same seed.

    .venv/bin/python benchmarks/serve_exactness.py --requests 150
"""

import argparse
import asyncio
import random
from pathlib import Path

import torch

from charnn.config import ModelConfig, SampleConfig
from charnn.generation import generate_text
from charnn.model import CharRNN
from charnn.serve.engine import Engine, JobDone, JobFailed, Request, SampleText
from charnn.vocab import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Pip", "My father was called Pirrip, and my name", "It was a dark night", "Joe said, ", "Miss Havisham"]


async def served(model, vocab, requests, rng) -> list[list[str]]:
    engine = Engine(model, vocab)
    engine.start(asyncio.get_running_loop())

    async def collect(job):
        texts = [""] * job.request.num_samples
        while not isinstance(event := await job.queue.get(), JobDone):
            if isinstance(event, JobFailed):
                raise RuntimeError(event.message)
            if isinstance(event, SampleText):
                texts[event.sample] += event.text
        return texts

    try:
        tasks = []
        for request in requests:
            tasks.append(asyncio.ensure_future(collect(engine.submit(request))))
            await asyncio.sleep(rng.random() * 0.05)  # arrivals at random moments: batches of every size
        return await asyncio.gather(*tasks)
    finally:
        engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--length", type=int, default=200, help="characters per sample (default: 200)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    corpus = ROOT.parent / "shared" / "corpora" / "great-expectations.txt"
    if corpus.is_file():
        vocab = Vocabulary.from_text(corpus.read_text(encoding="utf-8"))
    else:
        vocab = Vocabulary(tuple("\n" + "".join(chr(c) for c in range(32, 113))))
    model = CharRNN(ModelConfig(vocab_size=len(vocab))).eval()
    rng = random.Random(0)
    requests = [
        Request(
            rng.choice(PROMPTS),
            args.length,
            SampleConfig(rng.choice([0.0, 0.5, 0.8, 1.0])),
            rng.choice([1, 1, 2]),
            rng.randrange(10**6),
        )  # fmt: skip
        for _ in range(args.requests)
    ]
    results = asyncio.run(served(model, vocab, requests, rng))
    samples = characters = differing = 0
    for request, texts in zip(requests, results, strict=True):
        alone = generate_text(model, vocab, request.prompt, length=request.max_new_chars, sampling=request.sampling,
                              num_samples=request.num_samples, seed=request.seed)  # fmt: skip
        for text, expected in zip(texts, alone, strict=True):
            samples += 1
            characters += len(expected)
            differing += text != expected
    print("| requests | samples | characters | samples that differ from generate_text |")
    print("|---:|---:|---:|---:|")
    print(f"| {len(requests)} | {samples} | {characters:,} | {differing} |")


if __name__ == "__main__":
    main()
