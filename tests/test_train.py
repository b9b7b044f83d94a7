import json
import math

import pytest

from charnn.config import ModelConfig, SampleConfig, TrainConfig
from charnn.data.corpus import Corpus
from charnn.errors import ConfigError, RunDirError
from charnn.generation import generate_text
from charnn.run_folder import METRICS, list_checkpoints, load_checkpoint
from charnn.training import train
from charnn.training.average import averaged_weights
from charnn.training.stopping import catching_up
from charnn.vocab import Vocabulary
from conftest import TINY_TEXT

SHORT_TEXT = "“Pip,” said Joe — 你好 — and the marshes lay dark beyond the old battery, where convicts hid.\n"


def _small(vocab, **options):
    return ModelConfig(vocab_size=len(vocab), embedding_dim=16, hidden_size=32, **options)


def test_small_model_memorises_a_short_text_and_regenerates_it(tmp_path):
    corpus = Corpus("short", SHORT_TEXT)
    vocab = Vocabulary.from_text(SHORT_TEXT)
    model_config = ModelConfig(len(vocab), embedding_dim=32, hidden_size=128)
    config = TrainConfig(seq_len=24, batch_size=3, epochs=300, lr=1e-2, val_fraction=0, precision="fp32")
    result = train(corpus, model_config, config, tmp_path / "run")
    assert result.history[-1]["loss"] < 0.05
    ckpt = load_checkpoint(tmp_path / "run")
    prime = SHORT_TEXT[:5]
    text = generate_text(
        ckpt.model, ckpt.vocab, prime, length=len(SHORT_TEXT) - 5, sampling=SampleConfig(temperature=0)
    )[0]
    assert prime + text == SHORT_TEXT


def test_loss_falls_and_metrics_are_logged(tmp_path):
    corpus = Corpus("tiny", TINY_TEXT * 40)
    vocab = Vocabulary.from_text(corpus.text)
    config = TrainConfig(seq_len=20, batch_size=8, epochs=3, precision="fp32", log_every_seconds=0.01)
    result = train(corpus, _small(vocab), config, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert lines == result.history
    for key in ("epoch", "step", "loss", "chars_per_sec", "elapsed"):
        assert key in lines[0]
    epochs = [line for line in lines if "val_loss" in line]
    assert [line["epoch"] for line in epochs] == [1, 2, 3]
    assert epochs[-1]["loss"] < epochs[0]["loss"] < math.log(len(vocab)) + 0.1
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["ckpt_1", "ckpt_2", "ckpt_3"]
    assert not (tmp_path / "run" / "loss.png").exists()  # the library draws no picture; the CLI does
    training = load_checkpoint(tmp_path / "run").training
    assert training["losses"] == [line["loss"] for line in epochs]
    assert training["config"]["seq_len"] == 20


def test_max_steps_stops_mid_epoch_with_a_checkpoint(tmp_path):
    corpus = Corpus("tiny", TINY_TEXT * 40)
    vocab = Vocabulary.from_text(corpus.text)
    config = TrainConfig(seq_len=20, batch_size=8, epochs=5, max_steps=7, precision="fp32")
    result = train(corpus, _small(vocab), config, tmp_path / "run")
    assert result.stopped_by == "max_steps"
    assert result.last_checkpoint.name == "ckpt_1_7"
    assert load_checkpoint(tmp_path / "run").training["step"] == 7


def test_time_limit_stops_cleanly(tmp_path):
    corpus = Corpus("tiny", TINY_TEXT * 40)
    vocab = Vocabulary.from_text(corpus.text)
    # Far more epochs than any machine runs in 1.2 s: the limit is what stops the run.
    config = TrainConfig(seq_len=20, batch_size=8, epochs=1_000_000, time_limit=0.02, precision="fp32")
    events = []
    result = train(corpus, _small(vocab), config, tmp_path / "run", on_event=events.append)
    assert result.stopped_by == "time_limit"
    # It stops at the first step that ends past the limit, however long a step takes here: each
    # step reports its time just after checking it, so only the last step, and the one before
    # (if it reported just after its check), can report a time past the limit.
    limit = config.time_limit * 60
    steps = [e for e in events if e.kind in ("step", "log")]
    assert steps[-1].step == result.history[-1]["step"] and steps[-1].elapsed >= limit
    assert all(e.elapsed < limit for e in steps[:-2])
    load_checkpoint(result.last_checkpoint)


def test_existing_run_is_refused_unless_overwrite(tiny_run, tmp_path):
    corpus = Corpus("tiny", TINY_TEXT * 40)
    vocab = Vocabulary.from_text(corpus.text)
    config = TrainConfig(seq_len=20, batch_size=8, epochs=1, precision="fp32")
    with pytest.raises(RunDirError, match="`overwrite`"):
        train(corpus, _small(vocab), config, tiny_run)
    train(corpus, _small(vocab), config, tmp_path / "new")
    train(corpus, _small(vocab), config, tmp_path / "new", overwrite=True)
    assert [p.name for p in list_checkpoints(tmp_path / "new")] == ["ckpt_1"]


def test_invalid_training_options():
    with pytest.raises(ConfigError, match="`batch_size`"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="`time_limit`"):
        TrainConfig(time_limit=-1)
    with pytest.raises(ConfigError, match="`precision`"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="`ema_init_share`"):
        TrainConfig(ema_init_share=1.0)


def test_the_weight_average_follows_its_formula(tmp_path):
    import torch

    from charnn.checkpoint import TRAINER_STATE
    from charnn.model import CharRNN

    corpus = Corpus("tiny", TINY_TEXT * 20)
    vocab = Vocabulary.from_text(corpus.text)
    model_config = _small(vocab)
    config = TrainConfig(seq_len=10, batch_size=4, max_steps=3, checkpoint_every=1, ema=0.7, precision="fp32",
                         seed=4, lr=1e-2)  # fmt: skip
    train(corpus, model_config, config, tmp_path / "run")
    torch.manual_seed(config.seed)  # the run's initial weights, as train() draws them
    average = [p.detach().clone() for p in CharRNN(model_config).parameters()]
    names = [name for name, _ in CharRNN(model_config).named_parameters()]
    initial = [a.clone() for a in average]
    since_start = [torch.zeros_like(a) for a in average]  # the same average without the initial weights
    for step in (1, 2, 3):
        path = tmp_path / "run" / f"ckpt_1_{step}"
        raw = load_checkpoint(path).model.state_dict()
        average = [0.7 * a + 0.3 * raw[name] for a, name in zip(average, names, strict=True)]
        since_start = [0.7 * a + 0.3 * raw[name] for a, name in zip(since_start, names, strict=True)]
        saved = torch.load(path / TRAINER_STATE, weights_only=True)
        for got, expected in zip(saved["ema"], average, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
        assert all(torch.equal(got, w) for got, w in zip(saved["initial"], initial, strict=True))
        # What the run scores: the initial weights' fading share (0.7 ** step) replaced by a fixed one ...
        scored = averaged_weights(saved["ema"], saved["initial"], 0.7, step, config.ema_init_share)
        for got, a, w in zip(scored, since_start, initial, strict=True):
            expected = (1 - config.ema_init_share) * a / (1 - 0.7**step) + config.ema_init_share * w
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        # ... and with a fixed share equal to the fading one, the plain average.
        same = averaged_weights(saved["ema"], saved["initial"], 0.7, step, 0.7**step)
        for got, a in zip(same, saved["ema"], strict=True):
            torch.testing.assert_close(got, a, rtol=1e-5, atol=1e-6)


def test_best_keeps_the_better_of_the_raw_and_averaged_weights(tmp_path):
    import torch

    from charnn.scoring.evaluate import model_loss

    corpus = Corpus("tiny", TINY_TEXT * 40)
    vocab = Vocabulary.from_text(corpus.text)
    config = TrainConfig(seq_len=20, batch_size=8, epochs=2, eval_every=3, lr=3e-3, precision="fp32", ema=0.9)
    result = train(corpus, _small(vocab), config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert evals and all(r["val_loss"] == min(r["raw_val_loss"], r["ema_val_loss"]) for r in evals)
    assert any(r["raw_val_loss"] != r["ema_val_loss"] for r in evals)
    best_record = min(evals, key=lambda r: r["val_loss"])
    best = load_checkpoint(tmp_path / "run" / "best")
    expected = "ema" if best_record["ema_val_loss"] < best_record["raw_val_loss"] else "raw"
    assert best.training["weights"] == expected and result.best_val_loss == best_record["val_loss"]
    tokens = torch.from_numpy(vocab.encode(corpus.text))
    held_out = tokens[len(tokens) - int(len(tokens) * 0.1) :]
    assert model_loss(best.model, held_out, seq_len=20, num_streams=8) == pytest.approx(
        best_record["val_loss"], rel=1e-6
    )


def test_an_average_catching_up_is_one_falling_fast_enough_to_reach_the_best():
    # From runs of the defaults on a 347,000-character novel and a 30,000-character text (patience 3).
    assert catching_up(1.2991, 1.3219, best=1.2929, evaluations=3)  # overtook the best at the next evaluation
    assert not catching_up(1.9894, 2.0065, best=1.8355, evaluations=3)  # falling, but 0.15 short at 0.017 a time
    assert not catching_up(1.2488, 1.2474, best=1.2474, evaluations=3)  # rising
    assert catching_up(1.30, 1.34, best=1.20, evaluations=3) and not catching_up(1.30, 1.34, best=1.20, evaluations=2)


def test_patience_counts_only_evaluations_without_an_average_catching_up(tmp_path):
    corpus = Corpus("tiny", TINY_TEXT * 40)
    vocab = Vocabulary.from_text(corpus.text)
    config = TrainConfig(seq_len=20, batch_size=8, epochs=200, eval_every=2, lr=1e-2, precision="fp32", ema=0.95,
                         patience=2)  # fmt: skip
    result = train(corpus, _small(vocab), config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    average = [r["ema_val_loss"] for r in records if "val_loss" in r]
    assert result.stopped_by == "patience"
    counted = []
    for i in range(1, len(val)):
        best = min(val[:i])
        if val[i] < best:
            counted.clear()
        elif not catching_up(average[i], average[i - 1], best, config.patience):
            counted.append(i)
    assert len(counted) == config.patience and counted[-1] == len(val) - 1


def test_stateful_training_carries_state_and_learns(tmp_path):
    corpus = Corpus("tiny", TINY_TEXT * 40)
    vocab = Vocabulary.from_text(corpus.text)
    losses = {}
    for stateful in (False, True):
        config = TrainConfig(seq_len=10, batch_size=4, epochs=2, lr=3e-3, precision="fp32", stateful=stateful)
        result = train(corpus, _small(vocab), config, tmp_path / str(stateful))
        losses[stateful] = result.best_val_loss
    assert all(loss < math.log(len(vocab)) for loss in losses.values())  # both learn
    assert losses[True] != losses[False]  # and they are different runs
    with pytest.raises(ConfigError, match="`seq_len_jitter` needs `stateful`"):
        TrainConfig(seq_len_jitter=2.0)
