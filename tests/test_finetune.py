"""Fine-tuning: a run that starts from another run's checkpoint, its vocabulary grown by the new text."""

import dataclasses
import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from charnn.checkpoint import WEIGHTS
from charnn.cli import main
from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import load_corpus
from charnn.data.prepare import prepare
from charnn.errors import CheckpointError, ConfigError, RunDirError
from charnn.run_folder import list_checkpoints, load_checkpoint
from charnn.training import finetune, initial_model, resume, train
from charnn.vocab import Vocabulary
from conftest import TINY_TEXT, run_cli

# Characters the parent never saw: a Greek letter, a German one, a currency sign, an emoji.
NEW_TEXT = "Ωmega’s fuß cost 5€ — 🙂 “Pip,” said Joe. " * 3 + TINY_TEXT
CONFIG = TrainConfig(seq_len=20, batch_size=8, epochs=2, precision="fp32", seed=3, threads=1)


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A run trained briefly on TINY_TEXT: GRU 16 with embeddings of 8."""
    folder = tmp_path_factory.mktemp("parent")
    (folder / "corpus.txt").write_text(TINY_TEXT * 30, encoding="utf-8")
    corpus = load_corpus(str(folder / "corpus.txt"))
    vocab = Vocabulary.from_text(corpus.text)
    model_config = ModelConfig(len(vocab), embedding_dim=8, hidden_size=16, num_layers=2)
    train(corpus, model_config, CONFIG, folder / "run")
    return folder / "run"


@pytest.fixture
def new_corpus(tmp_path):
    path = tmp_path / "new.txt"
    path.write_text(NEW_TEXT * 12, encoding="utf-8")
    return path


def test_extended_vocabulary_keeps_every_index():
    vocab = Vocabulary.from_text("cab")
    grown = vocab.extended("a b€c好")
    assert grown.characters == ("a", "b", "c", " ", "€", "好")
    assert grown.encode("cab").tolist() == vocab.encode("cab").tolist()
    assert vocab.extended("abc") == vocab


def test_initial_model_predicts_old_text_as_the_parent_did(parent):
    ckpt = load_checkpoint(parent)
    before = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    model, vocab = initial_model(ckpt, NEW_TEXT, seed=0)
    old = len(ckpt.vocab)
    assert vocab.characters[:old] == ckpt.vocab.characters
    assert vocab.characters[old:] == tuple(sorted(set(NEW_TEXT) - set(ckpt.vocab.characters)))
    assert {"Ω", "ß", "€", "🙂"} <= set(vocab.characters[old:])
    assert model.config.vocab_size == len(vocab) and model.config.hidden_size == ckpt.config.hidden_size
    tokens = torch.from_numpy(ckpt.vocab.encode(TINY_TEXT)).unsqueeze(0)  # (1, T): old characters only
    model.eval()
    with torch.no_grad():
        parent_logits, _ = ckpt.model(tokens)
        logits, _ = model(tokens)
    # The old characters' logits are the parent's, exactly.
    assert torch.equal(logits[..., :old], parent_logits)
    # The new characters start unlikely: together they take little probability anywhere, and each
    # is on average far less likely than a character drawn uniformly.
    probabilities = logits.softmax(-1)[0]  # (T, V)
    assert probabilities[:, old:].sum(-1).max() < 0.05
    assert probabilities[:, old:].mean(0).max() < 0.25 / len(vocab)
    # The parent itself is left as it was.
    assert all(torch.equal(before[k], v) for k, v in ckpt.model.state_dict().items())


def test_the_new_characters_are_learned(parent, new_corpus, tmp_path):
    config = TrainConfig(seq_len=20, batch_size=8, max_steps=40, lr=1e-2, precision="fp32", threads=1)
    result = finetune(new_corpus, parent, config, tmp_path / "tuned")
    start, _ = initial_model(load_checkpoint(parent), NEW_TEXT, seed=config.seed)
    tuned = load_checkpoint(result.last_checkpoint)
    tokens = torch.from_numpy(tuned.vocab.encode(NEW_TEXT)).unsqueeze(0)
    new = tokens[0, 1:] >= len(load_checkpoint(parent).vocab)  # positions whose next character is new
    start.eval()
    with torch.no_grad():
        p_start = start(tokens)[0].log_softmax(-1)[0, :-1].gather(1, tokens[0, 1:, None])[new]
        p_tuned = tuned.model(tokens)[0].log_softmax(-1)[0, :-1].gather(1, tokens[0, 1:, None])[new]
    assert p_tuned.mean() > p_start.mean() + 1.0  # nats: the new characters became far likelier


def test_the_run_records_its_parent(parent, new_corpus, tmp_path, capsys):
    result = finetune(new_corpus, parent, CONFIG, tmp_path / "tuned")
    parent_ckpt = parent / "best"  # a run folder resolves to its best checkpoint, as for generate
    digest = hashlib.sha256((parent_ckpt / WEIGHTS).read_bytes()).hexdigest()
    for path in [*list_checkpoints(tmp_path / "tuned"), result.best_checkpoint]:
        record = json.loads((path / "checkpoint.json").read_text(encoding="utf-8"))["training"]["init_from"]
        assert record["path"] == str(parent_ckpt.resolve())
        assert record["weights_sha256"] == digest
        assert record["vocabulary_size"] == len(load_checkpoint(parent).vocab)
        assert "€" in record["added_characters"]
    assert main(["info", str(tmp_path / "tuned")]) == 0
    out = capsys.readouterr().out
    assert f"fine-tuned from: {parent_ckpt.resolve()} (weights sha256 {digest[:16]}...)" in out
    # A run from scratch records no parent.
    assert "init_from" not in load_checkpoint(parent).training


def test_a_numbered_checkpoint_can_be_the_parent(parent, new_corpus, tmp_path):
    numbered = list_checkpoints(parent)[0]
    finetune(new_corpus, numbered, dataclasses.replace(CONFIG, epochs=1), tmp_path / "tuned")
    assert load_checkpoint(tmp_path / "tuned").training["init_from"]["path"] == str(numbered.resolve())


def test_refusals_leave_nothing_behind(parent, new_corpus, tmp_path):
    out = tmp_path / "tuned"
    with pytest.raises(CheckpointError, match="cannot fine-tune from .*no such checkpoint"):
        finetune(new_corpus, tmp_path / "nowhere", CONFIG, out)
    broken = tmp_path / "broken"
    shutil.copytree(parent / "best", broken)
    (broken / WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        finetune(new_corpus, broken, CONFIG, out)
    with pytest.raises(
        ConfigError, match=r"`hidden_size` 32 \(the parent has 16\); `cell` lstm \(the parent has gru\)"
    ):
        finetune(new_corpus, parent, CONFIG, out, model_changes={"hidden_size": 32, "cell": "lstm"})
    with pytest.raises(ConfigError, match="`num_layers` 1"):
        finetune(new_corpus, parent, CONFIG, out, model_changes={"num_layers": 1, "embedding_dim": 8})
    with pytest.raises(RunDirError, match="is the parent's own run folder"):
        finetune(new_corpus, parent, CONFIG, parent, overwrite=True)
    with pytest.raises(RunDirError, match="is inside the parent's own run folder"):
        finetune(new_corpus, parent / "best", CONFIG, parent / "tuned")
    with pytest.raises(RunDirError, match="holds the parent checkpoint"):
        finetune(new_corpus, parent, CONFIG, parent.parent, overwrite=True)
    prepared = tmp_path / "prepared"
    prepare(str(new_corpus), prepared)
    with pytest.raises(ConfigError, match="prepared data"):
        finetune(prepared, parent, CONFIG, out)
    assert not out.exists()
    assert (parent / "best" / WEIGHTS).is_file()


def test_the_same_shape_and_a_new_dropout_are_accepted(parent, new_corpus, tmp_path):
    changes = {"hidden_size": 16, "embedding_dim": 8, "cell": "gru", "num_layers": 2, "dropout": 0.3}
    finetune(new_corpus, parent, dataclasses.replace(CONFIG, max_steps=3), tmp_path / "tuned", model_changes=changes)
    assert load_checkpoint(tmp_path / "tuned").config.dropout == 0.3


def test_stopping_options_work_as_in_a_new_run(parent, new_corpus, tmp_path):
    # Any step outlasts a time limit of a microsecond's fraction: the run stops after its first.
    result = finetune(new_corpus, parent, dataclasses.replace(CONFIG, time_limit=1e-9), tmp_path / "timed")
    assert result.stopped_by == "time_limit" and result.last_checkpoint.name == "ckpt_1_1"
    result = resume(tmp_path / "timed", {"time_limit": None, "max_steps": 3})
    assert result.stopped_by == "max_steps" and result.last_checkpoint.name == "ckpt_1_3"
    assert "init_from" in load_checkpoint(result.last_checkpoint).training


def _weights(path):
    return load_file(path / WEIGHTS)


def test_a_fine_tuning_run_resumes_bit_exactly_without_its_parent(parent, new_corpus, tmp_path):
    # Dropout, clipping, a cosine schedule with warm-up and evaluations: every state resume restores.
    config = TrainConfig(seq_len=20, batch_size=8, epochs=2, precision="fp32", seed=5, eval_every=4, grad_clip=1.0,
                         lr_schedule="cosine", warmup_steps=3, checkpoint_every=5, threads=1)  # fmt: skip
    own_parent = tmp_path / "parent"
    shutil.copytree(parent, own_parent)
    changes = {"dropout": 0.2}
    straight = finetune(new_corpus, own_parent, config, tmp_path / "straight", model_changes=changes)
    stops = iter([None] * 6 + ["SIGINT"])
    first = finetune(new_corpus, own_parent, config, tmp_path / "resumed", model_changes=changes,
                     should_stop=lambda: next(stops, None))  # fmt: skip
    assert first.stopped_by == "SIGINT"
    shutil.rmtree(own_parent)  # resuming reads the run's own checkpoint, never the parent
    second = resume(tmp_path / "resumed")
    assert second.stopped_by == "epochs" and second.best_val_loss == straight.best_val_loss
    names = [p.name for p in list_checkpoints(tmp_path / "straight")]
    assert set(names) <= {p.name for p in list_checkpoints(tmp_path / "resumed")}
    for name in [*names, "best"]:
        a, b = _weights(tmp_path / "straight" / name), _weights(tmp_path / "resumed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    last = load_checkpoint(list_checkpoints(tmp_path / "resumed")[-1])
    assert last.training["init_from"] == load_checkpoint(tmp_path / "straight").training["init_from"]


def test_the_cli_fine_tunes_end_to_end(parent, new_corpus, tmp_path):
    out = tmp_path / "tuned"
    done = run_cli("train", str(new_corpus), "--init-from", str(parent), "--out", str(out), "--max-steps", "6",
                   "--seq-len", "20", "--batch-size", "8", "--threads", "1", "--hidden-size", "16")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"fine-tuning {parent} on {new_corpus}" in done.stderr
    assert "stopped by max_steps" in done.stderr
    tuned = load_checkpoint(out)
    assert "🙂" in tuned.vocab and tuned.training["init_from"]["path"] == str((parent / "best").resolve())
    generated = run_cli("generate", str(out), "--prime", "Ω", "--length", "20", "--seed", "1")
    assert generated.returncode == 0, generated.stderr
    shape = "charnn: error: a fine-tuned model keeps its parent's shape; these differ: --hidden-size 64 (the parent"
    for args, message in [
        (["--hidden-size", "64"], shape),
        (["--out", str(parent / "x")], f"charnn: error: {parent / 'x'} is inside the parent's own run folder"),
        (["--init-from", str(tmp_path / "nowhere")], "charnn: error: cannot fine-tune from"),
        (["--resume", str(out)], "charnn: error: --resume RUN_DIR continues a run"),
    ]:
        argv = ["train", str(new_corpus), "--init-from", str(parent), "--out", str(tmp_path / "other"), *args]
        if args[0] == "--resume":
            argv = ["train", "--init-from", str(parent), *args]
        refused = run_cli(*argv)
        assert refused.returncode == 2 and refused.stderr.startswith(message), refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "other").exists()


def test_a_second_stage_on_the_same_prepared_data_keeps_its_vocabulary_and_split(parent, tmp_path):
    """A long run on prepared data goes on with other options (a lower, annealed rate) from its checkpoint."""
    prepared = tmp_path / "prepared"
    prepare(str(parent.parent / "corpus.txt"), prepared, val_fraction=0.2)
    config = dataclasses.replace(CONFIG, lr=3e-4, lr_schedule="cosine", max_steps=3)
    result = finetune(prepared, parent, config, tmp_path / "stage2")
    stage2, first = load_checkpoint(result.last_checkpoint), load_checkpoint(parent)
    assert stage2.vocab == first.vocab and stage2.training["init_from"]["added_characters"] == []
    assert stage2.training["config"]["val_fraction"] == 0.2 and stage2.training["config"]["lr"] == 3e-4
