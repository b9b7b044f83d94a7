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

import contextlib
import hashlib
import json
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charnn import atomic, locks
from charnn.data.corpus import source_files, source_of, train_length
from charnn.data.reading import CHUNK_BYTES, Cut, Piece, check_encoding, read_range, scan
from charnn.errors import ConfigError, CorpusError, DataDirError, UnknownCharactersError
from charnn.vocab import CharacterSet, Vocabulary

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAIN = "train.bin"
VAL = "val.bin"
DTYPES = {"uint8": "<u1", "uint16": "<u2", "uint32": "<u4"}


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
    check_encoding(encoding)
    _keep_buffers_in_the_heap(chunk_bytes)

    plan = _Plan([scan(path, encoding, chunk_bytes) for path in files], folder)  # pass 1
    if plan.characters == 0:
        raise CorpusError(f"corpus {corpus!r} is empty; give a text file with some content")
    dtype = "uint8" if len(plan.vocab) <= 1 << 8 else "uint16" if len(plan.vocab) <= 1 << 16 else "uint32"
    train_tokens = train_length(plan.characters, val_fraction)
    output = _open_output(data_dir, train_tokens, DTYPES[dtype], overwrite, lock)
    try:  # pass 2
        for piece in plan.pieces(files, encoding, chunk_bytes):
            try:
                tokens = plan.vocab.encode(piece.text, DTYPES[dtype])
            except UnknownCharactersError:
                raise CorpusError(f"corpus {corpus!r} changed while it was being prepared; prepare it again") from None
            output.write(piece, tokens)
        output.close()
        if output.written != plan.characters:
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
            "characters": plan.characters,
        },
        "files": stats,
        "vocabulary": plan.vocab.to_json(),
        "dtype": dtype,
        "byte_order": "little",
        "val_fraction": val_fraction,
        "train_tokens": train_tokens,
        "val_tokens": plan.characters - train_tokens,
        "bytes_read": sum(s["size"] for s in stats),
    }
    try:
        atomic.write_bytes(data_dir / MANIFEST, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
    except OSError as error:
        raise DataDirError(f"cannot write {data_dir / MANIFEST}: {error.strerror or error}") from None
    return PrepareResult(data_dir, manifest, reused=False)


def _keep_buffers_in_the_heap(chunk_bytes: int) -> None:
    """Each chunk allocates and frees buffers of a few times its size. glibc maps a block larger
    than its threshold afresh (faulting its pages in one by one) and unmaps it when freed, but
    raises that threshold to the largest mapped block freed so far: freeing one such block first
    keeps the chunks' buffers in the heap, reused, and spares the page faults."""
    bytes(4 * chunk_bytes)  # calloc'ed, so mapped but never touched; freed at once


def _open_output(data_dir: Path, train_tokens: int, dtype: str, overwrite: bool, lock: _DataDirLock) -> "_Output":
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock.take()
        if overwrite:
            for child in data_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        (data_dir / MANIFEST).unlink(missing_ok=True)  # a crash from here on leaves no valid manifest
        atomic.tidy(data_dir)  # what a preparation that was killed left
        return _Output(data_dir, train_tokens, dtype)
    except OSError as error:
        raise DataDirError(f"cannot write {data_dir}: {error.strerror or error}") from None


class _Plan:
    """What pass one learned: the text as ranges of the files' clean texts and literal newlines
    between them, its length and its vocabulary."""

    def __init__(self, cuts: list[Cut], folder: bool):
        self.layout: list[tuple[int, int, int] | str] = []  # (file index, start, stop) or newlines
        for index, cut in enumerate(cuts):
            if folder and index:
                self.layout.append("\n\n")
            start, stop = cut.kept(strip=folder or cut.markers)  # as normalize and the folder join strip
            if stop > start or not (folder or cut.markers):
                self.layout.append((index, start, stop))
        if folder or cuts[0].markers:
            self.layout.append("\n")
        self.characters = sum(len(item) if isinstance(item, str) else item[2] - item[1] for item in self.layout)
        characters = CharacterSet("".join(item for item in self.layout if isinstance(item, str)))
        for cut in cuts:
            characters.update(cut.characters)
        self.vocab = characters.vocabulary()

    def pieces(self, files: list[Path], encoding: str, chunk_bytes: int):
        """Pass two: the text in pieces."""
        for item in self.layout:
            if isinstance(item, str):
                yield Piece(item)
            else:
                index, start, stop = item
                yield from read_range(files[index], encoding, start, stop, chunk_bytes)


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

    def write(self, piece: Piece, tokens: np.ndarray) -> None:
        data = piece.encoded()
        tokens = np.ascontiguousarray(tokens)
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
