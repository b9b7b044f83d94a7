"""Honest quality: held-out loss, the best checkpoint, early stopping, divergence, plots, baselines."""

import copy
import json
import math
import random
import shutil

import pytest
import torch
import torch.nn.functional as F

from charnn.config import DYNAMIC_EPSILON, ModelConfig, TrainConfig
from charnn.data.corpus import Corpus
from charnn.errors import ConfigError, TrainingError
from charnn.model import CharRNN
from charnn.run_folder import METRICS, list_checkpoints, load_checkpoint
from charnn.scoring.dynamic import dynamic_loss, gradient_rms
from charnn.scoring.evaluate import evaluate_text, gzip_loss, invented_words, model_loss, window_loss
from charnn.scoring.ngram import KneserNey
from charnn.training import train
from charnn.training.plot import plot_run
from charnn.training.schedule import run_progress
from charnn.vocab import Vocabulary
from conftest import TINY_TEXT


def _small(vocab, **options):
    return ModelConfig(vocab_size=len(vocab), embedding_dim=16, hidden_size=32, **options)


def test_best_is_the_lowest_validation_loss(tmp_path):
    corpus = Corpus("tiny", TINY_TEXT * 40)
    vocab = Vocabulary.from_text(corpus.text)
    config = TrainConfig(seq_len=20, batch_size=8, epochs=3, eval_every=3, lr=3e-3, precision="fp32")
    result = train(corpus, _small(vocab), config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    val_losses = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val_losses) > 3
    best = load_checkpoint(tmp_path / "run" / "best")
    assert best.training["val_loss"] == min(val_losses) == result.best_val_loss
    # The weights in `best` really score that loss on the held-out text.
    tokens = torch.from_numpy(vocab.encode(corpus.text))
    held_out = tokens[len(tokens) - int(len(tokens) * 0.1) :]
    assert model_loss(best.model, held_out, seq_len=20, num_streams=8) == pytest.approx(min(val_losses), rel=1e-6)
    assert abs(best.training["val_bpc"] - min(val_losses) / math.log(2)) < 1e-9


def test_early_stopping_stops_when_validation_stops_improving(tmp_path):
    # Random characters: nothing to learn that generalises, so validation loss soon rises.
    rng = random.Random(0)
    text = "".join(rng.choice("abcdefghij") for _ in range(6000))
    corpus = Corpus("noise", text)
    vocab = Vocabulary.from_text(text)
    config = TrainConfig(seq_len=20, batch_size=8, epochs=60, lr=1e-2, patience=2, precision="fp32")
    events = []
    result = train(corpus, ModelConfig(len(vocab), 16, 128), config, tmp_path / "run", on_event=events.append)
    assert result.stopped_by == "patience"
    epochs = len(list_checkpoints(tmp_path / "run"))
    assert epochs < 60
    val = load_checkpoint(list_checkpoints(tmp_path / "run")[-1]).training["val_losses"]
    assert len(val) == epochs
    assert min(val[-2:]) >= min(val)  # the last two evaluations did not improve
    warnings = [e.message for e in events if e.kind == "warning"]
    assert len(warnings) == 1 and "validation loss rose" in warnings[0]


def test_a_diverging_loss_stops_cleanly_and_leaves_the_last_checkpoint(tmp_path):
    corpus = Corpus("tiny", TINY_TEXT * 40)
    vocab = Vocabulary.from_text(corpus.text)
    # An absurd learning rate: the first update wrecks the weights and the next loss explodes.
    config = TrainConfig(seq_len=20, batch_size=8, epochs=5, lr=1e4, checkpoint_every=1, val_fraction=0,
                         precision="fp32")  # fmt: skip
    with pytest.raises(TrainingError, match="diverged"):
        train(corpus, _small(vocab), config, tmp_path / "run")
    checkpoints = list_checkpoints(tmp_path / "run")
    assert [p.name for p in checkpoints] == ["ckpt_1_1"]
    ckpt = load_checkpoint(checkpoints[0])
    assert all(torch.isfinite(p).all() for p in ckpt.model.parameters())
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_schedules_and_options_train(tmp_path):
    corpus = Corpus("tiny", TINY_TEXT * 40)
    vocab = Vocabulary.from_text(corpus.text)
    for schedule in ("cosine", "plateau"):
        config = TrainConfig(seq_len=20, batch_size=8, epochs=2, lr_schedule=schedule, warmup_steps=5,
                             weight_decay=0.01, grad_clip=0.5, keep_last=1, precision="fp32")  # fmt: skip
        model = _small(vocab, cell="lstm", num_layers=2, dropout=0.1)
        result = train(corpus, model, config, tmp_path / schedule)
        assert [p.name for p in list_checkpoints(tmp_path / schedule)] == ["ckpt_2"]
        assert result.history[-1]["loss"] < math.log(len(vocab))


def test_plot_is_a_valid_png(tiny_run, tmp_path):
    import matplotlib.image

    run = tmp_path / "run"  # plotted in a copy: tiny_run is shared by the whole session
    shutil.copytree(tiny_run, run)
    (run / "loss.png").unlink(missing_ok=True)  # this one must be plot_run's
    path = plot_run(run)
    assert path == run / "loss.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 300


def test_kneser_ney_is_a_distribution_and_learns():
    model = KneserNey("the cat sat on the mat. the dog sat on the log. " * 5, order=5)
    alphabet = sorted(model.alphabet)
    for context in ["the c", "sat o", "zzzz", "", "q"]:
        assert sum(model.probability(context, c, len(alphabet)) for c in alphabet) == pytest.approx(1.0)
    assert model.loss("the cat sat on the log. ") < 0.5 < model.loss("gol eht no tas tac eht ")


def test_evaluate_reports_baselines_and_unknown_characters(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    text = "“Pip,” said Joe, 🙂 “the marshes” were dark. Zqxv!"
    report = evaluate_text(ckpt.model, ckpt.vocab, text, training_text=TINY_TEXT * 40)
    assert report["unknown_characters"] == text.count("🙂") + text.count("Z") + text.count("q") + text.count("x")
    assert "🙂" in report["unknown"]
    for key in ("loss", "bpc", "ngram_loss", "gzip_loss", "invented_word_share"):
        assert math.isfinite(report[key])
    assert report["bpc"] == pytest.approx(report["loss"] / math.log(2))
    assert gzip_loss("a" * 10_000) < 0.1 < gzip_loss(TINY_TEXT)


def test_invented_words():
    share, invented = invented_words("The cat sat on the zorbl, Joe’s mat.", "the cat sat on the mat. Joe’s")
    assert invented == ["zorbl"]
    assert share == pytest.approx(1 / 8)


def test_untrained_model_scores_about_ln_vocab_on_held_out_text():
    vocab = Vocabulary.from_text(TINY_TEXT)
    torch.manual_seed(0)
    model = CharRNN(_small(vocab))
    tokens = torch.from_numpy(vocab.encode(TINY_TEXT * 3))
    with torch.no_grad():
        logits, _ = model(tokens[:-1].unsqueeze(0))
    expected = torch.nn.functional.cross_entropy(logits[0], tokens[1:]).item()
    # One stream with carried state equals a single pass over the whole text.
    assert model_loss(model, tokens, seq_len=7, num_streams=1) == pytest.approx(expected, rel=1e-5)
    assert abs(expected - math.log(len(vocab))) < 0.1


def _random_model(vocab_size, seed=0):
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(vocab_size, embedding_dim=8, hidden_size=16))


def test_window_loss_is_the_mean_over_random_windows_from_zero_state():
    model = _random_model(7)
    tokens = torch.randint(0, 7, (300,), generator=torch.Generator().manual_seed(1))
    mean, per_position = window_loss(model, tokens, 12, num_windows=5, seed=3, batch_size=2)
    starts = torch.randint(300 - 12, (5,), generator=torch.Generator().manual_seed(3))
    by_hand = []
    with torch.no_grad():
        for s in starts.tolist():
            logits, _ = model(tokens[s : s + 12][None])  # a fresh state for each window
            by_hand.append(F.cross_entropy(logits[0], tokens[s + 1 : s + 13], reduction="none"))
    by_hand = torch.stack(by_hand)  # (windows, positions)
    assert mean == pytest.approx(by_hand.mean().item(), rel=1e-5)
    torch.testing.assert_close(per_position, by_hand.mean(0))
    assert window_loss(model, tokens, 12, num_windows=5, seed=4)[0] != mean  # the seed picks the windows


def test_dynamic_evaluation_adapts_to_a_repetitive_text_and_leaves_the_model_alone():
    model = _random_model(9)
    phrase = torch.randint(0, 9, (37,), generator=torch.Generator().manual_seed(2))
    tokens = phrase.repeat(30)
    before = [p.detach().clone() for p in model.parameters()]
    static = model_loss(model, tokens, seq_len=20, num_streams=1)
    # With a negligible step each segment is scored as the static model scores it: before the step.
    assert dynamic_loss(model, tokens, segment=20, lr=1e-9) == pytest.approx(static, rel=1e-5)
    dynamic = dynamic_loss(model, tokens, segment=20, lr=0.5)
    assert dynamic < static - 0.5  # the repeats are learnt as they are read
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def _two_segments_by_hand(model, tokens, step):
    """Dynamic evaluation of two segments with PyTorch's own GRU: score the first, `step(i, parameter i)` on its
    gradients, score the second from the carried state. Returns the mean loss over both."""
    model = copy.deepcopy(model).eval()
    first, second = tokens[:21], tokens[20:41]
    logits, state = model(first[None, :-1])
    loss_1 = F.cross_entropy(logits[0], first[1:])
    loss_1.backward()
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            step(i, p)
        logits, _ = model(second[None, :-1], state.detach())
        loss_2 = F.cross_entropy(logits[0], second[1:])
    return (loss_1.item() + loss_2.item()) / 2


def test_dynamic_evaluation_takes_the_gradient_pytorch_takes():
    # On a CPU the fast recurrence computes the gradients; the step it takes is the one PyTorch's GRU gives.
    model = _random_model(9, seed=4)
    tokens = torch.randint(0, 9, (41,), generator=torch.Generator().manual_seed(5))

    def sgd(i, p):
        p -= 0.5 * p.grad

    assert dynamic_loss(model, tokens, segment=20, lr=0.5) == pytest.approx(_two_segments_by_hand(model, tokens, sgd))


def test_the_rms_update_scales_each_step_by_the_training_gradients_rms():
    model = _random_model(9, seed=6)
    training = torch.randint(0, 9, (400,), generator=torch.Generator().manual_seed(7))
    tokens = torch.randint(0, 9, (41,), generator=torch.Generator().manual_seed(8))
    rms = gradient_rms(model, training, segment=20, batch_size=4)
    assert [r.shape for r in rms] == [p.shape for p in model.parameters()]
    assert all(bool((r >= 0).all()) for r in rms) and all(float(r.max()) > 0 for r in rms)
    lr, decay = 1e-3, 0.05
    mean = sum(r.mean() for r in rms) / len(rms)
    trained = list(model.parameters())

    def krause(i, p):  # Krause et al.'s step, written out: RMS-scaled, pulled back in proportion to the RMS
        p -= lr * p.grad / (rms[i] + DYNAMIC_EPSILON * mean)
        p += (decay * rms[i] / mean).clamp(max=1.0) * (trained[i] - p)

    expected = _two_segments_by_hand(model, tokens, krause)
    assert dynamic_loss(model, tokens, segment=20, lr=lr, decay=decay, rms=rms) == pytest.approx(expected)


def test_evaluate_text_reports_every_protocol_side_by_side():
    text = (TINY_TEXT * 30)[:3000]
    vocab = Vocabulary.from_text(text)
    model = _random_model(len(vocab))
    report = evaluate_text(
        model, vocab, text, training_text=text, window=32, num_windows=10, dynamic=True, dynamic_segment=25
    )
    for key in ("loss", "window_loss", "window_loss_first_8", "window_loss_after_8", "dynamic_loss", "ngram_loss"):
        assert math.isfinite(report[key]), key
    assert report["window"] == 32 and report["dynamic_segment"] == 25
    assert report["dynamic_update"] == "rms" and report["dynamic_lr"] == 3e-5  # the RMS update's defaults
    sgd = evaluate_text(model, vocab, text, training_text=None, dynamic=True, dynamic_update="sgd")
    assert sgd["dynamic_lr"] == 0.03 and math.isfinite(sgd["dynamic_loss"])
    with pytest.raises(ConfigError, match="training text"):  # the RMS statistics come from the training text
        evaluate_text(model, vocab, text, training_text=None, dynamic=True)
    phases = []
    evaluate_text(model, vocab, text, training_text=text, window=32, num_windows=10, dynamic=True,
                  progress=lambda *call: phases.append(call))  # fmt: skip
    for phase in ("windows", "gradient statistics", "dynamic evaluation"):
        done, total = [call[1:] for call in phases if call[0] == phase][-1]
        assert done == total > 0, phase  # each slow phase reports its end


def test_the_cosine_schedule_follows_the_clock_when_a_time_limit_ends_the_run_first():
    assert run_progress(50, 100, elapsed=0.0, time_limit=None) == 0.5
    assert run_progress(50, 100, elapsed=45.0, time_limit=1.0) == 0.75  # 45 of 60 seconds gone
    assert run_progress(90, 100, elapsed=6.0, time_limit=1.0) == 0.9  # the steps end it first
    assert run_progress(10, 100, elapsed=120.0, time_limit=1.0) == 1.0  # past the limit: the schedule's end
