"""The command line: each user mistake gives one line and exit code 2; a real end-to-end run."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from charnn.checkpoint import METADATA, WEIGHTS
from charnn.cli import main
from charnn.config import ModelConfig
from charnn.errors import ConfigError
from charnn.run_folder import resolve
from conftest import SRC, TINY_TEXT, run_cli

SMALL = ["--embedding-dim", "8", "--hidden-size", "16", "--seq-len", "10", "--batch-size", "4", "--precision", "fp32"]


def fails(capsys, *argv) -> str:
    """Run the CLI in-process; assert exit code 2 and a single-line message; return it."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("charnn: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_missing_corpus_file(capsys, tmp_path):
    message = fails(capsys, "train", str(tmp_path / "none.txt"), "--out", str(tmp_path / "run"))
    assert "no such file" in message
    assert not (tmp_path / "run").exists()


def test_unknown_corpus_name_lists_known_names(capsys, tmp_path):
    message = fails(capsys, "train", "war-and-peace", "--out", str(tmp_path / "run"))
    assert "great-expectations" in message and "tinyshakespeare" in message
    assert not (tmp_path / "run").exists()


def test_empty_corpus(capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert "empty" in fails(capsys, "train", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_corpus_shorter_than_one_batch(capsys, tmp_path):
    (tmp_path / "short.txt").write_text("just a few words\n" * 10)
    message = fails(capsys, "train", str(tmp_path / "short.txt"), "--out", str(tmp_path / "run"))
    assert "6,464" in message and "--batch-size" in message and "--seq-len" in message
    assert not (tmp_path / "run").exists()


def test_invalid_bytes_name_the_offset(capsys, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"hello \xff world")
    message = fails(capsys, "train", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "run"))
    assert "byte 6" in message and "--encoding" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flag, value, needle",
    [("--epochs", "0", "--epochs"), ("--dropout", "1.5", "--dropout"), ("--lr", "-1", "--lr")],
)
def test_invalid_training_option(capsys, tiny_corpus, tmp_path, flag, value, needle):
    assert needle in fails(capsys, "train", str(tiny_corpus), "--out", str(tmp_path / "run"), flag, value)
    assert not (tmp_path / "run").exists()


def test_library_errors_name_parameters_and_the_cli_names_its_flags(capsys, tiny_corpus, tmp_path):
    with pytest.raises(ConfigError) as error:
        ModelConfig(vocab_size=10, hidden_size=0)
    assert str(error.value) == "`hidden_size` must be at least 1, got 0"  # what a Python caller passed
    message = fails(capsys, "train", str(tiny_corpus), "--out", str(tmp_path / "run"), "--hidden-size", "0")
    assert message == "charnn: error: --hidden-size must be at least 1, got 0"
    # A message naming several parameters: each becomes its flag, the rest stays as written.
    message = fails(capsys, "train", str(tiny_corpus), "--out", str(tmp_path / "run"), "--batch-size", "5000")
    assert "a smaller --batch-size or --seq-len would fit" in message and "`" not in message


def test_existing_run_folder_is_refused(capsys, tiny_corpus, tiny_run):
    before = sorted(p.name for p in tiny_run.iterdir())
    assert "--overwrite" in fails(capsys, "train", str(tiny_corpus), "--out", str(tiny_run), *SMALL)
    assert sorted(p.name for p in tiny_run.iterdir()) == before


def test_unknown_prime_characters_are_listed(capsys, tiny_run):
    message = fails(capsys, "generate", str(tiny_run), "--prime", "Pip Q@", "--length", "5")
    assert "'Q'" in message and "'@'" in message


@pytest.mark.parametrize(
    "options, needle",
    [
        (["--temperature", "-1"], "--temperature"),
        (["--temperature", "hot"], "--temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.2"], "--top-p"),
        (["--top-k", "0"], "--top-k"),
        (["--length", "-3"], "--length"),
    ],
)
def test_invalid_sampling_option(capsys, tiny_run, options, needle):
    assert needle in fails(capsys, "generate", str(tiny_run), "--prime", "Pip", *options)


@pytest.mark.parametrize("command", ["generate", "info"])
def test_broken_checkpoints(capsys, tiny_run, tmp_path, command):
    broken = tmp_path / "ckpt"
    shutil.copytree(resolve(tiny_run), broken)
    (broken / WEIGHTS).write_bytes(b"\x00" * 100)
    fails(capsys, command, str(broken))
    (broken / WEIGHTS).unlink()
    assert "missing" in fails(capsys, command, str(broken))
    shutil.copytree(resolve(tiny_run), tmp_path / "newer")
    metadata = json.loads((tmp_path / "newer" / METADATA).read_text())
    metadata["format_version"] = 99
    (tmp_path / "newer" / METADATA).write_text(json.dumps(metadata))
    assert "newer" in fails(capsys, command, str(tmp_path / "newer"))
    assert "no such" in fails(capsys, command, str(tmp_path / "nowhere"))


def test_generate_output_forms(capsys, tiny_run):
    assert main(["generate", str(tiny_run), "--prime", "Pip", "--length", "30", "--seed", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seed"] == 3 and len(out["samples"]) == 1 and len(out["samples"][0]) == 30
    assert main(["generate", str(tiny_run), "--prime", "Pip", "--length", "30", "--seed", "3"]) == 0
    assert capsys.readouterr().out == "Pip" + out["samples"][0] + "\n"
    assert main(["generate", str(tiny_run), "--prime", "Pip", "--length", "30", "--seed", "3", "--stream"]) == 0
    assert capsys.readouterr().out == "Pip" + out["samples"][0] + "\n"
    several = ["generate", str(tiny_run), "--prime", "Pip", "--length", "9", "--num-samples", "3", "--seed", "4"]
    assert main([*several, "--json"]) == 0
    samples = json.loads(capsys.readouterr().out)["samples"]
    assert len(samples) == 3
    assert main(several) == 0
    assert capsys.readouterr().out == "\n\n".join("Pip" + s for s in samples) + "\n"
    assert main([*several, "--stream"]) == 0
    assert capsys.readouterr().out == "\n".join("Pip" + s + "\n" for s in samples)
    assert main(["generate", str(tiny_run), "--prime", "P", "--length", "5", "--temperature", "0,1"]) == 0
    assert capsys.readouterr().out.count("--- temperature") == 2


def test_end_to_end_in_a_subprocess(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT * 40, encoding="utf-8")
    run = tmp_path / "run"
    trained = run_cli("train", str(corpus), "--out", str(run), "--max-steps", "6", *SMALL)
    assert trained.returncode == 0, trained.stderr
    assert "saved" in trained.stderr and (run / "ckpt_1_6" / WEIGHTS).is_file()
    assert (run / "metrics.jsonl").is_file()
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"  # drawn by the CLI when training stops
    # Without --preset the command trains with the tuned recipe; the run records it.
    record = json.loads((run / "ckpt_1_6" / "checkpoint.json").read_text())
    config = record["training"]["config"]
    assert config["preset"] == "tuned" and config["ema"] == 0.998 and record["model"]["dropout"] == 0.15

    info = run_cli("info", str(run))
    assert info.returncode == 0, info.stderr
    assert "Embedding" in info.stdout and "Total" in info.stdout and "step 6" in info.stdout

    generated = run_cli("generate", str(run), "--prime", "“Pip", "--length", "50", "--seed", "1")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("“Pip") and len(generated.stdout) == len("“Pip") + 50 + 1
    again = run_cli("generate", str(run), "--prime", "“Pip", "--length", "50", "--seed", "1")
    assert again.stdout == generated.stdout

    refused = run_cli("train", str(corpus), "--out", str(run), *SMALL)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr


def test_evaluate_and_plot_commands(capsys, tiny_run, tmp_path):
    sample = tmp_path / "sample.txt"
    sample.write_text("“Pip,” said Joe. The marshes were dark 🙂.\n", encoding="utf-8")
    assert main(["evaluate", str(tiny_run), str(sample), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["unknown"] == ["🙂"] and report["unknown_characters"] == 1
    for key in ("loss", "bpc", "ngram_loss", "ngram_bpc", "gzip_loss", "gzip_bpc", "invented_word_share"):
        assert isinstance(report[key], float)
    assert main(["evaluate", str(tiny_run)]) == 0  # the held-out text of its own corpus
    out = capsys.readouterr().out
    assert "Kneser-Ney 5-gram" in out and "gzip -9" in out and "invented words" in out
    run = tmp_path / "run"  # plotted in a copy: tiny_run is shared by the whole session
    shutil.copytree(tiny_run, run)
    (run / "loss.png").unlink(missing_ok=True)  # this one must be the plot command's
    assert main(["plot", str(run)]) == 0
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_a_plot_that_cannot_be_drawn_is_a_warning_not_a_failure(capsys, tiny_corpus, tmp_path, monkeypatch):
    def broken(run_dir):
        raise RuntimeError("no fonts")

    monkeypatch.setattr("charnn.training.plot.plot_run", broken)
    assert main(["train", str(tiny_corpus), "--out", str(tmp_path / "run"), "--max-steps", "2", *SMALL]) == 0
    err = capsys.readouterr().err
    assert "warning: could not draw loss.png: no fonts" in err and "stopped by max_steps" in err
    assert main(["train", "--resume", str(tmp_path / "run"), "--max-steps", "3"]) == 0
    assert "warning: could not draw loss.png: no fonts" in capsys.readouterr().err


def test_evaluate_needs_the_training_text(capsys, tiny_run, tmp_path):
    moved = tmp_path / "run"
    shutil.copytree(tiny_run, moved)
    metadata = json.loads((moved / "best" / METADATA).read_text())
    metadata["corpus"]["source"] = str(tmp_path / "gone.txt")
    (moved / "best" / METADATA).write_text(json.dumps(metadata))
    assert "--train-text" in fails(capsys, "evaluate", str(moved), str(tmp_path / "gone.txt"))
    assert "--train-text" in fails(capsys, "evaluate", str(moved))


def test_resume_mistakes(capsys, tiny_run, tiny_corpus, tmp_path):
    assert "no complete checkpoint" in fails(capsys, "train", "--resume", str(tmp_path))
    assert "neither" in fails(capsys, "train", str(tiny_corpus), "--resume", str(tiny_run))
    assert "--hidden-size" in fails(capsys, "train", "--resume", str(tiny_run), "--hidden-size", "64")
    assert "--lr" in fails(capsys, "train", "--resume", str(tiny_run), "--lr", "0.5")
    assert "CORPUS" in fails(capsys, "train", "--out", str(tmp_path / "x"))


@pytest.mark.parametrize("command", ["evaluate", "train --resume"])
def test_broken_checkpoints_for_evaluate_and_resume(capsys, tiny_run, tmp_path, command):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("best"))
    for path in run.glob("ckpt_*"):
        data = (path / WEIGHTS).read_bytes()
        (path / WEIGHTS).write_bytes(data[: len(data) // 2])  # truncated
    assert "checksum" in fails(capsys, *command.split(), str(run))


def test_regularised_stateful_run_and_every_evaluation_end_to_end(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT * 40, encoding="utf-8")
    run = tmp_path / "run"
    tricks = ["--preset", "seed", "--stateful", "--seq-len-jitter", "2", "--weight-drop", "0.2", "--embedding-dropout",
              "0.1", "--dropout", "0.1", "--variational-dropout", "--ema", "0.9", "--eval-every", "3"]  # fmt: skip
    trained = run_cli("train", str(corpus), "--out", str(run), "--max-steps", "6", *SMALL, *tricks)
    assert trained.returncode == 0, trained.stderr
    ckpt = json.loads((run / "ckpt_1_6" / METADATA).read_text())
    config, model = ckpt["training"]["config"], ckpt["model"]
    assert config["preset"] == "seed" and config["stateful"] and config["seq_len_jitter"] == 2 and config["ema"] == 0.9
    assert config["batch_size"] == 4 and config["lr"] == 1e-3  # the flag, and the preset's value
    assert model["weight_drop"] == 0.2 and model["embedding_dropout"] == 0.1 and model["variational_dropout"]
    assert main(["evaluate", str(run), "--windows", "16", "--num-windows", "8", "--dynamic", "--dynamic-segment",
                 "20"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "model, 16-char windows" in out and "model, dynamic eval" in out and "first 8 characters" in out
    assert main(["evaluate", str(run), "--windows", "16", "--num-windows", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["window"] == 16 and report["num_windows"] == 8 and "dynamic_loss" not in report
    assert main(["evaluate", str(run), "--dynamic", "--dynamic-update", "sgd", "--dynamic-decay", "0.1", "--json",
                 "--threads", "1"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert (report["dynamic_update"], report["dynamic_lr"], report["dynamic_decay"]) == ("sgd", 0.03, 0.1)
    err = fails(capsys, "evaluate", str(run), "--windows", "0")
    assert "window" in err
    assert "--threads" in fails(capsys, "evaluate", str(run), "--threads", "0")
    # The library's checks (charnn.scoring.evaluate.check_options), under the flags' names.
    for flag, value, rule in (("--windows", "0", "at least 1"), ("--num-windows", "0", "at least 1"),
                              ("--dynamic-segment", "0", "at least 1"), ("--dynamic-lr", "0", "positive"),
                              ("--dynamic-decay", "1", "in [0, 1)")):  # fmt: skip
        assert f"charnn: error: {flag} must be {rule}, got {value}" in fails(capsys, "evaluate", str(run), flag, value)


def test_configuration_flags_take_their_help_from_the_fields():
    import dataclasses

    from charnn.cli import build_parser
    from charnn.cli.reference import commands
    from charnn.config import ServeLimits, TrainConfig

    for cls in (ModelConfig, TrainConfig, ServeLimits):
        for field in dataclasses.fields(cls):
            assert field.name == "vocab_size" or field.metadata["help"], field.name
    helps = {action.dest: action.help for action in commands(build_parser())["train"]._actions}
    # Names in backticks in a field's help are shown as flags.
    assert helps["seq_len_jitter"].startswith("with --stateful: random window lengths around --seq-len")
    assert helps["ema"].endswith("(default: 0.998; none: off)")  # the default preset's value


def test_a_library_parameter_shown_under_another_flag_name(capsys, tiny_run, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TINY_TEXT, encoding="utf-8")
    # ScoreConfig's `top_k` is charnn score's --top, so the message names --top.
    assert fails(capsys, "score", str(tiny_run), str(text), "--top", "-1") == (
        "charnn: error: --top must be 0 or more, got -1"
    )
    assert fails(capsys, "generate", str(tiny_run), "--best-of", "1", "--num-samples", "2") == (
        "charnn: error: --best-of must be at least --num-samples (2), got 1"
    )


def test_progress_off_a_terminal_passes_records_through_and_draws_nothing(capsys):
    from charnn.cli.progress import Progress

    with Progress(minimum=0) as progress:
        assert list(progress.follow(iter(range(5)), 5, "scoring")) == [0, 1, 2, 3, 4]
        progress("a phase", 3, 10)
        assert progress.bar is None
    assert capsys.readouterr().err == ""


def test_a_huge_length_is_written_as_it_is_drawn_and_stops_quietly_on_a_closed_pipe(tiny_run):
    """10**10 characters, read 20,000 of them, close the pipe: output arrived long before the end
    (nothing is held whole), and the command ends at once, exit 0, without a traceback."""
    for options in ([], ["--stream", "--num-samples", "2"]):
        env = dict(os.environ, PYTHONPATH=str(SRC))
        command = [sys.executable, "-m", "charnn", "generate", str(tiny_run), "--length", str(10**10), *options]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        head = process.stdout.read(20_000)
        process.stdout.close()
        assert process.wait(timeout=120) == 0
        assert len(head) == 20_000 and head.startswith(b"\n")  # the default prime, then the text
        stderr = process.stderr.read().decode()
        assert "Traceback" not in stderr and "Error" not in stderr, stderr


def test_a_huge_length_held_whole_is_refused_before_the_model_is_read(capsys, tmp_path):
    for options in (["--json"], ["--num-samples", "3"], ["--best-of", "2"], ["--beam", "2"]):
        message = fails(capsys, "generate", str(tmp_path / "nowhere"), "--length", str(10**13), *options)
        assert "--length 10,000,000,000,000 is too long to hold" in message and "memory" in message
