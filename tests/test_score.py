"""Scoring a text: surprisal per character, totals equal to evaluate's cross-entropy, the CLI's
forms (JSON lines, by line, a web page checked in headless Chromium), and best-of generation."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from browser import CHROMIUM, FLAGS, playwright_api
from charnn.checkpoint import save_checkpoint
from charnn.cli import main
from charnn.config import ModelConfig, SampleConfig
from charnn.errors import ConfigError, UnknownCharactersError
from charnn.generation import generate_best_of, generate_text, rank_samples
from charnn.model import CharRNN
from charnn.run_folder import load_checkpoint
from charnn.scoring.evaluate import evaluate_text
from charnn.scoring.score import (
    ContinuationScorer,
    ScoreConfig,
    line_scores,
    mean_logprob,
    score,
    score_continuations,
    score_text,
)
from charnn.vocab import Vocabulary
from conftest import TINY_TEXT, run_cli

TEXT = TINY_TEXT * 6  # under 2,000 characters: evaluate scores it as one piece, as score does
VOCAB = Vocabulary.from_text(TINY_TEXT)


def tiny_model(cell: str = "gru", num_layers: int = 1, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(vocab_size=len(VOCAB), embedding_dim=8, hidden_size=16, cell=cell,
                               num_layers=num_layers))  # fmt: skip


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "ckpt", tiny_model(), VOCAB, training={"epoch": 1}, corpus={})


def fails(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charnn: error: "), err
    return lines[0]


# --- the library -------------------------------------------------------------------------------


@pytest.mark.parametrize("cell, num_layers", [("gru", 1), ("lstm", 2)])
def test_bits_sum_to_evaluates_cross_entropy(cell, num_layers):
    model = tiny_model(cell, num_layers)
    result = score_text(model, VOCAB, TEXT)
    report = evaluate_text(model, VOCAB, TEXT, training_text=None)
    # The first character has nothing before it: scored by neither.
    assert result.records[0].bits is None
    assert result.totals.scored == len(TEXT) - 1
    assert sum(r.bits for r in result.records[1:]) == pytest.approx(result.totals.bits)
    assert result.totals.bits_per_character == pytest.approx(report["bpc"], rel=1e-6)
    assert all(r.bits >= 0 for r in result.records[1:])


def test_surprisal_is_minus_log2_of_the_models_probability():
    model = tiny_model()
    records = score_text(model, VOCAB, "“Pip,” 你好", ScoreConfig(top_k=len(VOCAB))).records
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(VOCAB.encode("“Pip,” 你好")).unsqueeze(0))
    probs = torch.softmax(logits[0], dim=-1)
    for i, record in enumerate(records[1:], start=1):
        expected = probs[i - 1, VOCAB.characters.index(record.character)].item()
        assert record.bits == pytest.approx(-math.log2(expected), rel=1e-5)
        alternatives = dict(record.alternatives)
        assert alternatives[record.character] == pytest.approx(expected, rel=1e-5)
        assert list(alternatives.values()) == sorted(alternatives.values(), reverse=True)
        assert sum(alternatives.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("cell, num_layers", [("gru", 1), ("lstm", 2)])
def test_chunked_scoring_equals_unchunked(cell, num_layers):
    model = tiny_model(cell, num_layers)
    whole = score_text(model, VOCAB, TEXT, ScoreConfig(chunk_size=10_000, span=10_000)).records
    for config in (ScoreConfig(chunk_size=1, span=7), ScoreConfig(chunk_size=7, span=50), ScoreConfig(chunk_size=64)):
        pieces = score_text(model, VOCAB, TEXT, config).records
        assert [r.character for r in pieces] == list(TEXT)
        assert [r.bits for r in pieces[1:]] == pytest.approx([r.bits for r in whole[1:]], abs=1e-5)
        assert [r.alternatives[0][0] for r in pieces[1:]] == [r.alternatives[0][0] for r in whole[1:]]


def test_pieces_side_by_side_change_little_and_keep_the_order():
    model = tiny_model()
    exact = score_text(model, VOCAB, TEXT, ScoreConfig(streams=1, span=100))
    batched = score_text(model, VOCAB, TEXT, ScoreConfig(streams=4, span=100, warmup=60))
    assert [r.character for r in batched.records] == list(TEXT)
    # The first piece of each block is exact; the others start from a warmed-up state.
    assert [r.bits for r in batched.records[1:101]] == pytest.approx([r.bits for r in exact.records[1:101]], abs=1e-5)
    assert batched.totals.bits == pytest.approx(exact.totals.bits, rel=1e-3)
    assert batched.totals.scored == exact.totals.scored


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_the_fast_step_scores_close_to_the_plain_model(tiny_run, precision):
    ckpt = load_checkpoint(tiny_run)
    exact = score_text(ckpt.model, ckpt.vocab, TEXT, ScoreConfig(precision="fp32", span=300, streams=3))
    fast = score_text(ckpt.model, ckpt.vocab, TEXT, ScoreConfig(precision=precision, span=300, streams=3))
    assert fast.totals.scored == exact.totals.scored
    assert fast.totals.bits == pytest.approx(exact.totals.bits, rel=0.01)
    assert [r.bits for r in fast.records[1:]] == pytest.approx([r.bits for r in exact.records[1:]], abs=0.1)


def test_unknown_characters_are_reported_and_left_out():
    model = tiny_model()
    text = "Q“Pip,” said Zoë 你好.\n"
    result = score_text(model, VOCAB, text)
    assert [r.position for r in result.records] == list(range(len(text)))
    unknown = [r for r in result.records if not r.known]
    assert "".join(r.character for r in unknown) == "QZë"
    assert all(r.bits is None and r.alternatives == () for r in unknown)
    assert result.totals.unknown_count == 3 and result.totals.to_dict()["unknown"] == ["Q", "Z", "ë"]
    # What the model reads is the text without them, as evaluate reads it.
    kept = score_text(model, VOCAB, "“Pip,” said o 你好.\n")
    assert [r.bits for r in result.records if r.known] == pytest.approx([r.bits for r in kept.records], abs=1e-6)
    assert result.totals.bits_per_character == pytest.approx(
        evaluate_text(model, VOCAB, text, training_text=None)["bpc"], rel=1e-6
    )
    assert score_text(model, VOCAB, "QZ").totals.scored == 0
    assert score_text(model, VOCAB, "QZ").totals.bits_per_character is None


def test_context_is_fed_not_reported_and_continuations_agree():
    model = tiny_model(num_layers=2)
    prompt, continuations = "“Pip,” said", [" Joe, “old chap!", " the marshes.", ""]
    batch = score_continuations(model, VOCAB, prompt, continuations, top_k=3)
    for text, records in zip(continuations, batch, strict=True):
        alone = score_text(model, VOCAB, text, ScoreConfig(top_k=3), context=prompt).records
        assert len(records) == len(alone) == len(text)
        assert all(r.bits is not None for r in alone)  # after a context, the first character is scored too
        assert [r.bits for r in records] == pytest.approx([r.bits for r in alone], abs=1e-5)
        assert [r.alternatives[0][0] for r in records] == [r.alternatives[0][0] for r in alone]
    # The prompt's characters count: scoring the whole text gives the continuation's characters the same bits.
    whole = score_text(model, VOCAB, prompt + continuations[0]).records[len(prompt) :]
    assert [r.bits for r in whole] == pytest.approx([r.bits for r in batch[0]], abs=1e-5)
    # Without a prompt, each continuation's first character is not scored; an empty one has no records.
    unprompted = score_continuations(model, VOCAB, "", ["Pip", "P", ""])
    assert [[r.bits is None for r in records] for records in unprompted] == [[True, False, False], [True], []]
    assert [r.bits for r in unprompted[0]] == pytest.approx([r.bits for r in score_text(model, VOCAB, "Pip").records])
    with pytest.raises(UnknownCharactersError, match="'Q'"):
        score(model, VOCAB, "Pip", context="Q")
    with pytest.raises(ConfigError, match="top_k"):
        ScoreConfig(top_k=-1)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_text_scored_piece_by_piece_gets_score_figures(cell):
    model = tiny_model(cell, num_layers=2)
    prompt, pieces = "“Pip,” said", [" Joe", ", “old ", "c", "hap! 你好.” The marshes" * 20]
    text = "".join(pieces)
    alone = score_text(model, VOCAB, text, ScoreConfig(top_k=3), context=prompt).records
    scorer = ContinuationScorer(model, VOCAB, prompt, top_k=3)
    twin = scorer.fork()  # goes on from the prompt on its own
    fed = [scorer.feed(piece) for piece in pieces]
    logprobs = [value for scores in fed for value in scores.logprobs]
    alternatives = [top for scores in fed for top in scores.alternatives]
    assert logprobs == pytest.approx([r.logprob for r in alone], abs=1e-5)
    for record, top in zip(alone, alternatives, strict=True):
        assert [c for c, _ in top] == [c for c, _ in record.alternatives]
        assert [v for _, v in top] == pytest.approx([math.log(p) for _, p in record.alternatives], abs=1e-5)
    assert twin.feed(text).logprobs == pytest.approx(logprobs, abs=1e-5)
    assert scorer.feed("").logprobs == [] and ContinuationScorer(model, VOCAB, "P").feed("ip").alternatives == [[], []]
    with pytest.raises(ConfigError, match="context"):
        ContinuationScorer(model, VOCAB, "")
    with pytest.raises(UnknownCharactersError, match="'Q'"):
        scorer.feed("Qa")


def test_lines_take_their_newline():
    model = tiny_model()
    records = score_text(model, VOCAB, "“Pip,”\n\nsaid Joe").records
    lines = list(line_scores(records))
    assert [(line.line, line.text, line.scored) for line in lines] == [(1, "“Pip,”", 6), (2, "", 1), (3, "said Joe", 8)]
    assert sum(line.bits for line in lines) == pytest.approx(sum(r.bits for r in records[1:]))


# --- best of n ---------------------------------------------------------------------------------


def test_best_of_picks_the_highest_mean_log_probability(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    sampling = SampleConfig(temperature=1.5)
    ranked = generate_best_of(ckpt.model, ckpt.vocab, "“Pip", 40, sampling, best_of=6, seed=3)
    # The candidates are generate_text's samples with the same seed.
    assert ranked.samples == generate_text(
        ckpt.model, ckpt.vocab, "“Pip", length=40, sampling=sampling, num_samples=6, seed=3
    )
    assert len(set(ranked.samples)) == 6
    scored = [mean_logprob(score_text(ckpt.model, ckpt.vocab, s, context="“Pip").records) for s in ranked.samples]
    assert ranked.mean_logprobs == pytest.approx(scored, abs=1e-6)
    best = max(range(6), key=lambda i: scored[i])
    assert ranked.order[0] == best and ranked.best() == [ranked.samples[best]]
    assert [scored[i] for i in ranked.order] == sorted(scored, reverse=True)
    assert rank_samples(ckpt.model, ckpt.vocab, "“Pip", ["", "ip"]).order == [1, 0]  # an empty sample ranks last
    with pytest.raises(ConfigError, match="best_of"):
        generate_best_of(ckpt.model, ckpt.vocab, "Pip", 10, best_of=0)


def test_generate_best_of_on_the_command_line(tiny_run, capsys):
    ckpt = load_checkpoint(tiny_run)
    argv = ["generate", str(tiny_run), "--prime", "“Pip", "--length", "30", "--temperature", "1.2", "--seed", "9"]
    assert main([*argv, "--best-of", "5", "--num-samples", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ranked = generate_best_of(ckpt.model, ckpt.vocab, "“Pip", 30, SampleConfig(1.2), best_of=5, seed=9)
    assert out["samples"] == ranked.best(2)
    assert out["mean_logprobs"] == pytest.approx([ranked.mean_logprobs[i] for i in ranked.order[:2]])
    assert out["best_of"] == 5
    assert main([*argv, "--best-of", "5"]) == 0
    assert capsys.readouterr().out == "“Pip" + ranked.best()[0] + "\n"
    assert "--num-samples" in fails(capsys, *argv, "--best-of", "2", "--num-samples", "3")
    assert "--stream" in fails(capsys, *argv, "--best-of", "2", "--stream")


# --- the command line --------------------------------------------------------------------------


def test_json_lines_stream_every_character_then_the_summary(checkpoint, tmp_path, capsys):
    path = tmp_path / "text.txt"
    path.write_text(TEXT + "Q", encoding="utf-8")
    assert main(["score", str(checkpoint), str(path), "--json", "--top", "3", "--precision", "fp32"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    records, summary = lines[:-1], lines[-1]["summary"]
    assert "".join(r["character"] for r in records) == TEXT + "Q"
    assert records[0]["bits"] is None and records[-1]["known"] is False
    assert all(len(r["alternatives"]) == 3 for r in records[1:-1])
    assert summary["scored"] == len(TEXT) - 1 and summary["unknown"] == ["Q"]
    expected = evaluate_text(load_checkpoint(checkpoint).model, VOCAB, TEXT, training_text=None)["bpc"]
    assert summary["bits_per_character"] == pytest.approx(expected, rel=1e-6)
    assert sum(r["bits"] for r in records if r["bits"] is not None) == pytest.approx(summary["bits"])


def test_summary_from_standard_input_matches_evaluate(checkpoint, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    result = run_cli("score", str(checkpoint), "-", "--json", "--precision", "fp32", input_text=TEXT)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])["summary"]
    evaluated = run_cli("evaluate", str(checkpoint), str(path), "--train-text", str(path), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert summary["bits_per_character"] == pytest.approx(json.loads(evaluated.stdout)["bpc"], rel=1e-6)
    plain = run_cli("score", str(checkpoint), str(path), "--precision", "fp32")
    assert plain.returncode == 0 and f"{summary['bits_per_character']:.4f} bits/char" in plain.stdout
    assert "most surprising" in plain.stdout


def test_by_line_puts_the_line_that_does_not_belong_first(tiny_run, tmp_path, capsys):
    lines = TINY_TEXT.splitlines() * 3
    lines.insert(4, "你你你你你你你你 ——;;;;——")
    path = tmp_path / "text.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["score", str(tiny_run), str(path), "--by-line"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(lines)
    figures = [float(line.split()[0]) for line in out]
    assert figures == sorted(figures, reverse=True)
    assert out[0].endswith("line      5  你你你你你你你你 ——;;;;——")
    assert main(["score", str(tiny_run), str(path), "--by-line", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["line"] == 5 and records[0]["bits_per_character"] == pytest.approx(figures[0], abs=1e-3)


def test_mistakes_are_one_line_with_exit_code_2(checkpoint, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert "no such file" in fails(capsys, "score", str(checkpoint), str(tmp_path / "none.txt"))
    assert "no such checkpoint" in fails(capsys, "score", str(tmp_path / "nothing"), str(text))
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    fails(capsys, "score", str(broken), str(text))
    (tmp_path / "empty.txt").write_text("")
    assert "empty" in fails(capsys, "score", str(checkpoint), str(tmp_path / "empty.txt"))
    (tmp_path / "bad.txt").write_bytes(b"Pip \xff Joe")
    assert "byte 4" in fails(capsys, "score", str(checkpoint), str(tmp_path / "bad.txt"))
    assert "--top must be 0 or more" in fails(capsys, "score", str(checkpoint), str(text), "--top", "-1")
    missing_folder = tmp_path / "no" / "page.html"
    assert "cannot write" in fails(capsys, "score", str(checkpoint), str(text), "--html", str(missing_folder))
    err = fails(capsys, "score", str(checkpoint), str(text), "--html", str(tmp_path))
    assert f"{tmp_path} is a folder; give a file name such as scored.html" in err
    result = run_cli("score", str(checkpoint), "-", input_text="")
    assert result.returncode == 2 and result.stderr.strip() == (
        "charnn: error: standard input is empty; give some text to score"
    )


# --- the page, in a real browser ---------------------------------------------------------------


def test_html_page_colours_the_text_and_shows_alternatives_on_hover(tiny_run, tmp_path, capsys):
    sync_api = playwright_api()
    text = TINY_TEXT + "Q<b>&\n"  # an unknown character, and markup that must stay text
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    page_path = tmp_path / "page.html"
    argv = ["score", str(tiny_run), str(tmp_path / "text.txt"), "--html", str(page_path), "--top", "4"]
    assert main([*argv, "--precision", "fp32"]) == 0
    assert list(tmp_path.glob(".page.html*")) == []  # written under a temporary name, then renamed
    expected = score_text(load_checkpoint(tiny_run).model, load_checkpoint(tiny_run).vocab, text, ScoreConfig(top_k=4))

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(page_path.as_uri())
            spans = page.locator("#text span")
            assert spans.count() == len(text)
            shown = page.eval_on_selector("#text", "el => el.textContent")
            assert shown == text.replace("\n", "↵\n")
            assert f"{expected.totals.bits_per_character:.4f} bits per character" in page.inner_text("#summary")
            assert "not in the model" in page.inner_text("#summary")
            # The summary is last in the file but first on the screen.
            header_top = page.eval_on_selector("#summary", "el => el.getBoundingClientRect().top")
            text_top = page.eval_on_selector("#text", "el => el.getBoundingClientRect().top")
            assert header_top < text_top
            # Colours follow surprisal: the most surprising character is darkest.
            worst = max(range(1, len(TINY_TEXT)), key=lambda i: expected.records[i].bits)
            least = min(range(1, len(TINY_TEXT)), key=lambda i: expected.records[i].bits)
            alpha = "el => parseFloat(getComputedStyle(el).backgroundColor.split(',')[3] || '0')"
            assert spans.nth(worst).evaluate(alpha) > spans.nth(least).evaluate(alpha)
            # Hovering shows the character's bits and the model's alternatives.
            record = expected.records[10]
            spans.nth(10).hover()
            tip = spans.nth(10).evaluate("el => getComputedStyle(el, '::after').content")
            assert f"{record.bits:.2f} bits" in tip
            for character, _ in record.alternatives:
                assert {" ": "␣", "\n": "↵"}.get(character, character) in tip
            assert "vocabulary" in spans.nth(len(TINY_TEXT)).get_attribute("data-tip")  # the Q
            assert spans.nth(0).get_attribute("data-tip").endswith("not scored (nothing before it to predict it from)")
            page.screenshot(path=str(tmp_path / "score-page.png"), full_page=False)
        finally:
            browser.close()
    assert (tmp_path / "score-page.png").stat().st_size > 10_000
