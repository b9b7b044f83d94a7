"""Find, fetch and read a corpus, its text normalised as `charnn.data.reading` says.

A corpus is named by a path to a text file, a folder (every ``*.txt`` inside, sorted, joined
by a blank line), an ``http(s)://`` URL (downloaded once into the cache), or a registered name
such as ``great-expectations`` (looked for as ``NAME.txt`` in ``$CHARNN_CORPUS_DIR``, then in
the cache, then downloaded).

>>> normalize("\\ufeffa\\r\\nb")
'a\\nb'
"""

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from charnn import atomic
from charnn.data.reading import decode_bytes, normalize, read_text
from charnn.errors import CorpusError

__all__ = ["Corpus", "REGISTERED", "cache_dir", "decode_bytes", "load_corpus", "normalize", "source_files",
           "source_of", "train_length"]  # fmt: skip

REGISTERED = {
    "great-expectations": "https://www.gutenberg.org/files/1400/1400-0.txt",
    "tinyshakespeare": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
}


@dataclass(frozen=True)
class Corpus:
    name: str  # what the user typed: a registered name, a path or a URL
    text: str
    encoding: str = "utf-8"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()


def source_of(spec: str) -> str:
    """Where a corpus reference points, to find it again from anywhere: local paths made absolute."""
    local = not spec.startswith(("http://", "https://")) and Path(spec).expanduser().exists()
    return str(Path(spec).expanduser().resolve()) if local else spec


def cache_dir() -> Path:
    return Path(os.environ.get("CHARNN_CACHE") or Path.home() / ".cache" / "charnn")


def train_length(characters: int, val_fraction: float) -> int:
    """How much of a text of `characters` is for training: the last `val_fraction` is held out."""
    return characters - int(characters * val_fraction)


def load_corpus(spec: str, *, encoding: str = "utf-8") -> Corpus:
    """Resolve `spec` (path, folder, URL or registered name) and return its normalised text."""
    text = _resolve(spec, encoding)
    if not text:
        raise CorpusError(f"corpus {spec!r} is empty; give a text file with some content")
    return Corpus(name=spec, text=text, encoding=encoding)


def _resolve(spec: str, encoding: str) -> str:
    files, folder = source_files(spec)
    if folder:
        return "\n\n".join(read_text(p, encoding).strip("\n") for p in files) + "\n"
    return read_text(files[0], encoding)


def source_files(spec: str) -> tuple[list[Path], bool]:
    """The file or files behind `spec` (a URL or registered name is downloaded once); True for a folder,
    whose files' normalised texts are joined by a blank line."""
    if spec.startswith(("http://", "https://")):
        return [_download(spec)], False
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not files:
            raise CorpusError(f"folder {path} holds no *.txt files")
        return files, True
    if path.is_file():
        return [path], False
    if path.exists():  # a device, a named pipe, a socket: nothing with an end to read
        raise CorpusError(f"{spec} is not a regular file or folder; give a text file, a folder of them, or a URL")
    if spec in REGISTERED:
        return [_find_registered(spec)], False
    if os.sep in spec or spec.endswith(".txt") or path.suffix:
        raise CorpusError(f"no such file or folder: {spec}")
    known = ", ".join(sorted(REGISTERED))
    raise CorpusError(f"unknown corpus {spec!r}: give a file, a folder, a URL, or one of: {known}")


def _find_registered(name: str) -> Path:
    local = os.environ.get("CHARNN_CORPUS_DIR")
    if local and (Path(local) / f"{name}.txt").is_file():
        return Path(local) / f"{name}.txt"
    cached = cache_dir() / f"{name}.txt"
    if cached.is_file():
        return cached
    return _download(REGISTERED[name], cached)


def _download(url: str, target: Path | None = None) -> Path:
    """Fetch `url` into the cache once; a failed download leaves nothing behind."""
    if target is None:
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        target = cache_dir() / f"url-{digest}.txt"
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
        atomic.write_bytes(target, data)  # a failed write (a full disk) leaves nothing behind
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise CorpusError(f"cannot download {url}: {reason}; download it yourself and pass the file's path") from None
    return target
