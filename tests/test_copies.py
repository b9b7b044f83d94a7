"""The copy report: a planted passage found exactly, nothing on unseen text, and a brute-force search's
answer on samples from a model that memorised its text."""

import json

import pytest

from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import load_corpus
from charnn.generation import generate_text
from charnn.run_folder import load_checkpoint
from charnn.scoring.copies import CopyIndex
from charnn.training import train
from conftest import TINY_TEXT, run_cli

TRAINING = (TINY_TEXT * 3 + "A door stood open on the left, and the fire burned low in the grate. ") * 2


def brute_force(text: str, training: str, min_length: int) -> tuple[int, float]:
    """(The longest piece of `text` found in `training`, the share of its characters in pieces of min_length+)."""
    longest, covered = 0, set()
    for start in range(len(text)):
        length = 0
        while start + length < len(text) and text[start : start + length + 1] in training:
            length += 1
        longest = max(longest, length)
        if length >= min_length:
            covered |= set(range(start, start + length))
    return longest, len(covered) / len(text)


def test_a_planted_passage_is_found_exactly(tmp_path):
    index = CopyIndex(TRAINING, tmp_path)
    planted = TRAINING.index("the fire burned")
    sample = "Zzz qqq 0123#" + TRAINING[planted : planted + 60] + "## ##"  # '#' is in no training text
    report = index.report(sample, min_length=30)
    assert (report.longest.start, report.longest.length) == (13, 60)
    assert TRAINING[report.longest.training_offset :].startswith(TRAINING[planted : planted + 60])
    assert report.spans == [(13, 73)] and report.share == pytest.approx(60 / len(sample))
    assert list(tmp_path.glob("suffix-array-*.npy"))  # built once, then read from the cache
    assert CopyIndex(TRAINING, tmp_path).report(sample, min_length=30) == report
    long = "#" + TRAINING[100:700] + "#"  # longer than one step of the search compares at once
    assert index.report(long).longest.length == 600 and index.report(long).spans == [(1, 601)]


def test_text_the_model_never_saw_copies_nothing(tmp_path):
    report = CopyIndex(TRAINING, tmp_path).report("Quixotic wizards jumped; 9 boxes vex 12 frogs!", min_length=10)
    assert report.share == 0.0 and report.spans == [] and report.longest.length < 10


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """A model trained until it recites its short text."""
    folder = tmp_path_factory.mktemp("memorised")
    (folder / "text.txt").write_text(TRAINING, encoding="utf-8")
    corpus = load_corpus(str(folder / "text.txt"))
    config = TrainConfig(seq_len=40, batch_size=8, epochs=60, lr=5e-3, seed=2, precision="fp32", val_fraction=0.0)
    train(corpus, ModelConfig(len(set(TRAINING)), embedding_dim=24, hidden_size=96), config, folder / "run")
    return folder / "run"


def test_the_report_agrees_with_a_brute_force_search_on_an_overfitted_model(memorised):
    ckpt = load_checkpoint(memorised)
    samples = generate_text(ckpt.model, ckpt.vocab, "“Pip", length=160, num_samples=4, seed=3, precision="fp32")
    index = CopyIndex(TRAINING)
    for sample in samples:
        report = index.report(sample, min_length=20)
        assert (report.longest.length, report.share) == pytest.approx(brute_force(sample, TRAINING, 20))
    assert max(index.report(s, min_length=20).share for s in samples) > 0.5  # it did memorise


def test_generate_and_evaluate_report_what_was_copied(memorised, tmp_path):
    done = run_cli("generate", str(memorised), "--prime", "“Pip", "--length", "160", "--seed", "3", "--json",
                   "--copy-min", "20")  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    expected = CopyIndex(TRAINING).report(out["samples"][0], min_length=20).to_dict()
    assert out["copies"] == [expected]
    (tmp_path / "sample.txt").write_text(out["samples"][0], encoding="utf-8")
    done = run_cli("evaluate", str(memorised), str(tmp_path / "sample.txt"), "--copy-min", "20", "--json")
    assert done.returncode == 0, done.stderr
    copies = json.loads(done.stdout)["copies"]
    assert (copies["longest"]["length"], copies["share"]) == (expected["longest"]["length"], expected["share"])
    done = run_cli("evaluate", str(memorised), str(tmp_path / "sample.txt"), "--copy-min", "20")
    assert f"copied from the training text: longest span {expected['longest']['length']:,} characters" in done.stdout
    done = run_cli("evaluate", str(memorised), str(tmp_path / "sample.txt"), "--copy-min", "0")
    assert done.returncode == 2 and "--copy-min must be at least 1, got 0" in done.stderr


def test_best_of_leaves_out_samples_that_copied_too_much(memorised):
    common = ["generate", str(memorised), "--prime", "“Pip", "--length", "120", "--seed", "1", "--best-of", "6",
              "--num-samples", "6", "--copy-min", "20", "--temperature", "1.5", "--json"]  # fmt: skip
    everything = json.loads(run_cli(*common).stdout)
    shares = [copies["share"] for copies in everything["copies"]]
    limit = sorted(shares)[2]  # some above it, some not
    done = run_cli(*common, "--max-copied", str(limit))
    assert done.returncode == 0, done.stderr
    kept = json.loads(done.stdout)
    assert kept["samples"] == [s for s, share in zip(everything["samples"], shares, strict=True) if share <= limit]
    assert all(copies["share"] <= limit for copies in kept["copies"]) and len(kept["samples"]) < 6
    done = run_cli("generate", str(memorised), "--max-copied", "0.5")
    assert done.returncode == 2 and "--max-copied chooses among the samples of --best-of" in done.stderr
    done = run_cli(*common, "--max-copied", "2")
    assert done.returncode == 2 and "--max-copied must be a share from 0 to 1, got 2.0" in done.stderr


def test_without_its_training_text_the_report_says_why(tiny_run, tmp_path):
    from charnn.checkpoint import save_checkpoint

    ckpt = load_checkpoint(tiny_run)
    save_checkpoint(tmp_path / "no-corpus", ckpt.model, ckpt.vocab, training=ckpt.training, corpus={})
    done = run_cli("generate", str(tmp_path / "no-corpus"), "--length", "20", "--seed", "1", "--json")
    notes = [line for line in done.stderr.splitlines() if "note:" in line and "kernel" not in line]
    assert done.returncode == 0 and not notes, done.stderr  # where the kernel cannot run, only that is noted
    out = json.loads(done.stdout)
    assert "copies" not in out and "does not say which corpus" in out["copies_unavailable"]
