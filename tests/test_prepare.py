"""Prepared data: the same text and vocabulary as load_corpus, bounded memory, reuse, errors."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charnn.cli import main
from charnn.config import ModelConfig, TrainConfig
from charnn.data.batches import Batches
from charnn.data.corpus import load_corpus, train_length
from charnn.data.prepare import MANIFEST, TRAIN, VAL, open_prepared, prepare
from charnn.errors import ConfigError, CorpusError, DataDirError
from charnn.training import resume, train
from charnn.vocab import Vocabulary
from conftest import SRC, TINY_TEXT

GUTENBERG = (
    "\ufeffThe Project Gutenberg eBook of X\r\nlicence — $5 @ £\r\n"
    "*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\n\r\n\r\nChapter I\r\n“Pip,” said Joe. 你好 🙂\r\n"
    "Lone\rcarriage return.\r\n\r\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\r\nmore licence ©\r\n"
)


def assert_same_as_load_corpus(spec: str, data_dir: Path, val_fraction: float = 0.1) -> None:
    """The prepared folder holds exactly what the in-memory path would train on."""
    corpus = load_corpus(spec)
    vocab = Vocabulary.from_text(corpus.text)
    tokens = torch.from_numpy(vocab.encode(corpus.text))
    cut = train_length(len(tokens), val_fraction)
    data = open_prepared(data_dir)
    assert data.vocab == vocab
    assert torch.equal(torch.from_numpy(data.train).long(), tokens[:cut])
    assert torch.equal(torch.from_numpy(data.val).long(), tokens[cut:])
    assert data.vocab.decode(data.train) + data.vocab.decode(data.val) == corpus.text  # the memory map decodes back
    assert data.sha256 == corpus.sha256
    assert data.characters == len(corpus.text)


@pytest.mark.parametrize("chunk_bytes", [1, 3, 7, 64, 1 << 22])
@pytest.mark.parametrize(
    "text",
    [TINY_TEXT * 3, GUTENBERG, "no newline at the end, “quoted” 你好", "\r\n\r\nonly\r\n\r\n", "a\r"],
    ids=["tiny", "gutenberg", "no-newline", "crlf-runs", "trailing-cr"],
)
def test_prepared_text_equals_load_corpus(tmp_path, text, chunk_bytes):
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    prepare(str(path), tmp_path / "data", chunk_bytes=chunk_bytes)
    assert_same_as_load_corpus(str(path), tmp_path / "data")


def test_a_folder_and_another_encoding(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "b.txt").write_bytes(GUTENBERG.encode("utf-8"))
    (folder / "a.txt").write_bytes("\n\nfirst “book”\n\n\n".encode())
    (folder / "c.txt").write_bytes(b"\n\n")
    prepare(str(folder), tmp_path / "data", chunk_bytes=5, val_fraction=0.3)
    assert_same_as_load_corpus(str(folder), tmp_path / "data", 0.3)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café crème\r\n".encode("latin-1") * 50)
    prepare(str(latin), tmp_path / "latin", encoding="latin-1", chunk_bytes=7)
    latin_data = open_prepared(tmp_path / "latin")
    assert latin_data.vocab.decode(latin_data.train).startswith("café crème\n")


def test_smallest_dtype_that_fits(tmp_path):
    path = tmp_path / "wide.txt"
    path.write_text("".join(chr(0x4E00 + i) for i in range(300)) * 3 + "\n", encoding="utf-8")
    manifest = prepare(str(path), tmp_path / "data").manifest
    assert manifest["dtype"] == "uint16" and manifest["byte_order"] == "little"
    assert (tmp_path / "data" / TRAIN).stat().st_size == 2 * manifest["train_tokens"]
    assert_same_as_load_corpus(str(path), tmp_path / "data")


ATOMS = ["a", "b", " ", "\n", "\r", "\r\n", "*", "*** START OF X", "***START OF", "*** END OF Y", "***END OF",
         "\n*** START OF IT ***\n", "\n*** END OF IT ***\n", "é", "你好", "“", "🙂", "\ufeff", "\n\n"]  # fmt: skip


# No deadline and no example database (kept in the current folder): see tests/test_fuzz.py.
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.lists(st.sampled_from(ATOMS), max_size=25).map("".join), min_size=1, max_size=3),
    st.booleans(),
    st.sampled_from([1, 2, 3, 5, 11, 4096]),
    st.sampled_from([0.0, 0.1, 0.5]),
)
def test_any_text_in_any_chunks_equals_load_corpus(texts, folder, chunk_bytes, val_fraction):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        for i, text in enumerate(texts if folder else texts[:1]):
            (tmp / "src" / f"{i}.txt").write_bytes(text.encode("utf-8"))
        spec = str(tmp / "src") if folder else str(tmp / "src" / "0.txt")
        try:
            load_corpus(spec)
        except CorpusError as error:  # an empty corpus: the same refusal
            with pytest.raises(CorpusError) as caught:
                prepare(spec, tmp / "data", chunk_bytes=chunk_bytes)
            assert str(caught.value) == str(error)
            return
        prepare(spec, tmp / "data", val_fraction=val_fraction, chunk_bytes=chunk_bytes)
        assert_same_as_load_corpus(spec, tmp / "data", val_fraction)


def test_an_unchanged_corpus_is_not_read_again(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_TEXT * 10, encoding="utf-8")
    first = prepare(str(path), tmp_path / "data")
    written = (tmp_path / "data" / TRAIN).stat().st_mtime_ns
    again = prepare(str(path), tmp_path / "data")
    assert again.reused and not first.reused and again.manifest == first.manifest
    assert (tmp_path / "data" / TRAIN).stat().st_mtime_ns == written
    path.write_text(TINY_TEXT * 11, encoding="utf-8")  # changed: prepared again
    changed = prepare(str(path), tmp_path / "data")
    assert not changed.reused and changed.manifest["corpus"]["characters"] == len(TINY_TEXT) * 11
    assert not prepare(str(path), tmp_path / "data", val_fraction=0.2).reused  # another split: prepared again
    assert not [p for p in (tmp_path / "data").iterdir() if p.name not in (MANIFEST, TRAIN, VAL)]
    # Killed mid-way: no manifest, a temporary file left. Prepared again, not refused.
    (tmp_path / "data" / MANIFEST).unlink()
    (tmp_path / "data" / ".train.bin.tmp-999").write_bytes(b"partial")
    assert not prepare(str(path), tmp_path / "data", val_fraction=0.2).reused
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted([MANIFEST, TRAIN, VAL])


def prepare_fails(capsys, *argv) -> str:
    assert main(["prepare", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charnn: error: "), lines
    return lines[0]


def test_prepare_errors_are_one_line(capsys, tmp_path):
    out = str(tmp_path / "data")
    assert "no such file" in prepare_fails(capsys, str(tmp_path / "none.txt"), "--out", out)
    (tmp_path / "bad.txt").write_bytes(b"good text " * 1000 + b"\xff")
    assert "byte 10000 is not valid utf-8" in prepare_fails(capsys, str(tmp_path / "bad.txt"), "--out", out)
    (tmp_path / "empty.txt").write_bytes(b"")
    assert "empty" in prepare_fails(capsys, str(tmp_path / "empty.txt"), "--out", out)
    assert "unknown encoding" in prepare_fails(capsys, str(tmp_path / "bad.txt"), "--out", out, "--encoding", "nope")
    assert not (tmp_path / "data").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.md").write_text("mine")
    (tmp_path / "good.txt").write_text(TINY_TEXT, encoding="utf-8")
    assert "other files" in prepare_fails(capsys, str(tmp_path / "good.txt"), "--out", str(tmp_path / "busy"))
    assert (tmp_path / "busy" / "notes.md").read_text() == "mine"
    assert main(["prepare", str(tmp_path / "good.txt"), "--out", out]) == 0
    assert "train with: charnn train" in capsys.readouterr().err
    (tmp_path / "other.txt").write_text(TINY_TEXT, encoding="utf-8")
    assert "another corpus" in prepare_fails(capsys, str(tmp_path / "other.txt"), "--out", out)
    assert main(["prepare", str(tmp_path / "other.txt"), "--out", out, "--overwrite"]) == 0
    assert "up to date" not in capsys.readouterr().err
    assert "--val-fraction" in prepare_fails(capsys, str(tmp_path / "good.txt"), "--out", out, "--val-fraction", "1")


def test_prepare_never_imports_torch(tmp_path):
    (tmp_path / "corpus.txt").write_text(TINY_TEXT * 10, encoding="utf-8")
    code = (
        "import sys; from charnn.cli import main\n"
        f"assert main(['prepare', {str(tmp_path / 'corpus.txt')!r}, '--out', {str(tmp_path / 'data')!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'prepare imported torch'\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / MANIFEST).is_file()


MEMORY_PROBE = """
import sys, time
from charnn.cli import main

def status(key):  # MiB; VmHWM is this process's own peak (ru_maxrss would carry the parent's over exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith(key + ":")).split()[1]) // 1024

def bytes_read():  # by this process's read calls so far, from disk or the page cache alike
    return int(next(l for l in open("/proc/self/io") if l.startswith("rchar:")).split()[1])

corpus, data = sys.argv[1:3]
assert main(["prepare", corpus, "--out", data]) == 0
peak_prepare = status("VmHWM")
started, read_before = time.perf_counter(), bytes_read()
assert main(["prepare", corpus, "--out", data]) == 0  # unchanged: reused
reuse, reuse_read = time.perf_counter() - started, bytes_read() - read_before

import torch
from charnn.data.batches import Batches
from charnn.data.prepare import open_prepared

prepared = open_prepared(data)
batches = Batches(torch.from_numpy(prepared.train), 64, 100, seed=1)
epoch = batches.epoch(0)
next(epoch)
anon, mapped = status("RssAnon"), status("RssFile")
for step, (inputs, targets) in zip(range(10), epoch):
    assert inputs.shape == (64, 100)
print(peak_prepare, reuse, reuse_read, status("RssAnon") - anon, status("RssFile") - mapped, len(prepared.train))
"""


def test_prepare_of_200_mb_stays_under_300_mib_and_batches_read_only_their_windows():
    """A generated 200 MB corpus: peak RSS of the whole prepare process, what a reuse reads, and what a
    memory-mapped epoch adds: no copy of the text (anonymous memory). File-backed pages around
    each window are mapped too (how many depends on the kernel's page-cache folios); those are
    the page cache, shared and dropped under memory pressure, so they are reported, not bounded."""
    folder = Path(tempfile.mkdtemp(prefix="charnn-200mb-", dir="/tmp"))
    try:
        block = ("".join(TINY_TEXT.replace("Pip", f"Pip{i % 10}") for i in range(200)) + "\r\n").encode("utf-8")
        with open(folder / "big.txt", "wb") as f:
            for _ in range((200 << 20) // len(block) + 1):
                f.write(block)
        env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
        done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(folder / "big.txt"), str(folder / "data")],
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        peak_mib, reuse_seconds, reuse_read, anon_mib, mapped_mib, train_tokens = done.stdout.split()
        print(f"\nprepare: peak RSS {peak_mib} MiB, reused in {float(reuse_seconds):.3f} s reading "
              f"{int(reuse_read):,} bytes; 10 batches: +{anon_mib} MiB anonymous, "
              f"+{mapped_mib} MiB mapped")  # fmt: skip
        assert int(train_tokens) > 150_000_000  # characters: some take several bytes
        assert int(peak_mib) < 300
        # An unchanged corpus is not read again (counted in bytes, not timed: the same on any machine).
        assert int(reuse_read) < (folder / "big.txt").stat().st_size // 1000
        assert int(anon_mib) < 32  # batches gather their windows: the text is never copied into memory
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- training from prepared data ------------------------------------------------------------


def _small(vocab) -> ModelConfig:
    return ModelConfig(len(vocab), embedding_dim=16, hidden_size=32, num_layers=2, dropout=0.1)


CONFIG = TrainConfig(seq_len=20, batch_size=8, epochs=2, max_steps=12, precision="fp32", seed=4, threads=1,
                     checkpoint_every=5, eval_every=5)  # fmt: skip


def test_training_on_prepared_data_equals_training_on_the_text(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_TEXT * 40, encoding="utf-8")
    corpus = load_corpus(str(path))
    data = open_prepared(prepare(str(path), tmp_path / "data").data_dir)
    from_text = train(corpus, _small(data.vocab), CONFIG, tmp_path / "text")
    from_data = train(data, _small(data.vocab), CONFIG, tmp_path / "data-run")
    assert [h["loss"] for h in from_text.history] == [h["loss"] for h in from_data.history]
    assert from_text.best_val_loss == from_data.best_val_loss
    record = json.loads((from_data.last_checkpoint / "checkpoint.json").read_text())["corpus"]
    assert record["prepared"] == str((tmp_path / "data").resolve()) and record["sha256"] == corpus.sha256

    # Resume and evaluate find the prepared data again through the checkpoint.
    resumed = resume(tmp_path / "data-run", {"max_steps": 15})
    assert resumed.last_checkpoint.name == "ckpt_1_15"
    from charnn.data.dataset import of_checkpoint
    from charnn.run_folder import load_checkpoint

    data_again = of_checkpoint(load_checkpoint(tmp_path / "data-run"))
    cut = len(corpus.text) - int(len(corpus.text) * 0.1)
    assert data_again.training_text() == corpus.text[:cut] and data_again.held_out_text() == corpus.text[cut:]

    # Preparing a changed corpus into the same folder is caught on resume.
    path.write_text(TINY_TEXT * 41, encoding="utf-8")
    prepare(str(path), tmp_path / "data")
    with pytest.raises(CorpusError, match="has changed"):
        resume(tmp_path / "data-run", {"max_steps": 20})


def test_a_different_split_from_the_prepared_one_is_refused(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_TEXT * 40, encoding="utf-8")
    data = open_prepared(prepare(str(path), tmp_path / "data", val_fraction=0.2).data_dir)
    with pytest.raises(ConfigError, match="`val_fraction`"):
        train(data, _small(data.vocab), CONFIG, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_prepare_then_train_and_evaluate(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(TINY_TEXT * 40, encoding="utf-8")
    assert main(["prepare", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "data")]) == 0
    small = ["--embedding-dim", "8", "--hidden-size", "16", "--seq-len", "10", "--batch-size", "4", "--precision",
             "fp32", "--max-steps", "6", "--threads", "1"]  # fmt: skip
    assert main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *small]) == 0
    assert "data " in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["characters"] == int(len(TINY_TEXT) * 40 * 0.1)
    with pytest.raises(DataDirError):
        prepare(str(tmp_path / "corpus.txt"), tmp_path / "run")  # a run folder is not a data folder


def test_batches_over_a_memory_map_equal_batches_over_a_tensor(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_TEXT * 40, encoding="utf-8")
    data = open_prepared(prepare(str(path), tmp_path / "data").data_dir)
    mapped = Batches(torch.from_numpy(data.train), 8, 20, seed=2)
    loaded = Batches(torch.from_numpy(np.array(data.train, dtype=np.int64)), 8, 20, seed=2)
    for (a, b), (c, d) in zip(mapped.epoch(1), loaded.epoch(1), strict=True):
        assert torch.equal(a, c) and torch.equal(b, d) and a.dtype == torch.long
