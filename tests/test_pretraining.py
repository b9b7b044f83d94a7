"""The pretraining corpus: its manifest keeps out what the project measures on, and the rebuild
script turns raw Project Gutenberg files into exactly the texts the manifest describes."""

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SRC

ROOT = SRC.parent
PRETRAINING = ROOT / "pretraining"
SCRIPT = ROOT / "pretraining" / "build_corpus.py"

RAW = (
    "\ufeffThe Project Gutenberg EBook of A Small Tale, by Ann Author\r\n\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK A SMALL TALE ***\r\n\r\n"
    "Produced by Some Volunteers\r\n\r\n"
    "A SMALL TALE\r\n\r\n“It was dark,” she said — and it was.\r\n\r\n"
    "End of the Project Gutenberg EBook of A Small Tale\r\n\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK A SMALL TALE ***\r\n\r\nLicence text.\r\n"
)
CLEANED = "A SMALL TALE\n\n“It was dark,” she said — and it was.\n"


def rows(name: str) -> list[dict]:
    with (ROOT / "pretraining" / name).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def write_manifest(path: Path, text: str) -> None:
    digest = hashlib.sha256(text.encode()).hexdigest()
    path.write_text(
        "file\ttitle\tauthor\tgutenberg_id\tsource\tcharacters\tsha256\n"
        f"99999.txt\tA Small Tale\tAnn Author\t99999\tgithub:someone/books:tales/99999.txt\t{len(text)}\t{digest}\n",
        encoding="utf-8",
    )


def build(raw_dir: Path, manifest: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    command = [sys.executable, str(SCRIPT), str(raw_dir), "--manifest", str(manifest), "--out", str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True)


def test_the_script_rebuilds_a_text_exactly(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "99999.txt").write_bytes(RAW.encode("utf-8"))
    write_manifest(tmp_path / "manifest.tsv", CLEANED)
    done = build(raw, tmp_path / "manifest.tsv", tmp_path / "texts")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "texts" / "99999.txt").read_text(encoding="utf-8") == CLEANED


def test_a_text_that_differs_from_its_manifest_is_reported_and_not_written(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "99999.txt").write_bytes(RAW.replace("dark", "light").encode("utf-8"))
    write_manifest(tmp_path / "manifest.tsv", CLEANED)
    done = build(raw, tmp_path / "manifest.tsv", tmp_path / "texts")
    assert done.returncode == 1
    assert "MISMATCH 99999.txt" in done.stderr
    assert not (tmp_path / "texts" / "99999.txt").exists()


def test_the_manifest_holds_no_dickens_no_shakespeare_and_no_evaluation_author():
    corpus, held_out = rows("manifest.tsv"), rows("eval-manifest.tsv")
    assert sum(int(row["characters"]) for row in corpus) >= 100_000_000
    authors = " ".join(row["author"].lower() for row in corpus)
    for name in ("dickens", "shakespeare", *(row["author"].split()[-1].lower() for row in held_out)):
        assert name not in authors
    titles = {row["title"].lower() for row in corpus}
    assert not titles & {"great expectations", "david copperfield", "hard times", "the mystery of edwin drood"}
    assert len({row["sha256"] for row in corpus}) == len(corpus)  # no text twice


def test_the_manifest_holds_none_of_the_shared_corpora():
    shared = os.environ.get("CHARNN_CORPUS_DIR")
    if not shared:
        pytest.skip("CHARNN_CORPUS_DIR is not set (scripts/test.sh sets it where ../shared/corpora exists)")
    from charnn.data.corpus import load_corpus

    digests = {hashlib.sha256(load_corpus(str(p)).text.encode()).hexdigest() for p in Path(shared).rglob("*.txt")}
    assert digests
    assert not digests & {row["sha256"] for row in rows("manifest.tsv")}


def test_export_stores_the_weight_average_in_half_precision_with_its_card(tmp_path):
    """pretraining/export_base.py on a numbered checkpoint: the run's weight average, float16, scored."""
    from charnn.checkpoint import WEIGHTS, load_trainer_state, read_metadata
    from charnn.run_folder import load_checkpoint
    from charnn.training.average import averaged_weights
    from conftest import TINY_TEXT, run_cli

    corpus, novels = tmp_path / "corpus.txt", tmp_path / "novels"
    corpus.write_text(TINY_TEXT * 40, encoding="utf-8")
    novels.mkdir()
    (novels / "unseen.txt").write_text(TINY_TEXT.replace("Pip", "Ned") * 30, encoding="utf-8")
    small = ["--hidden-size", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-len", "20"]
    done = run_cli("train", str(corpus), "--out", str(tmp_path / "run"), "--max-steps", "4", "--ema", "0.5",
                   "--checkpoint-every", "2", "--precision", "fp32", *small)  # fmt: skip
    assert done.returncode == 0, done.stderr
    numbered = tmp_path / "run" / "ckpt_1_2"
    assert read_metadata(numbered)["training"]["weights"] == "raw"
    command = [sys.executable, str(PRETRAINING / "export_base.py"), str(numbered), "--eval-dir", str(novels),
               "--machine", "a test", "--out", str(tmp_path / "base")]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "the weight average of step 2" in done.stdout
    with open(tmp_path / "base" / WEIGHTS, "rb") as f:
        assert b'"F16"' in f.read(int.from_bytes(f.read(8), "little") + 8) and b'"F32"' not in f.read()
    exported, raw = load_checkpoint(tmp_path / "base"), load_checkpoint(numbered)
    assert exported.training["weights"] == "ema" and "state" not in exported.training
    state, share = load_trainer_state(numbered), raw.training["config"]["ema_init_share"]
    average = averaged_weights(state["ema"], state["initial"], 0.5, 2, share)
    for weight, averaged in zip(exported.model.parameters(), average, strict=True):
        assert torch.equal(weight, averaged.half().float())
    assert not all(torch.equal(a, b) for a, b in zip(average, raw.model.parameters(), strict=True))
    card = (tmp_path / "base" / "README.md").read_text(encoding="utf-8")
    assert "| unseen |" in card and "CC0" in card and "a test" in card
