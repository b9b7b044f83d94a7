"""A corpus file's text, decoded and normalised, in one go or in chunks of bounded size.

Normalising drops a byte-order mark, turns CRLF into LF, and cuts a Project Gutenberg header
and licence: what is kept follows the first line that starts ``*** START OF`` (or ``***START
OF``) and stops at the first line after it that starts ``*** END OF`` (with no START line, at
the first END line), stripped of newlines at both ends and ended by one. A text in memory
(`normalize`, `read_text`) and a file read in chunks (`read_pieces`, `scan`, `read_range`, for
`charnn prepare`) go through the same two steps: `_LineEnds` cleans the line ends across piece
borders, and `Scanner` finds where the text is cut.

>>> normalize("\\ufeffa\\r\\nb")
'a\\nb'
"""

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from charnn.errors import CorpusError
from charnn.vocab import CharacterSet

CHUNK_BYTES = 4 << 20  # bytes read at a time: memory stays a small multiple of this
START_MARKERS = ("*** START OF", "***START OF")
END_MARKERS = ("*** END OF", "***END OF")
MARKERS = START_MARKERS + END_MARKERS
LONGEST_MARKER = max(len(m) for m in MARKERS)


def normalize(text: str) -> str:
    """Drop a byte-order mark, turn CRLF into LF, cut a Project Gutenberg header and licence."""
    return cut_text(_LineEnds().clean(text, None, final=True).text)


def decode_bytes(data: bytes, encoding: str = "utf-8", source: str = "corpus") -> str:
    try:
        return data.decode(encoding)
    except LookupError:
        raise unknown_encoding(encoding) from None
    except UnicodeDecodeError as error:
        raise invalid_bytes(source, error.start, encoding, error.reason) from None


def unknown_encoding(encoding: str) -> CorpusError:
    return CorpusError(f"unknown encoding {encoding!r}; pass a Python codec name as `encoding`")


def invalid_bytes(source: str, offset: int, encoding: str, reason: str) -> CorpusError:
    return CorpusError(
        f"{source}: byte {offset} is not valid {encoding} ({reason}); pass the right `encoding` (for example latin-1)"
    )


def check_encoding(encoding: str) -> None:
    """Refuse an unknown encoding before anything is read."""
    _decoder(encoding)


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """A whole file's normalised text, decoded in one go: as `bytes.decode` reads it (which, unlike
    the incremental decoder, takes UTF-16 without a byte-order mark as little-endian)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CorpusError(f"cannot read {path}: {error.strerror}") from None
    return normalize(decode_bytes(data, encoding, str(path)))


def cut_text(text: str) -> str:
    """A text whose line ends are clean, cut where the markers say."""
    scanner = Scanner()
    scanner.feed(Piece(text))
    cut = scanner.finish()
    if not cut.markers:
        return text
    start, stop = cut.kept(strip=True)
    return text[start:stop] + "\n"


@dataclass(frozen=True)
class Piece:
    """A piece of a file's text, its line ends clean; `utf8` is its UTF-8 form when at hand for free."""

    text: str
    utf8: bytes | None = None

    def encoded(self) -> bytes:
        return self.text.encode("utf-8", "surrogatepass") if self.utf8 is None else self.utf8


def read_pieces(path: Path, encoding: str = "utf-8", chunk_bytes: int = CHUNK_BYTES) -> Iterator[Piece]:
    """A file's text, decoded and its line ends cleaned, in pieces of about `chunk_bytes`."""
    decoder = _decoder(encoding)
    utf8 = codecs.lookup(encoding).name == "utf-8"  # then the bytes read are the text's UTF-8
    line_ends = _LineEnds()
    offset = 0  # bytes read so far
    try:
        file = open(path, "rb")
    except OSError as error:
        raise CorpusError(f"cannot read {path}: {error.strerror}") from None
    with file:
        while True:
            try:
                data = file.read(chunk_bytes)
            except OSError as error:
                raise CorpusError(f"cannot read {path}: {error.strerror}") from None
            final = not data
            buffered = decoder.getstate()[0]
            try:
                text = decoder.decode(data, final)
            except UnicodeDecodeError as error:
                raise invalid_bytes(str(path), offset - len(buffered) + error.start, encoding, error.reason) from None
            offset += len(data)
            source = None
            if utf8:  # the bytes just decoded are the text's UTF-8: kept for whoever needs it
                consumed = buffered + data if buffered else data
                left = len(decoder.getstate()[0])
                source = consumed[: len(consumed) - left] if left else consumed
            piece = line_ends.clean(text, source, final)
            if piece.text:
                yield piece
            if final:
                return


def _decoder(encoding: str):
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise unknown_encoding(encoding) from None
    if not codec._is_text_encoding:  # base64, rot13...: bytes.decode refuses them too
        raise unknown_encoding(encoding)
    return codec.incrementaldecoder()


class _LineEnds:
    """Drops a byte-order mark at the start and turns CRLF into LF, across piece borders."""

    def __init__(self):
        self.started = False
        self.held_cr = False  # a CR at the end of the last piece, maybe the first half of a CRLF

    def clean(self, text: str, utf8: bytes | None, final: bool) -> Piece:
        if not self.started and text:
            self.started = True
            if text.startswith("\ufeff"):
                text, utf8 = text[1:], None if utf8 is None else utf8[3:]
        if self.held_cr:
            text, utf8 = "\r" + text, None if utf8 is None else b"\r" + utf8
        self.held_cr = not final and text.endswith("\r")
        if self.held_cr:
            text, utf8 = text[:-1], None if utf8 is None else utf8[:-1]
        if "\r" in text:
            text, utf8 = text.replace("\r\n", "\n"), None if utf8 is None else utf8.replace(b"\r\n", b"\n")
        return Piece(text, utf8)


@dataclass
class Cut:
    """Where one text is cut, in positions of its clean text: the part [start, stop) is kept.

    `lead` and `trail` count the newlines at the part's two ends (stripped when markers cut the
    text, and for every file of a folder); `characters` are those of the part, when learned.
    """

    start: int
    stop: int
    markers: bool
    lead: int = 0
    trail: int = 0
    characters: CharacterSet | None = None

    def kept(self, strip: bool) -> tuple[int, int]:
        """The kept range; with `strip`, without its newlines at either end."""
        if not strip:
            return self.start, self.stop
        if self.lead >= self.stop - self.start:
            return self.start, self.start
        return self.start + self.lead, self.stop - self.trail


class _Part:
    """The kept part as it is fed: where it starts, its end newlines, and its characters."""

    def __init__(self, start: int, learn: bool):
        self.start = start
        self.lead, self.blank, self.trail = 0, True, 0
        self.characters = CharacterSet() if learn else None

    def feed(self, text: str, utf8: bytes | None) -> None:
        if not text:
            return
        if self.blank:
            run = len(text) - len(text.lstrip("\n"))
            self.lead += run
            self.blank = run == len(text)
        run = len(text) - len(text.rstrip("\n"))
        self.trail = self.trail + run if run == len(text) else run
        if self.characters is not None:
            self.characters.add(text, utf8)

    def cut(self, stop: int) -> Cut:
        characters = None if self.characters is None else self.characters.copy()
        return Cut(self.start, stop, True, self.lead, self.trail, characters)


class Scanner:
    """Finds where a clean text is cut, fed in pieces; with `learn`, the kept part's characters too.

    A marker line is found across piece borders by holding back a line's beginning while it
    could still grow into a marker. Every position counts characters of the clean text.
    """

    def __init__(self, learn: bool = False):
        self.learn = learn
        self.position = 0  # characters fed and looked at; the held-back ones start here
        self.held = ""  # the beginning of the last line, while it may still become a marker
        self.at_line_start = True  # `position` begins a line
        self.start_found = False
        self.in_start_line = False  # the START line is not kept; the text after it is
        self.stop: int | None = None  # where the END line after START begins: the rest is not kept
        self.first_end: Cut | None = None  # the cut if no START line comes
        self.part = _Part(0, learn)

    def feed(self, piece: Piece) -> None:
        window = self.held + piece.text
        utf8 = None if self.held else piece.utf8
        line_start = window.rfind("\n") + 1
        at_a_line = (line_start or self.at_line_start) and len(window) - line_start < LONGEST_MARKER
        fragment = window[line_start:] if at_a_line else ""  # longer than any marker: nothing to hold
        hold = len(fragment) if any(m.startswith(fragment) and m != fragment for m in MARKERS) else 0
        processed = len(window) - hold
        cursor = 0
        for at in _markers(window, self.at_line_start):
            if at >= processed:
                break
            self._take(window, cursor, at, utf8)
            cursor = at
            self._marker(window, at)
        self._take(window, cursor, processed, utf8)
        if hold:
            self.at_line_start = True
        elif processed:
            self.at_line_start = window[processed - 1] == "\n"
        self.held = window[processed:]
        self.position += processed

    def finish(self) -> Cut:
        if self.held:
            self._take(self.held, 0, len(self.held), None)
            self.position += len(self.held)
            self.held = ""
        if self.start_found:
            if self.in_start_line:  # the START line runs to the end: nothing is kept
                return Cut(self.position, self.position, True, characters=CharacterSet() if self.learn else None)
            return self.part.cut(self.position if self.stop is None else self.stop)
        if self.first_end is not None:
            return self.first_end
        cut = self.part.cut(self.position)
        cut.markers = False
        return cut

    def _marker(self, window: str, at: int) -> None:
        is_start = window.startswith(START_MARKERS, at)
        if is_start and not self.start_found:
            self.start_found, self.in_start_line, self.first_end = True, True, None
        elif not is_start and self.start_found and self.stop is None and not self.in_start_line:
            self.stop = self.position + at
        elif not is_start and not self.start_found and self.first_end is None:
            self.first_end = self.part.cut(self.position + at)

    def _take(self, window: str, begin: int, end: int, utf8: bytes | None) -> None:
        """Feed window[begin:end] to the kept part, as far as it is kept."""
        if begin >= end or self.stop is not None:
            return
        if self.in_start_line:
            newline = window.find("\n", begin, end)
            if newline < 0:
                return
            self.in_start_line = False
            self.part = _Part(self.position + newline, self.learn)  # the kept text begins at the START line's end
            begin = newline
        whole = (begin, end) == (0, len(window))
        self.part.feed(window if whole else window[begin:end], utf8 if whole else None)


def _markers(window: str, at_line_start: bool) -> list[int]:
    """Where marker lines start in `window`; str.find is several times faster than a regex here."""
    found = [0] if at_line_start and window.startswith(MARKERS) else []
    at = window.find("\n***")
    while at >= 0:
        if window.startswith(MARKERS, at + 1):
            found.append(at + 1)
        at = window.find("\n***", at + 1)
    return found


def scan(path: Path, encoding: str, chunk_bytes: int = CHUNK_BYTES) -> Cut:
    """Pass one over a file: where its text is cut, and the kept part's characters."""
    scanner = Scanner(learn=True)
    for piece in read_pieces(path, encoding, chunk_bytes):
        scanner.feed(piece)
    return scanner.finish()


def read_range(path: Path, encoding: str, start: int, stop: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Piece]:
    """The characters [start, stop) of a file's clean text, in pieces."""
    position = 0
    for piece in read_pieces(path, encoding, chunk_bytes):
        end = position + len(piece.text)
        if end > start:
            if position >= start and end <= stop:
                yield piece
            else:
                yield Piece(piece.text[max(start - position, 0) : stop - position])
        position = end
        if position >= stop:
            return
