"""Every checkpoint folder carries its model card (README.md), written from its metadata."""

import json
import shutil

from charnn.card import CARD, model_card
from charnn.checkpoint import read_checkpoint, read_metadata
from charnn.run_folder import resolve
from conftest import run_cli


def test_a_trained_checkpoint_carries_a_card_that_says_what_it_is(tiny_run):
    path = resolve(tiny_run)
    card = (path / CARD).read_text(encoding="utf-8")
    ckpt = read_checkpoint(path)
    metadata = read_metadata(path)
    assert card.startswith(f"# {path.name}: a charnn model")
    assert f"Embedding 16 → GRU 32 → Linear to {len(ckpt.vocab)} characters" in card
    assert f"{ckpt.model.num_parameters():,} parameters" in card
    assert f"{metadata['corpus']['characters']:,} characters" in card
    assert metadata["corpus"]["sha256"][:16] in card
    assert f"{metadata['training']['best_val_loss']:.4f} nats/char" in card
    assert f"charnn generate {path.name}" in card


def test_a_folder_written_before_cards_gets_the_same_card_from_its_metadata(tiny_run, tmp_path):
    old = tmp_path / "old" / resolve(tiny_run).name  # the same name: the card is named for its folder
    shutil.copytree(resolve(tiny_run), old)
    written = (old / CARD).read_text(encoding="utf-8")
    (old / CARD).unlink()
    assert read_checkpoint(old).card() == written


def test_a_fine_tuned_model_names_its_parent_and_an_evaluation_shows_beside_the_baselines(tiny_run):
    metadata = read_metadata(resolve(tiny_run))
    metadata["training"]["init_from"] = {"path": "/runs/parent/best", "weights_sha256": "ab" * 32,
                                         "added_characters": ["é", "ü"]}  # fmt: skip
    metadata["evaluation"] = {"text": "a novel", "characters": 1000, "loss": 1.1, "ngram_loss": 1.5, "gzip_loss": 2.3}
    card = model_card(metadata, "best", parameters=10)
    assert "Fine-tuned from /runs/parent/best (weights sha256 abababababababab...), with 2 characters added" in card
    assert (
        "| this model | 1.1000 |" in card
        and "| Kneser-Ney 5-gram | 1.5000 |" in card
        and "| gzip -9 | 2.3000 |" in card
    )


def test_info_prints_the_card_and_puts_it_in_its_json(tiny_run):
    card = (resolve(tiny_run) / CARD).read_text(encoding="utf-8")
    done = run_cli("info", str(tiny_run))
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(card)
    done = run_cli("info", str(tiny_run), "--json")
    assert json.loads(done.stdout)["card"] == card


def test_a_model_trained_in_stages_lists_them_and_its_novels_in_a_table(tiny_run):
    metadata = read_metadata(resolve(tiny_run))
    metadata["training"]["stages"] = [
        {"step": 4000, "characters_seen": 25_600_000, "elapsed_seconds": 5400.0, "best_val_loss": 1.3894},
        {"step": 1500, "characters_seen": 9_600_000, "elapsed_seconds": 1110.0, "best_val_loss": 1.3527},
    ]
    metadata["evaluation"] = [
        {"text": "novel-a", "characters": 4000, "loss": 1.2, "ngram_loss": 1.5, "gzip_loss": 2.2},
        {"text": "novel-b", "characters": 5000, "loss": 1.3, "ngram_loss": 1.3, "gzip_loss": 2.4},
    ]
    card = model_card(metadata, "base", parameters=10)
    assert "In 2 stages" in card and "2. 1,500 steps, 9,600,000 characters, 18.5 minutes, held-out loss 1.3527" in card
    assert "| novel-a | 4,000 | 1.2000 | 1.5000 | 2.2000 | -20.0% |" in card
    assert "| novel-b | 5,000 | 1.3000 | 1.3000 | 2.4000 | +0.0% |" in card
