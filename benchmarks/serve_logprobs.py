"""What `logprobs` costs the server: fp32 scoring beside the generation step it rides along with.

A model of the reference's size (Embedding 256 -> GRU 1024 -> Linear over Great Expectations'
characters, freshly initialised: speed does not depend on what the weights learned), one thread.
Rows: one stream's generation (`charnn.generation.generate_text`, the engine's step, int8 where
the CPU computes it fast), and `charnn.scoring.score.ContinuationScorer` (what the server runs for
`logprobs`, the plain model in fp32) fed the same number of characters in pieces of 1 (a stream
read character by character), 20 (about what one 20 ms delivery holds) and all at once (a
non-streamed answer). Each row keeps the best of --repeats rounds.

    CHARNN_CORPUS_DIR=../shared/corpora PYTHONPATH=src python benchmarks/serve_logprobs.py
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import machine  # noqa: E402

from charnn.config import ModelConfig, SampleConfig  # noqa: E402
from charnn.data.corpus import load_corpus  # noqa: E402
from charnn.generation import generate_text  # noqa: E402
from charnn.model import CharRNN  # noqa: E402
from charnn.scoring.score import ContinuationScorer  # noqa: E402
from charnn.vocab import Vocabulary  # noqa: E402


def best_rate(work, chars: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return chars / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=2000, help="characters per round (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per row, best kept (default 3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden-size", type=int, default=1024, help="GRU width (default: the reference's 1024)")
    parser.add_argument("--embedding-dim", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    corpus_dir = Path(os.environ.get("CHARNN_CORPUS_DIR", "../shared/corpora"))
    vocab = Vocabulary.from_text(load_corpus(str(corpus_dir / "great-expectations.txt")).text)
    config = ModelConfig(vocab_size=len(vocab), embedding_dim=args.embedding_dim, hidden_size=args.hidden_size)
    model = CharRNN(config).eval()
    text = generate_text(model, vocab, "Pip", length=args.chars, sampling=SampleConfig(1.0), seed=1)[0]

    def scored(piece: int):
        def work():
            scorer = ContinuationScorer(model, vocab, "Pip", top_k=5)
            for start in range(0, len(text), piece):
                scorer.feed(text[start : start + piece])

        return work

    rows = [("generation, 1 stream (the engine's step)", lambda: generate_text(model, vocab, "Pip", length=args.chars))]
    rows += [(f"logprobs 5, fp32, pieces of {p}", scored(p)) for p in (1, 20, args.chars)]
    print(machine())
    print(f"GRU {args.hidden_size}, threads {args.threads}, {args.chars} characters a round, best of {args.repeats}")
    print(f"{'row':45} {'chars/s':>10}")
    for name, work in rows:
        print(f"{name:45} {best_rate(work, args.chars, args.repeats):10,.0f}")


if __name__ == "__main__":
    main()
