"""Nothing lost: exact resume, signals, a full disk, and checkpoints crafted to run code."""

import dataclasses
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from charnn.checkpoint import TRAINER_STATE, WEIGHTS
from charnn.cli import main
from charnn.config import ModelConfig, TrainConfig
from charnn.data.corpus import load_corpus
from charnn.errors import CheckpointError, ConfigError, RunDirError
from charnn.run_folder import list_checkpoints, load_checkpoint, recover
from charnn.training import resume, train
from charnn.vocab import Vocabulary
from conftest import SRC, TINY_TEXT, run_cli

# Every piece of state that resume must restore is exercised: dropout (random state), Adam,
# clipping, a cosine schedule with warm-up, evaluation every few steps and the best checkpoint.
CONFIG = TrainConfig(seq_len=20, batch_size=8, epochs=3, precision="fp32", seed=3, eval_every=4, grad_clip=1.0,
                     lr_schedule="cosine", warmup_steps=3, checkpoint_every=5, threads=1)  # fmt: skip


def _setup(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_TEXT * 40, encoding="utf-8")
    corpus = load_corpus(str(path))
    vocab = Vocabulary.from_text(corpus.text)
    model_config = ModelConfig(len(vocab), embedding_dim=16, hidden_size=32, num_layers=2, dropout=0.2)
    return corpus, vocab, model_config


def _weights(path):
    return load_file(path / WEIGHTS)


def _same_weights(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    corpus, vocab, model_config = _setup(tmp_path)
    straight = train(corpus, model_config, CONFIG, tmp_path / "straight")
    stops = iter([None] * 7 + ["SIGINT"])
    first = train(corpus, model_config, CONFIG, tmp_path / "resumed", should_stop=lambda: next(stops, None))
    assert first.stopped_by == "SIGINT"
    assert first.last_checkpoint.name == "ckpt_1_8"
    second = resume(tmp_path / "resumed")
    assert second.stopped_by == "epochs"
    straight_names = [p.name for p in list_checkpoints(tmp_path / "straight")]
    resumed_names = [p.name for p in list_checkpoints(tmp_path / "resumed")]
    assert set(straight_names) <= set(resumed_names)
    for name in straight_names:
        assert _same_weights(tmp_path / "straight" / name, tmp_path / "resumed" / name), name
    assert _same_weights(tmp_path / "straight" / "best", tmp_path / "resumed" / "best")
    assert straight.best_val_loss == second.best_val_loss
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)


def _old_layout(path):
    """Rewrite a checkpoint's training record as charnn wrote it before each figure was stored once:
    the whole RunState under "state", its epoch, step, losses and elapsed time again at the top."""
    metadata = json.loads((path / "checkpoint.json").read_text())
    training = metadata["training"]
    state = training["state"]
    train_loss = state.pop("last_eval_train_loss")
    state["last_eval"] = None if train_loss is None else [train_loss, training["val_loss"]]
    for name in ("epoch", "step", "losses", "val_losses", "best_val_loss"):
        state[name] = training[name]
    state["elapsed"] = training["elapsed_seconds"]
    (path / "checkpoint.json").write_text(json.dumps(metadata))


def test_a_checkpoint_written_in_the_old_layout_resumes_exactly(tmp_path, capsys):
    corpus, vocab, model_config = _setup(tmp_path)
    straight = train(corpus, model_config, CONFIG, tmp_path / "straight")
    stops = iter([None] * 7 + ["SIGINT"])
    train(corpus, model_config, CONFIG, tmp_path / "resumed", should_stop=lambda: next(stops, None))
    _old_layout(tmp_path / "resumed" / "ckpt_1_8")
    assert main(["info", str(tmp_path / "resumed" / "ckpt_1_8")]) == 0
    assert "epoch 1, step 8, loss " in capsys.readouterr().out
    second = resume(tmp_path / "resumed")
    assert second.stopped_by == "epochs" and straight.best_val_loss == second.best_val_loss
    for path in list_checkpoints(tmp_path / "straight"):
        assert _same_weights(path, tmp_path / "resumed" / path.name), path.name


def test_a_run_begun_before_the_initial_weights_were_kept_scores_its_average_as_before(tmp_path):
    import hashlib

    from charnn.model import CharRNN
    from charnn.scoring.evaluate import model_loss

    corpus, vocab, model_config = _setup(tmp_path)
    config = dataclasses.replace(CONFIG, ema=0.9, epochs=1, max_steps=10)
    stops = iter([None] * 4 + ["SIGINT"])
    train(corpus, model_config, config, tmp_path / "run", should_stop=lambda: next(stops, None))
    # The trainer state as charnn wrote it before: the running average, no initial weights.
    path = tmp_path / "run" / "ckpt_1_5"
    state = torch.load(path / TRAINER_STATE, weights_only=False)
    del state["initial"]
    torch.save(state, path / TRAINER_STATE)
    metadata = json.loads((path / "checkpoint.json").read_text())
    metadata["trainer_state_sha256"] = hashlib.sha256((path / TRAINER_STATE).read_bytes()).hexdigest()
    (path / "checkpoint.json").write_text(json.dumps(metadata))
    resume(tmp_path / "run")
    last = tmp_path / "run" / "ckpt_1_10"
    saved = torch.load(last / TRAINER_STATE, weights_only=True)
    assert "initial" not in saved
    # Its last evaluation scored the running average itself, initial weights' fading share and all.
    model = CharRNN(model_config)
    with torch.no_grad():
        for p, average in zip(model.parameters(), saved["ema"], strict=True):
            p.copy_(average)
    tokens = torch.from_numpy(vocab.encode(corpus.text))
    held_out = tokens[len(tokens) - int(len(tokens) * config.val_fraction) :]
    record = load_checkpoint(last).training
    expected = model_loss(model.eval(), held_out, seq_len=config.seq_len, num_streams=config.batch_size)
    assert record["step"] == 10 and record["val_loss"] <= expected
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 10 and history[-1]["ema_val_loss"] == pytest.approx(expected, rel=1e-6)


def test_resume_can_extend_a_finished_run(tmp_path):
    corpus, vocab, model_config = _setup(tmp_path)
    train(corpus, model_config, CONFIG, tmp_path / "run")
    result = resume(tmp_path / "run", {"epochs": 4})
    assert result.last_checkpoint.name == "ckpt_4"


def test_resume_refuses_conflicting_options(tmp_path):
    corpus, vocab, model_config = _setup(tmp_path)
    train(corpus, model_config, CONFIG, tmp_path / "run")
    with pytest.raises(ConfigError, match="`lr`"):
        resume(tmp_path / "run", {"lr": 0.5})


def test_resume_without_a_complete_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="no complete checkpoint"):
        resume(tmp_path / "empty")
    with pytest.raises(RunDirError, match="no such run"):
        resume(tmp_path / "nowhere")


def test_recovery_after_a_crash_mid_write(tmp_path):
    corpus, vocab, model_config = _setup(tmp_path)
    config = TrainConfig(seq_len=20, batch_size=8, epochs=1, precision="fp32")
    train(corpus, model_config, config, tmp_path / "run")
    run = tmp_path / "run"
    (run / ".ckpt_2.tmp-999").mkdir()  # a write that never finished
    (run / "best").rename(run / ".best.old-999")  # a replace stopped between its two renames
    recover(run)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    load_checkpoint(run / "best")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_crafted_to_run_code_does_nothing(tmp_path, monkeypatch):
    import hashlib

    corpus, vocab, model_config = _setup(tmp_path)
    config = TrainConfig(seq_len=20, batch_size=8, epochs=1, precision="fp32")
    train(corpus, model_config, config, tmp_path / "run")
    path = list_checkpoints(tmp_path / "run")[-1]
    payload = pickle.dumps({"optimizer": _RunsCode()})
    (path / TRAINER_STATE).write_bytes(payload)
    metadata = json.loads((path / "checkpoint.json").read_text())
    metadata["trainer_state_sha256"] = hashlib.sha256(payload).hexdigest()  # even with a matching checksum
    (path / "checkpoint.json").write_text(json.dumps(metadata))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="corrupt"):
        resume(tmp_path / "run")
    assert not (tmp_path / "pwned").exists()


def _popen_train(*args, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "charnn", "train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


SMALL = ["--embedding-dim", "8", "--hidden-size", "16", "--seq-len", "10", "--batch-size", "4", "--precision",
         "fp32", "--threads", "1"]  # fmt: skip


def _running_with_a_checkpoint(tmp_path):
    """A long `charnn train` subprocess, once it has written its first checkpoint."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT * 40, encoding="utf-8")
    run = tmp_path / "run"
    # It runs until a signal stops it: no early stopping (the default's patience would end it first).
    process = _popen_train(str(corpus), "--out", str(run), "--epochs", "100000", "--patience", "none", *SMALL)
    deadline = time.monotonic() + 120
    while not run.exists() or not list_checkpoints(run):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    return process, run


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_writes_a_checkpoint_and_says_how_to_resume(tmp_path, signum, code):
    process, run = _running_with_a_checkpoint(tmp_path)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert f"charnn train --resume {run}" in err
    assert "Traceback" not in err
    newest = list_checkpoints(run)[-1]
    load_checkpoint(newest)
    resumed = run_cli("train", "--resume", str(run), "--max-steps", str(load_checkpoint(newest).training["step"] + 3))
    assert resumed.returncode == 0, resumed.stderr


def test_a_second_interrupt_stops_at_once_without_damage(tmp_path):
    process, run = _running_with_a_checkpoint(tmp_path)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    recover(run)
    for path in list_checkpoints(run):
        load_checkpoint(path)


def test_a_full_disk_gives_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT * 40, encoding="utf-8")
    run = tmp_path / "run"
    first = run_cli("train", str(corpus), "--out", str(run), "--epochs", "1", *SMALL)
    assert first.returncode == 0, first.stderr
    before = {p.name: (p / WEIGHTS).read_bytes() for p in list_checkpoints(run)}

    def small_files():  # writing past 1 KB now fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    process = _popen_train("--resume", str(run), "--epochs", "2", preexec_fn=small_files)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2, err
    assert err.strip().splitlines()[-1].startswith("charnn: error: cannot write")
    assert "Traceback" not in err
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
    for name, data in before.items():
        assert (run / name / WEIGHTS).read_bytes() == data
        load_checkpoint(run / name)


def test_resuming_a_run_already_at_its_step_limit_does_nothing(tmp_path):
    corpus, vocab, model_config = _setup(tmp_path)
    config = TrainConfig(seq_len=20, batch_size=8, epochs=3, max_steps=6, precision="fp32")
    train(corpus, model_config, config, tmp_path / "run")
    before = [p.name for p in list_checkpoints(tmp_path / "run")]
    result = resume(tmp_path / "run")
    assert result.stopped_by == "max_steps"
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == before


# Stateful streams with random window lengths, DropConnect, embedding and variational dropout, and
# the weight average: the streams' position, the carried state and the average must all come back.
TRICKS = TrainConfig(seq_len=12, batch_size=4, epochs=2, precision="fp32", seed=5, eval_every=5, checkpoint_every=7,
                     threads=1, stateful=True, seq_len_jitter=3.0, ema=0.8)  # fmt: skip


@pytest.mark.parametrize("layers", [1, 2])  # 1: the compiled training recurrence; 2: layer by layer
def test_stateful_regularised_run_with_an_average_resumes_bit_identically(tmp_path, layers):
    corpus, vocab, _ = _setup(tmp_path)
    model_config = ModelConfig(len(vocab), embedding_dim=8, hidden_size=16, num_layers=layers, dropout=0.2,
                               variational_dropout=True, weight_drop=0.3, embedding_dropout=0.1)  # fmt: skip
    straight = train(corpus, model_config, TRICKS, tmp_path / "straight")
    stops = iter([None] * 10 + ["SIGINT"])
    first = train(corpus, model_config, TRICKS, tmp_path / "resumed", should_stop=lambda: next(stops, None))
    assert first.stopped_by == "SIGINT" and first.last_checkpoint.name == "ckpt_1_11"
    saved = torch.load(first.last_checkpoint / TRAINER_STATE, weights_only=True)
    assert saved["carried_state"][0].shape == (layers, 4, 16) and len(saved["ema"]) == len(
        _weights(first.last_checkpoint)
    )
    second = resume(tmp_path / "resumed")
    assert second.stopped_by == "epochs"
    for path in list_checkpoints(tmp_path / "straight"):
        assert _same_weights(path, tmp_path / "resumed" / path.name), path.name
        a = torch.load(path / TRAINER_STATE, weights_only=True)
        b = torch.load(tmp_path / "resumed" / path.name / TRAINER_STATE, weights_only=True)
        assert all(torch.equal(x, y) for x, y in zip(a["ema"], b["ema"], strict=True)), path.name
        assert all(torch.equal(x, y) for x, y in zip(a["initial"], b["initial"], strict=True)), path.name
        assert all(torch.equal(x, y) for x, y in zip(a["carried_state"], b["carried_state"], strict=True)), path.name
    assert _same_weights(tmp_path / "straight" / "best", tmp_path / "resumed" / "best")
    assert straight.best_val_loss == second.best_val_loss


def test_a_time_limit_counts_the_whole_run_when_it_is_resumed(tmp_path):
    corpus, vocab, model_config = _setup(tmp_path)
    config = dataclasses.replace(CONFIG, max_steps=3, time_limit=60)
    train(corpus, model_config, config, tmp_path / "run")
    elapsed = load_checkpoint(tmp_path / "run").training["elapsed_seconds"]
    assert elapsed > 0
    # Half the time the run has already trained: the resumed run is past its limit before a step.
    result = resume(tmp_path / "run", {"max_steps": None, "time_limit": elapsed / 2 / 60})
    assert result.stopped_by == "time_limit"
    assert load_checkpoint(tmp_path / "run").training["step"] == 3
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["ckpt_1_3"]
