"""Prepare once, train many times: a corpus encoded into arrays that training memory-maps.

    charnn prepare enwik8.txt --out data/enwik8     # streaming, bounded memory, no PyTorch
    charnn train data/enwik8 --out runs/enwik8      # batches read from the memory map

The text is exactly what `load_corpus` gives (a byte-order mark dropped, CRLF turned into LF,
a Project Gutenberg header and licence cut at their markers, a folder's files joined by a
blank line), read in chunks so memory stays bounded whatever the corpus size. DATA_DIR holds:

    train.bin       the training text: one little-endian unsigned integer per character, the
                    smallest type that fits the vocabulary (uint8 up to 256 characters)
    val.bin         the held-out text (the last --val-fraction), the same way
    manifest.json   the vocabulary, dtype, sizes, the source files and the text's sha256

The corpus is read twice: a first pass finds the markers, the vocabulary and the length; a
second encodes. Preparing an unchanged corpus again (the same files, sizes and modification
times, the same options) reuses DATA_DIR at once.

>>> data = open_prepared("data/enwik8")  # doctest: +SKIP
>>> data.vocab.decode(data.val[:20])  # doctest: +SKIP
"""

import codecs
import contextlib
import hashlib
import json
import re
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from charnn import atomic, locks
from charnn.data.corpus import invalid_bytes, source_files, source_of, unknown_encoding
from charnn.errors import ConfigError, CorpusError, DataDirError
from charnn.vocab import Vocabulary

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAIN = "train.bin"
VAL = "val.bin"
CHUNK_BYTES = 4 << 20  # bytes read at a time: memory stays a small multiple of this
DTYPES = {"uint8": "<u1", "uint16": "<u2", "uint32": "<u4"}

# A Gutenberg marker line starts with one of these; `corpus.normalize` cuts at the first START
# line and the first END line after it.
_MARKER_PREFIXES = ("*** START OF", "***START OF", "*** END OF", "***END OF")
_MARKER_AT_START = {str: re.compile(r"\*\*\* ?(START|END) OF"), bytes: re.compile(rb"\*\*\* ?(START|END) OF")}

Piece = str | bytes  # normalised text; bytes when a chunk is pure ASCII (then one byte = one character)


@dataclass(frozen=True)
class PreparedData:
    """A prepared DATA_DIR opened as memory maps: nothing is read until a batch needs it."""

    path: Path
    manifest: dict[str, Any]
    vocab: Vocabulary
    train: np.ndarray  # (train_tokens,) memory-mapped
    val: np.ndarray  # (val_tokens,) memory-mapped

    @property
    def name(self) -> str:
        return self.manifest["corpus"]["name"]

    @property
    def sha256(self) -> str:
        return self.manifest["corpus"]["sha256"]

    @property
    def characters(self) -> int:
        return len(self.train) + len(self.val)

    @property
    def val_fraction(self) -> float:
        return self.manifest["val_fraction"]

    def decode(self, tokens: np.ndarray) -> str:
        return decode(self.vocab, tokens)


def decode(vocab: Vocabulary, tokens: np.ndarray) -> str:
    """Indices -> text, vectorised (Vocabulary.decode goes character by character)."""
    points = np.array([ord(c) for c in vocab.characters], dtype=np.uint32)
    return points[np.asarray(tokens)].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")


@dataclass
class PrepareResult:
    data_dir: Path
    manifest: dict[str, Any]
    reused: bool  # the corpus had not changed: nothing was read or written
    seconds: float = 0.0


def is_prepared(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def prepare(
    corpus: str,
    data_dir: str | Path,
    *,
    encoding: str = "utf-8",
    val_fraction: float = 0.1,
    overwrite: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> PrepareResult:
    """Encode the corpus `corpus` (path, folder, URL or registered name) into `data_dir`.

    A `data_dir` that holds anything but an earlier preparation of the same corpus is refused
    unless `overwrite`; an up-to-date one is reused (unless `overwrite`).
    """
    started = time.perf_counter()
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"`val_fraction` must be in [0, 1), got {val_fraction}")
    data_dir = Path(data_dir)
    files, folder = source_files(corpus)
    # One writer at a time: an existing folder is locked before it is read, a new one once it is made.
    with _DataDirLock(data_dir) as lock:
        if data_dir.is_dir():
            lock.take()
        result = _prepare(corpus, files, folder, data_dir, encoding, val_fraction, overwrite, chunk_bytes, lock)
    result.seconds = time.perf_counter() - started
    return result


class _DataDirLock(contextlib.ExitStack):
    def __init__(self, data_dir: Path):
        super().__init__()
        self.data_dir, self.held = data_dir, False

    def take(self) -> None:
        if not self.held:
            self.enter_context(locks.hold(self.data_dir, f"data folder {self.data_dir}"))
            self.held = True


def _prepare(corpus, files, folder, data_dir, encoding, val_fraction, overwrite, chunk_bytes, lock) -> PrepareResult:
    source = source_of(corpus)
    stats = [_stat(p) for p in files]
    options = {"name": corpus, "source": source, "encoding": encoding, "val_fraction": val_fraction}
    previous = _check_data_dir(data_dir, source, overwrite)
    if previous is not None and not overwrite and _up_to_date(data_dir, previous, options, stats):
        return PrepareResult(data_dir, previous, reused=True)
    _decoder(encoding)  # an unknown encoding is refused before anything is read

    scans = [_scan(path, encoding, chunk_bytes) for path in files]
    layout = _layout(scans, folder)
    characters = sum(len(item) if isinstance(item, str) else item[2] - item[1] for item in layout)
    if characters == 0:
        raise CorpusError(f"corpus {corpus!r} is empty; give a text file with some content")
    kept = set().union(*(s.characters for s in scans), *(item for item in layout if isinstance(item, str)))
    vocab = Vocabulary(tuple(sorted(kept)))
    dtype = "uint8" if len(vocab) <= 1 << 8 else "uint16" if len(vocab) <= 1 << 16 else "uint32"
    train_tokens = characters - int(characters * val_fraction)  # the same cut as data.split

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock.take()
        if overwrite:
            for child in data_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        (data_dir / MANIFEST).unlink(missing_ok=True)  # a crash from here on leaves no valid manifest
        atomic.tidy(data_dir)  # what a preparation that was killed left
        output = _Output(data_dir, train_tokens, DTYPES[dtype])
    except OSError as error:
        raise DataDirError(f"cannot write {data_dir}: {error.strerror or error}") from None
    encoder = _Encoder(vocab, DTYPES[dtype])
    try:
        for item in layout:
            if isinstance(item, str):
                output.write(item, encoder(item))
                continue
            index, lo, hi = item
            position = 0
            for piece in _pieces(files[index], encoding, chunk_bytes):
                end = position + len(piece)
                if end > lo:
                    part = piece[max(lo - position, 0) : hi - position]
                    output.write(part, encoder(part))
                position = end
                if position >= hi:
                    break
        output.close()
        if output.written != characters:
            raise CorpusError(f"corpus {corpus!r} changed while it was being prepared; prepare it again")
    except OSError as error:
        output.discard()
        raise DataDirError(f"cannot write {data_dir}: {error.strerror or error}") from None
    except BaseException:
        output.discard()
        raise
    manifest = {
        "format_version": FORMAT_VERSION,
        "corpus": {
            **{k: options[k] for k in ("name", "source", "encoding")},
            "sha256": output.sha256.hexdigest(),
            "characters": characters,
        },
        "files": stats,
        "vocabulary": vocab.to_json(),
        "dtype": dtype,
        "byte_order": "little",
        "val_fraction": val_fraction,
        "train_tokens": train_tokens,
        "val_tokens": characters - train_tokens,
        "bytes_read": sum(s["size"] for s in stats),
    }
    try:
        atomic.write_bytes(data_dir / MANIFEST, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
    except OSError as error:
        raise DataDirError(f"cannot write {data_dir / MANIFEST}: {error.strerror or error}") from None
    return PrepareResult(data_dir, manifest, reused=False)


def open_prepared(data_dir: str | Path) -> PreparedData:
    """Open a prepared DATA_DIR: its vocabulary, and its two parts as read-only memory maps."""
    data_dir = Path(data_dir)
    manifest = _read_manifest(data_dir)
    if manifest is None:
        raise CorpusError(f"{data_dir} holds no prepared data ({MANIFEST}); run charnn prepare CORPUS --out {data_dir}")
    try:
        version = manifest["format_version"]
        vocab = Vocabulary.from_json(manifest["vocabulary"])
        dtype = DTYPES[manifest["dtype"]]
        sizes = int(manifest["train_tokens"]), int(manifest["val_tokens"])
        if not all(isinstance(manifest["corpus"][k], str) for k in ("name", "source", "encoding", "sha256")):
            raise TypeError("corpus fields must be strings")
        if not isinstance(manifest["val_fraction"], int | float):
            raise TypeError("val_fraction must be a number")
    except (KeyError, TypeError, ValueError) as error:
        raise CorpusError(
            f"{data_dir / MANIFEST} is incomplete or invalid ({error}); run charnn prepare again"
        ) from None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CorpusError(f"{data_dir} was prepared by a newer charnn (format {version}); upgrade charnn")
    if len(vocab) > np.iinfo(dtype).max + 1:
        raise CorpusError(f"{data_dir / MANIFEST}: {len(vocab)} characters do not fit {manifest['dtype']}")
    parts = []
    for name, size in zip((TRAIN, VAL), sizes, strict=True):
        path = data_dir / name
        expected = size * np.dtype(dtype).itemsize
        actual = path.stat().st_size if path.is_file() else None
        if actual != expected:
            raise CorpusError(f"{path} is missing or has the wrong size; run charnn prepare again")
        # Copy-on-write: the array is writable for torch.from_numpy, yet nothing goes back to the file.
        parts.append(np.memmap(path, dtype=dtype, mode="c") if size else np.zeros(0, dtype=dtype))
    return PreparedData(data_dir, manifest, vocab, parts[0], parts[1])


# --- the DATA_DIR ------------------------------------------------------------------------


def _stat(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_manifest(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorpusError(f"{path} is corrupt ({error}); run charnn prepare again") from None
    if not isinstance(manifest, dict):
        raise CorpusError(f"{path} is corrupt (not a JSON object); run charnn prepare again")
    return manifest


def _check_data_dir(data_dir: Path, source: str, overwrite: bool) -> dict[str, Any] | None:
    """Refuse a DATA_DIR that holds something else; return its manifest when it holds ours."""
    if data_dir.exists() and not data_dir.is_dir():
        raise DataDirError(f"{data_dir} is a file, not a folder")
    if not data_dir.is_dir() or overwrite:
        return None
    ours = {MANIFEST, TRAIN, VAL}
    others = sorted(p.name for p in data_dir.iterdir() if p.name not in ours and not atomic.is_temporary(p))
    try:
        manifest = _read_manifest(data_dir)
    except CorpusError:
        manifest = None  # only our files, but no valid manifest: an interrupted preparation, redone
    if others:
        shown = ", ".join(others[:3])
        raise DataDirError(
            f"{data_dir} already holds other files ({shown}); choose an empty or new folder, "
            "or pass `overwrite` to replace what it holds"
        )
    if manifest is not None and manifest.get("corpus", {}).get("source") != source:
        raise DataDirError(
            f"{data_dir} holds data prepared from another corpus ({manifest.get('corpus', {}).get('source')}); "
            "choose another folder, or pass `overwrite` to replace it"
        )
    return manifest


def _up_to_date(data_dir: Path, manifest: dict, options: dict, stats: list[dict]) -> bool:
    corpus = manifest.get("corpus", {})
    same = (
        manifest.get("format_version") == FORMAT_VERSION
        and corpus.get("encoding") == options["encoding"]
        and manifest.get("val_fraction") == options["val_fraction"]
        and [{k: f.get(k) for k in ("path", "size", "mtime_ns")} for f in manifest.get("files", [])] == stats
    )
    if not same:
        return False
    try:
        open_prepared(data_dir)
    except CorpusError:
        return False
    return True


class _Output:
    """Writes the encoded text into train.bin then val.bin, and hashes the text itself.

    Hashing and writing happen in a second thread (both release the GIL) while the next chunk
    is encoded; at most two chunks wait, so memory stays bounded.
    """

    def __init__(self, data_dir: Path, train_tokens: int, dtype: str):
        self.final = [data_dir / TRAIN, data_dir / VAL]
        self.tmp = [atomic.temporary(p) for p in self.final]
        self.files = [open(p, "wb") for p in self.tmp]
        self.room = train_tokens  # characters still to go into train.bin
        self.written = 0
        self.dtype = dtype
        self.sha256 = hashlib.sha256()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charnn-prepare")
        self._pending: deque[Future] = deque()

    def write(self, text: Piece, tokens: np.ndarray) -> None:
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        tokens = np.ascontiguousarray(tokens.astype(self.dtype, copy=False))
        while len(self._pending) >= 2:
            self._pending.popleft().result()  # raises what the writer raised
        self._pending.append(self._worker.submit(self._write, data, tokens))

    def _write(self, data: bytes, tokens: np.ndarray) -> None:
        self.sha256.update(data)
        self.written += len(tokens)
        if self.room:
            head, tokens = tokens[: self.room], tokens[self.room :]
            self.files[0].write(memoryview(head))
            self.room -= len(head)
        if len(tokens):
            self.files[1].write(memoryview(tokens))

    def close(self) -> None:
        while self._pending:
            self._pending.popleft().result()
        self._worker.shutdown()
        for f, tmp, final in zip(self.files, self.tmp, self.final, strict=True):
            atomic.commit(f, tmp, final)

    def discard(self) -> None:
        self._worker.shutdown(cancel_futures=True)
        for f, tmp in zip(self.files, self.tmp, strict=True):
            f.close()
            tmp.unlink(missing_ok=True)


# --- reading: decoding and normalising in chunks --------------------------------------------


def _decoder(encoding: str):
    try:
        return codecs.getincrementaldecoder(encoding)()
    except LookupError:
        raise unknown_encoding(encoding) from None


def _ascii_transparent(encoding: str) -> bool:
    """True when ASCII bytes decode to themselves, one character each (UTF-8, Latin-1, cp1252...)."""
    ascii_bytes = bytes(range(128))
    try:
        return ascii_bytes.decode(encoding) == ascii_bytes.decode("ascii")
    except (UnicodeDecodeError, LookupError):
        return False


def _pieces(path: Path, encoding: str, chunk_bytes: int) -> Iterator[Piece]:
    """One file's normalised text (as `corpus.read_text_file` gives it, before the Gutenberg cuts)
    in pieces: bytes for a pure-ASCII chunk (no decoding needed), str otherwise."""
    for piece, _ in _pieces_and_bytes(path, encoding, chunk_bytes):
        yield piece


def _pieces_and_bytes(path: Path, encoding: str, chunk_bytes: int) -> Iterator[tuple[Piece, bytes | None]]:
    """`_pieces`, each with the UTF-8 bytes it was decoded from when the corpus is UTF-8 (None
    otherwise): the same characters, but for CRs of CRLFs, a byte-order mark and a CR moved
    across the chunk border."""
    decoder = _decoder(encoding)
    transparent = _ascii_transparent(encoding)
    utf8 = codecs.lookup(encoding).name == "utf-8"
    offset = 0  # bytes read so far
    first, pending_cr = True, False
    try:
        f = open(path, "rb")
    except OSError as error:
        raise CorpusError(f"cannot read {path}: {error.strerror}") from None
    with f:
        while True:
            try:
                data = f.read(chunk_bytes)
            except OSError as error:
                raise CorpusError(f"cannot read {path}: {error.strerror}") from None
            final = not data
            buffered = decoder.getstate()[0]
            source = None
            if transparent and data.isascii() and not final and decoder.getstate() == (b"", 0):
                piece: Piece = data
            else:
                try:
                    piece = decoder.decode(data, final)
                except UnicodeDecodeError as error:
                    raise invalid_bytes(
                        str(path), offset - len(buffered) + error.start, encoding, error.reason
                    ) from None
                if utf8:
                    consumed = buffered + data if buffered else data
                    left = len(decoder.getstate()[0])
                    source = consumed[: len(consumed) - left] if left else consumed
            offset += len(data)
            if first and piece:
                first = False
                if isinstance(piece, str):
                    piece = piece.removeprefix("\ufeff")
            cr = b"\r" if isinstance(piece, bytes) else "\r"
            if pending_cr:
                piece = cr + piece
            # A CR at the end of a chunk may be the first half of a CRLF: keep it for the next.
            pending_cr = not final and piece.endswith(cr)
            if pending_cr:
                piece = piece[:-1]
            if isinstance(piece, bytes) and b"\r" in piece:
                piece = piece.replace(b"\r\n", b"\n")
            elif isinstance(piece, str) and "\r" in piece:
                piece = piece.replace("\r\n", "\n")
            if piece:
                yield piece, source
            if final:
                return


# --- pass 1: the Gutenberg cuts, the vocabulary and the length ---------------------------


@dataclass
class _Scan:
    """What the first pass learns about one file, in positions of its normalised text.

    The kept part is [start, stop); `lead` and `trail` count the newlines at its two ends
    (stripped when markers cut the text, and for every file of a folder).
    """

    start: int = 0
    stop: int = 0
    lead: int = 0
    trail: int = 0
    markers: bool = False
    characters: set[str] = field(default_factory=set)


class _Region:
    """Characters and newline runs of the part of the text being kept, fed in pieces."""

    def __init__(self, start: int):
        self.start = start
        self.characters: set[str] = set()
        self.lead, self.lead_open, self.trail = 0, True, 0
        self._ascii_seen = b""  # deleted by bytes.translate: what is left is new
        self._wide_seen: list[bytes] = []  # the UTF-8 of each non-ASCII character seen
        self._seen_points: np.ndarray | None = None  # (0x110000,) bool, for text rich in non-ASCII

    def snapshot(self, stop: int) -> _Scan:
        return _Scan(self.start, stop, self.lead, self.trail, True, set(self.characters))

    def feed(self, text: Piece, source: bytes | None = None) -> None:
        if not text:
            return
        newline = b"\n" if isinstance(text, bytes) else "\n"
        if self.lead_open:
            run = len(text) - len(text.lstrip(newline))
            self.lead += run
            self.lead_open = run == len(text)
        run = len(text) - len(text.rstrip(newline))
        self.trail = self.trail + run if run == len(text) else run
        self._learn(text, source)

    def _learn(self, text: Piece, source: bytes | None = None) -> None:
        """Add the characters of `text`; `source`, when given, is UTF-8 holding the same ones
        (apart from CR and the byte-order mark, looked for in `text` itself)."""
        if isinstance(text, bytes) or text.isascii():
            rest = (text if isinstance(text, bytes) else text.encode("ascii")).translate(None, self._ascii_seen)
            if rest:
                self._add(set(rest.decode("ascii")))
            return
        # Seen ASCII bytes are deleted from the UTF-8 form; what remains (new ASCII characters and
        # every non-ASCII one) is usually a small share of the text.
        if source is None:
            rest = text.encode("utf-8", "surrogatepass").translate(None, self._ascii_seen)
        else:
            rest = source.translate(None, self._ascii_seen + b"\r")
            if "\r" not in self.characters and "\r" in text:
                self._add({"\r"})
        if len(self._wide_seen) <= 16:  # a few curly quotes and dashes: cheaper to delete them too
            for character in self._wide_seen:
                rest = rest.replace(character, b"")
        if not rest:
            return
        remaining = rest.decode("utf-8", "surrogatepass")
        if len(remaining) < 1 << 16:
            new = set(remaining) - self.characters
        else:
            if self._seen_points is None:
                self._seen_points = np.zeros(0x110000, dtype=bool)
                self._seen_points[[ord(c) for c in self.characters]] = True
            points = np.frombuffer(remaining.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            new = {chr(p) for p in np.unique(points[~self._seen_points[points]]).tolist()}
        if source is not None and "\ufeff" in new and "\ufeff" not in text:
            new.discard("\ufeff")  # the byte-order mark dropped from the start
        self._add(new)

    def _add(self, characters: set[str]) -> None:
        if not characters:
            return
        self.characters |= characters
        self._ascii_seen = bytes(sorted(ord(c) for c in self.characters if ord(c) < 128))
        self._wide_seen += [c.encode("utf-8", "surrogatepass") for c in characters if ord(c) >= 128]
        if self._seen_points is not None:
            self._seen_points[[ord(c) for c in characters]] = True


class _Scanner:
    """Pass 1 over one file: finds the kept part exactly as `corpus.normalize` cuts it.

    normalize() cuts after the first START marker line and before the first END marker line
    after it (or the first END line at all, when there is no START). Marker lines are found
    across chunk boundaries by holding back the last line's beginning while it could still
    become a marker.
    """

    def __init__(self):
        self.position = 0  # characters counted so far; the carry starts here
        self.carry = ""  # held back: a line's beginning that may be a marker's
        self.at_line_start = True
        self.start_found = False
        self.in_start_line = False  # inside the START marker line: not kept
        self.done = False  # the END marker after START was found: the rest is not kept
        self.first_end: _Scan | None = None  # the kept part if no START ever comes
        self.region = _Region(0)

    def feed(self, piece: Piece, source: bytes | None = None) -> None:
        if not (self.carry or self.in_start_line or self.done) and isinstance(piece, str) and source is not None:
            # The common case, a piece wholly inside the kept text: its characters can be read
            # from the UTF-8 it came from, with no encoding back.
            markers = _markers(piece, self.at_line_start)
            line_start = piece.rfind("\n") + 1
            fragment = piece[line_start:] if line_start or self.at_line_start else ""
            if not markers and not any(p.startswith(fragment) and p != fragment for p in _MARKER_PREFIXES):
                self.region.feed(piece, source)
                self.at_line_start = piece.endswith("\n")
                self.position += len(piece)
                return
        kind = type(piece)
        window = (self.carry.encode("ascii") if kind is bytes else self.carry) + piece
        markers = _markers(window, self.at_line_start)
        # Hold back the last line's beginning if it could still grow into a marker.
        newline = b"\n" if kind is bytes else "\n"
        line_start = window.rfind(newline) + 1
        fragment = window[line_start:]
        if line_start == 0 and not self.at_line_start:
            fragment = window[:0]
        if isinstance(fragment, bytes):
            fragment = fragment.decode("ascii")
        held = len(fragment) if any(p.startswith(fragment) and p != fragment for p in _MARKER_PREFIXES) else 0
        processed = len(window) - held
        cursor = 0
        for at in markers:
            if at >= processed:
                break
            self._take(window, cursor, at)
            cursor = at
            self._marker(window, at)
        self._take(window, cursor, processed)
        if held:
            self.at_line_start = True
        elif processed:
            self.at_line_start = window[processed - 1 : processed] == newline
        self.carry = fragment if held else ""
        self.position += processed

    def finish(self) -> _Scan:
        if self.carry:
            self._take(self.carry, 0, len(self.carry))
            self.position += len(self.carry)
            self.carry = ""
        if self.start_found:
            if self.in_start_line:  # the START line runs to the end: nothing is kept
                return _Scan(self.position, self.position, 0, 0, True, set())
            return self.region.snapshot(self.stop if self.done else self.position)
        if self.first_end is not None:
            return self.first_end
        scan = self.region.snapshot(self.position)
        scan.markers = False
        return scan

    def _marker(self, window: Piece, at: int) -> None:
        is_start = _MARKER_AT_START[type(window)].match(window, at)[1] in ("START", b"START")
        if is_start and not self.start_found:
            self.start_found, self.in_start_line, self.first_end = True, True, None
        elif not is_start and self.start_found and not self.done and not self.in_start_line:
            self.done, self.stop = True, self.position + at
        elif not is_start and not self.start_found and self.first_end is None:
            self.first_end = self.region.snapshot(self.position + at)

    def _take(self, window: Piece, begin: int, end: int) -> None:
        """Count window[begin:end] into the kept part, according to where the text is."""
        if begin >= end or self.done:
            return
        if self.in_start_line:
            newline = window.find(b"\n" if isinstance(window, bytes) else "\n", begin, end)
            if newline < 0:
                return
            self.in_start_line = False
            self.region = _Region(self.position + newline)  # the kept text begins at the START line's end
            begin = newline
        self.region.feed(window[begin:end] if (begin, end) != (0, len(window)) else window)


def _markers(window: Piece, at_line_start: bool) -> list[int]:
    """Where marker lines start in `window`; str.find is several times faster than a regex here."""
    pattern = _MARKER_AT_START[type(window)]
    newline_stars = b"\n***" if isinstance(window, bytes) else "\n***"
    found = [0] if at_line_start and pattern.match(window) else []
    at = window.find(newline_stars)
    while at >= 0:
        if pattern.match(window, at + 1):
            found.append(at + 1)
        at = window.find(newline_stars, at + 1)
    return found


def _scan(path: Path, encoding: str, chunk_bytes: int) -> _Scan:
    scanner = _Scanner()
    for piece, source in _pieces_and_bytes(path, encoding, chunk_bytes):
        scanner.feed(piece, source)
    return scanner.finish()


def _layout(scans: list[_Scan], folder: bool) -> list[tuple[int, int, int] | str]:
    """The output as (file index, first, end) ranges of normalised text and literal newlines."""
    layout: list[tuple[int, int, int] | str] = []
    for index, scan in enumerate(scans):
        if folder and index:
            layout.append("\n\n")
        if not folder and not scan.markers:
            layout.append((index, scan.start, scan.stop))
            continue
        if scan.lead < scan.stop - scan.start:  # strip("\n"), as normalize and the folder join do
            layout.append((index, scan.start + scan.lead, scan.stop - scan.trail))
    if folder or scans[0].markers:
        layout.append("\n")
    return layout


# --- pass 2: encoding ----------------------------------------------------------------------


class _Encoder:
    """Text -> indices with table look-ups; bytes.translate does the ASCII and Latin-1 share."""

    def __init__(self, vocab: Vocabulary, dtype: str):
        self.dtype = np.dtype(dtype)
        points = np.array([ord(c) for c in vocab.characters], dtype=np.int64)
        # Sorted by code point, so a character below 256 always has an index below 256.
        low = points < 256
        table = np.zeros(256, dtype=np.uint8)
        table[points[low]] = np.flatnonzero(low)
        self.byte_table = table.tobytes()
        self.bmp = np.zeros(1 << 16, dtype=self.dtype)
        self.bmp[points[points < 1 << 16]] = np.flatnonzero(points < 1 << 16)
        self.points, self._all = points, None

    def __call__(self, text: Piece) -> np.ndarray:
        if isinstance(text, str) and text.isascii():
            text = text.encode("ascii")
        if isinstance(text, bytes):
            return np.frombuffer(text.translate(self.byte_table), dtype=np.uint8).astype(self.dtype, copy=False)
        units = text.encode("utf-16-le", "surrogatepass")
        if len(units) != 2 * len(text):  # characters beyond the BMP: one full-range table
            if self._all is None:
                self._all = np.zeros(0x110000, dtype=self.dtype)
                self._all[self.points] = np.arange(len(self.points))
            return self._all[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)]
        points = np.frombuffer(units, dtype=np.uint16)
        wide = np.flatnonzero(points >= 256)
        if len(wide) > len(points) // 4:
            return self.bmp[points]
        # Mostly Latin-1: translate the low bytes, then patch the few wider characters.
        tokens = np.frombuffer(points.astype(np.uint8).tobytes().translate(self.byte_table), dtype=np.uint8)
        tokens = tokens.astype(self.dtype)
        tokens[wide] = self.bmp[points[wide]]
        return tokens
