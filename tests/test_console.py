"""A console that cannot show every character (charnn.cli.console): the CLI, run for real with
PYTHONIOENCODING=ascii or latin-1 on a model of a text with curly quotes and 你好, exits 0 with
escapes where the characters would be, says so once on standard error, and --json stays valid JSON."""

import json
import os
import subprocess
import sys

import pytest

from charnn.cli.console import escape
from conftest import SRC

NOTE = "cannot show some characters"


def run(encoding: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m charnn ARGS` with standard output in `encoding`; its output as bytes."""
    env = dict(os.environ, PYTHONIOENCODING=encoding, PYTHONPATH=str(SRC))
    return subprocess.run([sys.executable, "-m", "charnn", *args], capture_output=True, env=env, timeout=300)


def written(result: subprocess.CompletedProcess, encoding: str) -> str:
    """Standard output of a run that went well, which must be in `encoding`; the note said once."""
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.count(NOTE) == 1, stderr
    return result.stdout.decode(encoding)  # raises if anything outside the encoding was written


def unescaped(text: str) -> str:
    """The text the escapes stand for (the samples here hold no backslash of their own)."""
    return text.encode("ascii").decode("unicode_escape").encode("utf-16", "surrogatepass").decode("utf-16")


def test_escape_is_json_escape():
    for character in ("é", "你", "\u201c", "😀"):
        assert escape(character) == json.dumps(character)[1:-1]


def test_generate_on_an_ascii_console_writes_the_same_text_escaped(tiny_run):
    args = ("generate", str(tiny_run), "--prime", "“Pip", "--length", "200", "--seed", "3")
    text = written(run("ascii", *args), "ascii")
    assert "\\u201c" in text  # the prime's curly quote
    plain = run("utf-8", *args)
    assert plain.returncode == 0 and NOTE not in plain.stderr.decode()
    assert unescaped(text) == plain.stdout.decode("utf-8")


@pytest.mark.parametrize(
    "options",
    [
        ["--stream"],
        ["--num-samples", "2"],
        ["--best-of", "3", "--num-samples", "2"],
        ["--beam", "2"],
        ["--temperature", "0.5,1.5"],
    ],  # fmt: skip
    ids=["stream", "num-samples", "best-of", "beam", "temperatures"],
)
def test_every_way_of_generating_on_an_ascii_console(tiny_run, options):
    text = written(run("ascii", "generate", str(tiny_run), "--prime", "“Pip", "--length", "40", *options), "ascii")
    assert text.count("\\u201cPip") == (2 if "--num-samples" in options or "--temperature" in options else 1)


def test_generate_on_a_latin_1_console(tiny_run):
    text = written(run("latin-1", "generate", str(tiny_run), "--prime", "“Pip", "--length", "40"), "latin-1")
    assert text.startswith("\\u201cPip")


def test_json_is_unaffected(tiny_run):
    args = ("generate", str(tiny_run), "--prime", "“Pip", "--length", "100", "--seed", "5", "--json")
    result = run("ascii", *args)
    assert result.returncode == 0 and "Traceback" not in result.stderr.decode()
    plain = json.loads(run("utf-8", *args).stdout.decode("utf-8"))
    # Exactly what json.dumps writes when told to keep to ASCII: valid JSON holding the same text.
    assert result.stdout.decode("ascii") == json.dumps(plain, ensure_ascii=True) + "\n"


@pytest.mark.parametrize("command", [["info"], ["score"], ["score", "--by-line"], ["evaluate"]], ids=" ".join)
def test_info_score_and_evaluate_on_an_ascii_console(tiny_run, tmp_path, command):
    text_path = tmp_path / "text.txt"  # characters the model knows (“ ’ 你) and two it does not (ï ö)
    text = "“Pïp,” said Jöe, “old chap! 你好.”\nEstella’s eyes never looked at me.\n"
    text_path.write_text(text * 3, encoding="utf-8")
    args = [command[0], str(tiny_run), *([str(text_path)] if command[0] != "info" else []), *command[1:]]
    text = written(run("ascii", *args), "ascii")
    assert "\\u" in text
