"""Shared fixtures: tiny corpora written by the tests themselves, and a tiny trained run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# The models here are tiny: one thread beats two that wait on each other, and a busy
# machine (two cores) hurts a spinning thread pool most.
torch.set_num_threads(1)

# The tests talk to servers on loopback (httpx, urllib, schemathesis, Chromium): never through a
# proxy that the environment may name for the outside world.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join(
    filter(None, ["127.0.0.1", "localhost", os.environ.get("NO_PROXY") or os.environ.get("no_proxy")])
)

# Non-ASCII text and curly quotes on purpose: the vocabulary is characters, not bytes.
TINY_TEXT = (
    "“Pip,” said Joe, “old chap! 你好.” The marshes were dark; the river ran on.\n"
    "Estella’s eyes — cold as the stars — never looked at me twice.\n"
)

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT * 40, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder trained for a few steps on a small text with a small model."""
    from charnn.config import ModelConfig, TrainConfig
    from charnn.data.corpus import load_corpus
    from charnn.training import train
    from charnn.vocab import Vocabulary

    folder = tmp_path_factory.mktemp("run")
    corpus_path = folder / "corpus.txt"
    corpus_path.write_text(TINY_TEXT * 40, encoding="utf-8")
    corpus = load_corpus(str(corpus_path))
    vocab = Vocabulary.from_text(corpus.text)
    model_config = ModelConfig(vocab_size=len(vocab), embedding_dim=16, hidden_size=32)
    config = TrainConfig(seq_len=20, batch_size=8, epochs=2, seed=1, precision="fp32")
    train(corpus, model_config, config, folder / "run")
    return folder / "run"


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300, input_text: str | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m charnn ARGS` in a real subprocess (`input_text` on its standard input)."""
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "charnn", *args],
        capture_output=True,
        text=True,
        input=input_text,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
