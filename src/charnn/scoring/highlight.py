"""A scored text as a web page: each character coloured by its surprisal, the model's alternatives on hover.

The page is self-contained (no script, no file or network fetched) and written as the records
come, into a temporary file renamed into place at the end, so a long text never sits in memory
twice and a failure leaves no half-written page.

    from charnn.scoring.score import score

    write_page(score(ckpt.model, ckpt.vocab, text), "scored.html", title="ge on chapter 1")
"""

import html
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from charnn.errors import ConfigError, OutputError
from charnn.scoring.score import CharacterScore, ScoreTotals

LEVELS = 10  # colour steps, one per bit; 10 bits and more share the darkest
SHOWN = {" ": "␣", "\n": "↵", "\t": "⇥"}  # characters with no visible shape, in the tooltips

_STYLE = """
body { font: 15px/1.55 Georgia, serif; margin: 0; background: #fafaf7; color: #222; }
main { display: flex; flex-direction: column; max-width: 60em; margin: 0 auto; padding: 1.5em; }
header { order: -1; font: 13px/1.4 system-ui, sans-serif; border-bottom: 1px solid #ddd; margin-bottom: 1em; }
h1 { font-size: 17px; margin: 0 0 .3em; }
.legend span { display: inline-block; padding: 0 .45em; margin-right: 1px; }
#text { white-space: pre-wrap; word-wrap: break-word; }
#text span { position: relative; }
#text span:hover { outline: 1px solid #333; }
#text span:hover::after {
  content: attr(data-tip); position: absolute; left: 0; top: 1.5em; z-index: 1; white-space: pre;
  font: 12px/1.3 ui-monospace, monospace; background: #222; color: #fff; padding: .3em .5em; border-radius: 3px;
}
#text .nl { color: #bbb; }
#text .unknown { outline: 1px dashed #888; color: #888; }
#text .unscored { color: #666; }
"""


def _level_css() -> str:
    # From white (0 bits, no surprise) to deep red (LEVELS bits and more).
    rules = []
    for level in range(LEVELS + 1):
        alpha = level / LEVELS * 0.85
        rules.append(f".b{level} {{ background: rgba(214, 39, 40, {alpha:.3f}); }}")
    return "\n".join(rules)


def _show(character: str) -> str:
    return SHOWN.get(character, character)


def _tip(record: CharacterScore) -> str:
    if not record.known:
        return f"{_show(record.character)}: not in the model's vocabulary (left out)"
    if record.bits is None:
        return f"{_show(record.character)}: not scored (nothing before it to predict it from)"
    lines = [f"{_show(record.character)}: {record.bits:.2f} bits (p = {2**-record.bits:.2%})"]
    lines += [f"  {_show(c)}  {p:6.2%}" for c, p in record.alternatives]
    return "\n".join(lines)


def _span(record: CharacterScore) -> str:
    if not record.known:
        css = "unknown"
    elif record.bits is None:
        css = "unscored"
    else:
        css = f"b{min(LEVELS, int(record.bits))}"
    if record.character == "\n":
        css += " nl"
        shown = "↵</span>\n"
    else:
        shown = html.escape(record.character) + "</span>"
    return f'<span class="{css}" data-tip="{html.escape(_tip(record))}">{shown}'


class Page:
    """A page written as records are added: `with Page(path) as page: page.add(record)`.

    The file appears at `path` only when the block ends without an error.
    """

    def __init__(self, path: str | Path, *, title: str = "scored text"):
        self.path = Path(path)
        if self.path.is_dir():
            raise ConfigError(f"{self.path} is a folder; give a file name such as scored.html")
        self.title = title
        self.totals = ScoreTotals()

    def __enter__(self) -> "Page":
        try:
            self.handle = tempfile.NamedTemporaryFile(
                "w", encoding="utf-8", dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp", delete=False
            )
            self.handle.write('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n')
            self.handle.write(f"<title>{html.escape(self.title)}</title>\n<style>{_STYLE}{_level_css()}</style>")
            self.handle.write('</head>\n<body><main><div id="text">')
        except OSError as error:
            self._discard()
            raise OutputError(f"cannot write {self.path}: {error.strerror}") from None
        return self

    def add(self, record: CharacterScore) -> None:
        self.totals.add(record)
        try:
            self.handle.write(_span(record))
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror}") from None

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            self._discard()
            return
        try:
            # The header comes last in the file (its figures are known only now) and first on screen.
            self.handle.write("</div>\n" + _header(self.title, self.totals) + "</main></body></html>\n")
            self.handle.close()
            os.replace(self.handle.name, self.path)
        except OSError as error:
            self._discard()
            raise OutputError(f"cannot write {self.path}: {error.strerror}") from None

    def _discard(self) -> None:
        handle = getattr(self, "handle", None)
        if handle is not None:
            handle.close()
            Path(handle.name).unlink(missing_ok=True)


def write_page(records: Iterable[CharacterScore], path: str | Path, *, title: str = "scored text") -> ScoreTotals:
    """Write the page for `records` to `path` (atomically); return their totals."""
    with Page(path, title=title) as page:
        for record in records:
            page.add(record)
    return page.totals


def _header(title: str, totals: ScoreTotals) -> str:
    bpc = totals.bits_per_character
    figures = f"{totals.characters:,} characters, {totals.scored:,} scored: {totals.bits:,.1f} bits"
    if bpc is not None:
        figures += f", <b>{bpc:.4f} bits per character</b>"
    if totals.unknown_count:
        shown = " ".join(html.escape(_show(c)) for c in sorted(totals.unknown_characters))
        figures += f"; {totals.unknown_count:,} not in the model's vocabulary ({shown}), left out"
    legend = "".join(f'<span class="b{level}">{level}</span>' for level in range(LEVELS + 1))
    return (
        f'<header id="summary"><h1>{html.escape(title)}</h1><p>{figures}</p>'
        f'<p class="legend">bits of surprisal: {legend}+ &nbsp; hover a character for what the model expected '
        "there</p></header>\n"
    )
