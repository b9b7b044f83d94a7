#!/usr/bin/env python3
"""Rebuild the cleaned pretraining texts from a manifest and a folder of raw Project Gutenberg files.

Usage:
    .venv/bin/python pretraining/build_corpus.py RAW_DIR [--manifest pretraining/manifest.tsv] [--out DIR]

For each manifest row the raw file is looked for in RAW_DIR under, in turn: the file name of the
row's source path, ``<gutenberg_id>.txt``, ``<gutenberg_id>-0.txt`` and ``<gutenberg_id>-8.txt``.
It is cleaned with ``clean()`` below (charnn's own ``normalize`` plus a few extra cuts), its
character count and SHA-256 are checked against the manifest, and the cleaned text is written to
OUT/<file>.  Mismatches and missing files are reported; the exit status is 1 if there were any.

Cleaning, step by step:
  1. decode: UTF-8; if that fails, Latin-1 (Gutenberg "-8" editions), refused if the result
     holds C1 control characters (that would be a cp1252 file, not Latin-1);
  2. charnn's normalize(): drop a BOM, CRLF -> LF, cut the header before a "*** START OF" line
     and the licence from an "*** END OF" line;
  3. if there was no "*** START OF" line: cut everything up to an old-style
     "*END*THE SMALL PRINT!" line, and the licence from an "End of (the) Project Gutenberg" line;
     a text with neither form of boundary is refused;
  4. cut a trailing "End of (the/this) Project Gutenberg ..." line (and what follows) in the
     last 3,000 characters; drop the rest of a "*** START OF" line wrapped onto a second line
     (a short first line ending in "***"); drop every paragraph that starts within the first
     6,000 or the last 3,000 characters and names Project Gutenberg, gutenberg.net/.org, says
     "etext/ebook was prepared/produced" or "copyright on this publication was renewed", or
     starts "Produced by" / "E-text prepared by" / "Transcribed from" (producer credits,
     "an HTML version is available" notes); then a lone "Transcriber's Note:" line left at the end;
  5. remove stray byte-order marks (U+FEFF) and bidirectional-control characters (U+200E, U+200F,
     U+202A to U+202E) anywhere (one Chapman's Homer file starts most lines with U+202D);
  6. strip blank lines at both ends and end with exactly one newline.
"""

import argparse
import csv
import hashlib
import re
import sys
from pathlib import Path

from charnn.data.corpus import normalize

_START = re.compile(r"^\*\*\* ?START OF.*$", re.MULTILINE)
_SMALL_PRINT_END = re.compile(r"^.*\*END\*THE SMALL PRINT!.*$", re.MULTILINE)
_OLD_END = re.compile(r"^.*\bEnd of (?:the |this )?Project Gutenberg.*$", re.MULTILINE | re.IGNORECASE)
_PRODUCED_BY = re.compile(
    r"\A(?:Produced by|(?:This )?e-?text (?:was )?(?:prepared|produced) (?:by|for)"
    r"|This text was (?:prepared|produced) (?:by|for)|Transcribed from)\b.*?(?:\n[ \t]*\n|\Z)",
    re.IGNORECASE | re.DOTALL,
)
_WRAPPED_START = re.compile(r"\A[^\n]{0,100}\*\*\*[ \t]*(?:\n|\Z)")
_CREDIT = re.compile(
    r"Project\s+Gutenberg|gutenberg\.(?:net|org)|e-?(?:text|book)\s+(?:was\s+)?(?:prepared|produced)|"
    r"copyright\s+on\s+this\s+publication\s+was\s+renewed",
    re.IGNORECASE,
)
_LONE_NOTE_AT_END = re.compile(r"\n\s*\[?Transcriber.s note:?\]?\s*\Z", re.IGNORECASE)
_INVISIBLE = re.compile("[\ufeff\u200e\u200f\u202a-\u202e]")
_C1 = re.compile(r"[\x80-\x9f]")


class Refused(Exception):
    """The raw file cannot be cleaned confidently."""


def decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
        if _C1.search(text):
            raise Refused("neither UTF-8 nor clean Latin-1") from None
        return text


def drop_credit_paragraphs(text: str, head: int = 6000, tail: int = 3000) -> str:
    """Drop paragraphs near either end that are producer credits or Project Gutenberg notes."""
    parts = re.split(r"(\n[ \t]*\n)", text)  # paragraphs at even indexes, separators at odd ones
    kept, offset = [], 0
    for i, part in enumerate(parts):
        start, offset = offset, offset + len(part)
        if i % 2 == 0 and (start < head or start > len(text) - tail):
            stripped = part.strip()
            if _CREDIT.search(part) or _PRODUCED_BY.match(stripped + "\n\n"):
                if kept:
                    kept.pop()  # the separator before it
                continue
        kept.append(part)
    return "".join(kept)


def clean(data: bytes) -> str:
    """The cleaned text of one raw Gutenberg file (raises Refused)."""
    raw = decode(data)
    had_start = bool(_START.search(raw.removeprefix("\ufeff").replace("\r\n", "\n")))
    text = normalize(raw)
    if not had_start:
        small = _SMALL_PRINT_END.search(text)
        if not small:
            raise Refused("no *** START OF line and no *END*THE SMALL PRINT! line")
        text = text[small.end() :]
        end = _OLD_END.search(text)
        if end:
            text = text[: end.start()]
    # a trailing "End of the Project Gutenberg EBook of ..." line left above the *** END OF line
    tail_from = max(0, len(text) - 3000)
    end = _OLD_END.search(text, tail_from)
    if end:
        text = text[: end.start()]
    text = text.strip("\n")
    text = _WRAPPED_START.sub("", text, count=1)
    text = _LONE_NOTE_AT_END.sub("", drop_credit_paragraphs(text))
    text = _INVISIBLE.sub("", text).strip("\n")
    if not text:
        raise Refused("empty after cleaning")
    return text + "\n"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def find_raw(raw_dir: Path, row: dict) -> Path | None:
    names = [row["source"].rsplit("/", 1)[-1].rsplit(":", 1)[-1]]
    if row.get("gutenberg_id"):
        gid = row["gutenberg_id"]
        names += [f"{gid}.txt", f"{gid}-0.txt", f"{gid}-8.txt"]
    for name in names:
        path = raw_dir / name
        if path.is_file():
            return path
    return None


def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("--manifest", type=Path, default=here / "manifest.tsv")
    parser.add_argument("--out", type=Path, default=Path("pretraining-texts"))
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    with args.manifest.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    problems = written = 0
    for row in rows:
        path = find_raw(args.raw_dir, row)
        if path is None:
            print(f"MISSING  {row['file']}: no raw file for {row['source']}", file=sys.stderr)
            problems += 1
            continue
        try:
            text = clean(path.read_bytes())
        except Refused as why:
            print(f"REFUSED  {row['file']} ({path.name}): {why}", file=sys.stderr)
            problems += 1
            continue
        bad = []
        if len(text) != int(row["characters"]):
            bad.append(f"characters {len(text)} != {row['characters']}")
        if sha256(text) != row["sha256"]:
            bad.append("sha256 differs")
        if bad:
            print(f"MISMATCH {row['file']} ({path.name}): {'; '.join(bad)}", file=sys.stderr)
            problems += 1
            continue
        (args.out / row["file"]).write_text(text, encoding="utf-8", newline="")
        written += 1
    print(f"{written} of {len(rows)} texts written to {args.out}; {problems} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
