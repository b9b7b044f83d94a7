"""charnn score (each character's surprisal) and charnn evaluate (a model's loss beside baselines)."""

import argparse
import contextlib
import json
import sys
from pathlib import Path

from charnn.cli.flags import (
    CHECKPOINT_HELP,
    add_copy_min,
    add_device,
    add_encoding,
    add_precision,
    checkpoint,
)
from charnn.cli.progress import Progress
from charnn.cli.summaries import Surprises, print_evaluation, print_score_summary
from charnn.config import DYNAMIC_SEGMENT, DYNAMIC_UPDATE, DYNAMIC_UPDATES, NANOGPT_WINDOW, NANOGPT_WINDOWS
from charnn.errors import ConfigError, CorpusError


def add_score_parser(commands) -> None:
    p = commands.add_parser("score", help="each character's surprisal under a model, and the total",
                            parents=[checkpoint()],
                            description="Score a text with a model: every character's surprisal (-log2 of "
                            "its probability given the text before it) and the model's top alternatives. The "
                            "first character has nothing before it and is not scored, as in charnn evaluate; "
                            "characters the model does not know are reported and left out. Prints a summary "
                            "unless --json or --by-line says otherwise.")  # fmt: skip
    p.add_argument("text", metavar="TEXT", help="a text file (read as charnn evaluate reads it), or - for "
                   "standard input")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON record per character per line (position, "
                   "character, bits, known, alternatives), streamed, then {\"summary\": ...}; with --by-line, "
                   "one record per line of text")  # fmt: skip
    p.add_argument("--by-line", action="store_true", help="each line's bits per character, most surprising first "
                   "(blank lines left out): lines that do not belong to the text stand out")  # fmt: skip
    p.add_argument("--min-chars", type=int, default=1, metavar="N", help="with --by-line, leave out lines shorter "
                   "than N characters: a few characters make a noisy figure (default: 1)")  # fmt: skip
    p.add_argument("--html", type=Path, metavar="OUT.html", help="also write the text as a web page, coloured by "
                   "surprisal, with the alternatives on hover")  # fmt: skip
    p.add_argument("--top", type=int, default=5, metavar="K", help="alternatives reported per character "
                   "(default: 5)")  # fmt: skip
    p.add_argument("--streams", type=int, default=64, metavar="N", help="pieces of a long text scored side by "
                   "side, each after a 256-character warm-up (faster); 1 scores every character after the "
                   "whole text before it (default: 64; a text under 4,096 characters is one piece)")  # fmt: skip
    add_precision(p, "fp32: the plain model, the figures of charnn evaluate; auto: the generation step, int8 where "
                  "the CPU computes it fast (several times faster; totals within 0.1%%, see docs/results.md), "
                  "else fp32 (default: auto)")  # fmt: skip
    add_encoding(p)
    add_device(p)
    # ScoreConfig calls the number of alternatives `top_k`; this command's flag for it is --top.
    p.set_defaults(run=run_score, renames={"top_k": "top"})


def run_score(args: argparse.Namespace) -> int:
    from charnn.config import ScoreConfig
    from charnn.hardware import resolve_device
    from charnn.run_folder import load_checkpoint
    from charnn.scoring.highlight import Page
    from charnn.scoring.score import ScoreTotals, score

    config = ScoreConfig(top_k=args.top, streams=args.streams, precision=args.precision)
    text, name = _read_text(args.text, args.encoding)
    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    records = score(ckpt.model, ckpt.vocab, text, config)
    totals, surprises = ScoreTotals(), Surprises()
    page = Page(args.html, title=f"{ckpt.path.name} on {name}") if args.html is not None else None
    with Progress(minimum=50_000) as progress, page or contextlib.nullcontext():
        records = _counted(progress.follow(records, len(text), "scoring"), totals, surprises, page)
        if args.by_line:
            _print_lines(records, args.min_chars, args.json)
        elif args.json:
            for record in records:
                print(json.dumps(record.to_dict(), ensure_ascii=False))
        else:
            for _ in records:
                pass
    summary = {"checkpoint": str(ckpt.path), "text": name, **totals.to_dict()}
    if args.json:
        if not args.by_line:
            print(json.dumps({"summary": summary}, ensure_ascii=False))
    elif not args.by_line:
        print_score_summary(summary, surprises)
    if args.html is not None:
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _print_lines(records, min_chars: int, as_json: bool) -> None:
    """Each line's bits per character, most surprising first."""
    from charnn.scoring.score import line_scores

    kept = (line for line in line_scores(records)
            if line.scored and line.text.strip() and len(line.text) >= min_chars)  # fmt: skip
    for line in sorted(kept, key=lambda line: -line.bits_per_character):
        if as_json:
            print(json.dumps({"line": line.line, "bits_per_character": line.bits_per_character,
                              "bits": line.bits, "scored": line.scored, "text": line.text},
                             ensure_ascii=False))  # fmt: skip
        else:
            print(f"{line.bits_per_character:8.3f} bits/char  line {line.line:>6}  {line.text}")


def _read_text(path: str, encoding: str) -> tuple[str, str]:
    """The text to score and what to call it: a file (read as `charnn evaluate` reads one), or - for stdin."""
    from charnn.data.corpus import decode_bytes, load_corpus, normalize

    if path != "-":
        return load_corpus(path, encoding=encoding).text, path
    text = normalize(decode_bytes(sys.stdin.buffer.read(), encoding, "standard input"))
    if not text:
        raise CorpusError("standard input is empty; give some text to score")
    return text, "standard input"


def _counted(records, totals, surprises: Surprises, page):
    for record in records:
        totals.add(record)
        surprises.add(record)
        if page is not None:
            page.add(record)
        yield record


# --- evaluate ----------------------------------------------------------------------------------------------


def add_evaluate_parser(commands) -> None:
    p = commands.add_parser("evaluate", help="score a model on a text beside n-gram and gzip baselines",
                            parents=[checkpoint(CHECKPOINT_HELP)],
                            description="Loss (nats and bits per character) of a model on a text, beside an "
                            "interpolated Kneser-Ney 5-gram fitted on the training text and gzip -9; and the "
                            "share of the text's words never seen in training (for generated samples).")  # fmt: skip
    p.add_argument("text", metavar="TEXT", nargs="?", help="a text file (or any corpus); default: the held-out "
                   "part of the model's training corpus")  # fmt: skip
    p.add_argument("--train-text", type=Path, help="the training text for the baselines, when the checkpoint's "
                   "corpus cannot be found")  # fmt: skip
    add_encoding(p)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--windows", type=int, metavar="N", help="also score random N-character windows, each from a "
                   f"zero state (nanoGPT's protocol; it uses {NANOGPT_WINDOW})")  # fmt: skip
    p.add_argument("--num-windows", type=int, default=NANOGPT_WINDOWS, help="windows to score with --windows "
                   f"(default: {NANOGPT_WINDOWS}, nanoGPT's 200 batches of 64)")  # fmt: skip
    p.add_argument("--window-seed", type=int, default=0, help="seed for the windows' positions (default: 0)")
    p.add_argument("--threads", type=int, help="CPU threads for the model (default: every core; on a machine "
                   "other jobs share, 1 is often faster)")  # fmt: skip
    p.add_argument("--dynamic", action="store_true", help="also score with dynamic evaluation (Krause et al. "
                   "2018): each segment scored, then a gradient step taken on it")  # fmt: skip
    p.add_argument("--dynamic-segment", type=int, default=DYNAMIC_SEGMENT, help="characters per segment of "
                   f"dynamic evaluation (default: {DYNAMIC_SEGMENT})")  # fmt: skip
    lrs = ", ".join(f"{lr:g} for {name}" for name, (lr, _) in DYNAMIC_UPDATES.items())
    decays = ", ".join(f"{decay:g} for {name}" for name, (_, decay) in DYNAMIC_UPDATES.items())
    p.add_argument("--dynamic-update", choices=list(DYNAMIC_UPDATES), default=DYNAMIC_UPDATE, help="dynamic "
                   "evaluation's update: rms (Krause et al.'s: each weight's step scaled by its gradient RMS on "
                   "the training text, and pulled back towards the trained weights) or sgd "
                   f"(default: {DYNAMIC_UPDATE})")  # fmt: skip
    p.add_argument("--dynamic-lr", type=float, help=f"learning rate of dynamic evaluation (default: {lrs})")
    p.add_argument("--dynamic-decay", type=float, help="pull towards the trained weights after each step of dynamic "
                   f"evaluation, a share in [0, 1) (default: {decays})")  # fmt: skip
    add_copy_min(p)
    p.set_defaults(run=run_evaluate, renames={"window": "windows", "min_length": "copy_min"})


def run_evaluate(args: argparse.Namespace) -> int:
    from charnn.run_folder import load_checkpoint
    from charnn.scoring.evaluate import check_options, evaluate_text

    # Checked before the model and the texts are read, which takes a while.
    check_options(window=args.windows, num_windows=args.num_windows, dynamic_segment=args.dynamic_segment,
                  dynamic_update=args.dynamic_update, dynamic_lr=args.dynamic_lr,
                  dynamic_decay=args.dynamic_decay)  # fmt: skip
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"`threads` must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    train_text, text = _evaluation_texts(args, ckpt)
    with Progress() as progress:
        report = evaluate_text(ckpt.model, ckpt.vocab, text, training_text=train_text, window=args.windows,
                               num_windows=args.num_windows, window_seed=args.window_seed, dynamic=args.dynamic,
                               dynamic_segment=args.dynamic_segment, dynamic_update=args.dynamic_update,
                               dynamic_lr=args.dynamic_lr, dynamic_decay=args.dynamic_decay,
                               progress=progress)  # fmt: skip
    report["checkpoint"] = str(ckpt.path)
    report["text"] = args.text or "held-out part of the training corpus"
    if args.text:  # a text of its own, a generated one perhaps: what it copied from the training text
        from charnn.scoring.copies import index_for

        report["copies"] = index_for(train_text).report(text, args.copy_min).to_dict()
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print_evaluation(report, args.windows, args.dynamic_update if args.dynamic else None)
    return 0


def _evaluation_texts(args: argparse.Namespace, ckpt) -> tuple[str, str]:
    """The training text (for the baselines) and the text to evaluate on."""
    from charnn.data.corpus import load_corpus
    from charnn.data.dataset import of_checkpoint

    data = None  # the checkpoint's own corpus, found again when needed
    if args.train_text is not None:
        train_text = load_corpus(str(args.train_text), encoding=args.encoding).text
    else:
        try:
            data = of_checkpoint(ckpt)
        except CorpusError as error:
            raise CorpusError(f"{error}; pass --train-text PATH") from None
        train_text = data.training_text()
    if args.text:
        return train_text, load_corpus(args.text, encoding=args.encoding).text
    text = (data or of_checkpoint(ckpt)).held_out_text()
    if not text:
        raise ConfigError("this model was trained without held-out text; give a TEXT to evaluate on")
    return train_text, text
