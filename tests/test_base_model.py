"""The base model that ships with charnn: found by name, readable at once, where `charnn train` starts."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

import charnn
from charnn.checkpoint import WEIGHTS, read_checkpoint, read_metadata, save_checkpoint
from charnn.config import ModelConfig
from charnn.model import CharRNN
from charnn.run_folder import BASE_MODEL, load_checkpoint, resolve
from charnn.training.finetuning import BASE_COVERAGE, base_coverage, default_start
from charnn.vocab import Vocabulary
from conftest import TINY_TEXT, run_cli

ENGLISH = (
    "It was the best of times for the small town by the river. The mill had work again, and the "
    "children ran to the school at eight o’clock. “Will you come?” asked the miller’s daughter.\n"
)


def test_the_name_base_finds_the_shipped_model_unless_a_folder_has_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve(Path("base")) == BASE_MODEL
    (tmp_path / "base").mkdir()  # a folder of the user's own comes first
    with pytest.raises(charnn.CharnnError, match="holds no checkpoint"):
        resolve(Path("base"))


def test_the_base_is_stored_in_half_precision_and_loads_as_float32():
    with open(BASE_MODEL / WEIGHTS, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert {entry["dtype"] for name, entry in header.items() if name != "__metadata__"} == {"F16"}
    base = load_checkpoint(Path("base"))
    assert all(p.dtype == torch.float32 for p in base.model.parameters())
    assert (base.config.embedding_dim, base.config.hidden_size, base.config.cell) == (256, 1024, "gru")
    for character in "“”‘’—éà":  # what English books print, beyond ASCII
        assert character in base.vocab


def test_half_precision_storage_round_trips(tmp_path):
    vocab = Vocabulary.from_text("abc")
    model = CharRNN(ModelConfig(vocab_size=3, embedding_dim=4, hidden_size=8))
    save_checkpoint(tmp_path / "ckpt", model, vocab, training={}, corpus={}, storage=torch.float16)
    loaded = read_checkpoint(tmp_path / "ckpt").model
    for name, weight in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], weight.half().float())


def test_the_card_says_what_it_was_trained_on_and_how_well_it_does():
    card = charnn.load("base").card()
    assert "pretraining/manifest.tsv" in card and "CC0" in card
    table = [line for line in card.splitlines() if line.startswith("| ") and "%" in line]
    assert len(table) >= 4  # the evaluation novels, each beside its 5-gram
    evaluation = read_metadata(BASE_MODEL)["evaluation"]
    assert all(row["loss"] < row["gzip_loss"] for row in evaluation)
    info = run_cli("info", "base")
    assert info.returncode == 0, info.stderr
    assert "CC0" in info.stdout


def test_generate_base_writes_english_at_once():
    """Most words of a sample are real English words: here, words Great Expectations uses (the base
    never saw it)."""
    corpus = Path(os.environ.get("CHARNN_CORPUS_DIR", Path(__file__).parents[2] / "shared" / "corpora"))
    known = set(re.findall(r"[a-z]+", (corpus / "great-expectations.txt").read_text(encoding="utf-8").lower()))
    shares = []
    for seed in range(3):
        done = run_cli("generate", "base", "--prime", "The ", "--length", "300", "--seed", str(seed))
        assert done.returncode == 0, done.stderr
        words = re.findall(r"[a-z]+", done.stdout.lower())
        shares.append(sum(word in known for word in words) / len(words))
    assert min(shares) > 0.6 and sum(shares) / len(shares) > 0.75, shares


def test_a_text_in_english_starts_from_the_base_and_others_from_random_weights():
    assert default_start(ENGLISH * 3, {}, None).parent == BASE_MODEL
    assert default_start(ENGLISH, {"hidden_size": 1024}, "tuned").parent == BASE_MODEL  # the same shape
    for text, options, preset, why in [
        (ENGLISH, {}, "seed", "seed preset"),
        (ENGLISH, {"hidden_size": 512}, None, "`hidden_size` 512 differs"),
        (None, {}, None, "prepared data"),
        ("Война и мир. " * 20, {}, None, "knows only"),
    ]:
        start = default_start(text, options, preset)
        assert start.parent is None and why in start.reason and "random weights" in start.reason


def test_coverage_counts_characters_with_their_repeats():
    assert base_coverage("aaab", {"a"}) == 0.75
    assert base_coverage("", {"a"}) == 0.0
    assert 0 < BASE_COVERAGE < 1


def test_charnn_train_fine_tunes_the_base_by_default_and_says_so(tmp_path):
    corpus = tmp_path / "mine.txt"
    corpus.write_text(ENGLISH * 30 + TINY_TEXT, encoding="utf-8")  # 你 and 好: new characters
    small = ["--max-steps", "1", "--batch-size", "2", "--seq-len", "20", "--precision", "fp32"]
    done = run_cli("train", str(corpus), "--out", str(tmp_path / "run"), *small)
    assert done.returncode == 0, done.stderr
    assert "fine-tuning the base model" in done.stderr and "--init-from none" in done.stderr
    start = next(line for line in (done.stdout + done.stderr).splitlines() if line.startswith("training: "))
    assert "per epoch; fp32, " in start and start.endswith((" thread", " threads")), start  # how the steps are computed
    tuned = load_checkpoint(tmp_path / "run")
    assert tuned.training["init_from"]["path"] == str(BASE_MODEL)
    assert set(tuned.training["init_from"]["added_characters"]) >= {"你", "好"}
    assert tuned.model.config.dropout == 0.15  # the default preset's, as for any run
    scratch = run_cli("train", str(corpus), "--out", str(tmp_path / "scratch"), "--init-from", "none", *small)
    assert scratch.returncode == 0, scratch.stderr
    assert "init_from" not in load_checkpoint(tmp_path / "scratch").training
    assert load_checkpoint(tmp_path / "scratch").vocab == Vocabulary.from_text(corpus.read_text(encoding="utf-8"))


def test_three_lines_of_python(tmp_path):
    corpus = tmp_path / "mine.txt"
    corpus.write_text(ENGLISH * 30, encoding="utf-8")
    base = charnn.load("base")
    assert len(base.generate("The ", length=50, seed=1)) == 50
    mine = base.finetune(corpus, tmp_path / "run", max_steps=1, batch_size=2, seq_len=20, precision="fp32")
    assert mine.checkpoint.training["init_from"]["path"] == str(BASE_MODEL)
