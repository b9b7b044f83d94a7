"""charnn.load: a loaded model's methods give what the library's functions give."""

import charnn
from charnn.config import SampleConfig
from charnn.generation import generate_text
from charnn.run_folder import load_checkpoint
from charnn.scoring.score import score_text
from conftest import TINY_TEXT


def test_generate_and_score_are_the_library_functions(tiny_run):
    model = charnn.load(tiny_run)
    ckpt = load_checkpoint(tiny_run)
    expected = generate_text(ckpt.model, ckpt.vocab, "Pip", length=40, sampling=SampleConfig(0.8), seed=3)
    assert model.generate("Pip", length=40, seed=3) == expected[0]
    assert len(model.generate("Pip", length=5, seed=3, num_samples=2)) == 2
    text = "“Pip,” said Joe."
    assert model.score(text).totals.bits == score_text(ckpt.model, ckpt.vocab, text).totals.bits


def test_finetune_trains_a_new_run_and_loads_it(tiny_run, tmp_path):
    corpus = tmp_path / "more.txt"
    corpus.write_text(TINY_TEXT.replace("Pip", "Zoë") * 30, encoding="utf-8")
    model = charnn.load(tiny_run)
    tuned = model.finetune(corpus, tmp_path / "tuned", max_steps=3, batch_size=4, seq_len=20, precision="fp32")
    assert tuned.path.parent == tmp_path / "tuned"
    assert "ë" in tuned.checkpoint.vocab  # the parent's vocabulary grown by the new text's characters
    assert f"Fine-tuned from {load_checkpoint(tiny_run).path.resolve()}" in tuned.card()
    assert len(tuned.generate("Zo", length=10, seed=1)) == 10


def test_finetune_names_an_option_it_does_not_know(tiny_run, tmp_path):
    import pytest

    with pytest.raises(charnn.CharnnError, match="not options of fine-tuning: max_step"):
        charnn.load(tiny_run).finetune("x.txt", tmp_path / "run", max_step=3)
