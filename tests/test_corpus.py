import http.server
import re
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charnn.data.corpus import REGISTERED, load_corpus, normalize
from charnn.data.reading import Scanner, _LineEnds, cut_text, read_pieces
from charnn.errors import CorpusError


def test_file_is_read_as_utf8(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("“héllo” 你好\n", encoding="utf-8")
    assert load_corpus(str(path)).text == "“héllo” 你好\n"


def test_bom_and_crlf_are_normalised(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffone\r\ntwo\r\n".encode())
    assert load_corpus(str(path)).text == "one\ntwo\n"


def test_gutenberg_header_and_licence_are_cut_at_markers():
    text = (
        "The Project Gutenberg eBook of X\nlicence blah\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\nChapter I\nBody.\n\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK X ***\nmore licence\n"
    )
    assert normalize(text) == "Chapter I\nBody.\n"


def test_text_without_markers_is_kept_whole():
    assert normalize("no markers here\n") == "no markers here\n"


def test_folder_joins_sorted_txt_files_with_a_blank_line(tmp_path):
    (tmp_path / "b.txt").write_text("second\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first\n", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not me\n", encoding="utf-8")
    assert load_corpus(str(tmp_path)).text == "first\n\nsecond\n"


def test_other_encodings(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"byte 3 is not valid utf-8"):
        load_corpus(str(path))
    assert load_corpus(str(path), encoding="latin-1").text == "café\n"


def test_registered_name_is_found_in_corpus_dir(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare.txt").write_text("First Citizen:\n", encoding="utf-8")
    monkeypatch.setenv("CHARNN_CORPUS_DIR", str(tmp_path))
    corpus = load_corpus("tinyshakespeare")
    assert corpus.text == "First Citizen:\n"
    assert corpus.name == "tinyshakespeare"
    assert len(corpus.sha256) == 64


def test_registered_name_is_found_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARNN_CORPUS_DIR", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "great-expectations.txt").write_text("Pip\n", encoding="utf-8")
    assert load_corpus("great-expectations").text == "Pip\n"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(CorpusError) as caught:
        load_corpus("no-such-corpus")
    for name in REGISTERED:
        assert name in str(caught.value)


def test_missing_file():
    with pytest.raises(CorpusError, match="no such file"):
        load_corpus("/nonexistent/book.txt")


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(str(tmp_path / "empty.txt"))


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on loopback serving tmp_path/www, counting its requests."""
    www = tmp_path / "www"
    www.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(www), **kwargs)

        def log_message(self, *args):
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www, hits
    server.shutdown()
    server.server_close()


def test_url_is_downloaded_once_into_the_cache(http_server, tmp_path, monkeypatch):
    base, www, hits = http_server
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "cache"))
    (www / "book.txt").write_bytes("\ufeffA tale\r\n".encode())
    assert load_corpus(f"{base}/book.txt").text == "A tale\n"
    assert load_corpus(f"{base}/book.txt").text == "A tale\n"
    assert len(hits) == 1
    assert [p.name for p in Path(tmp_path / "cache").iterdir() if not p.name.startswith(".")] != []


def test_failed_download_leaves_nothing(http_server, tmp_path, monkeypatch):
    base, _, _ = http_server
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CorpusError, match="cannot download"):
        load_corpus(f"{base}/missing.txt")
    assert not any((tmp_path / "cache").iterdir())


# The rule `normalize` follows, as it was first written: kept here as the reference that the
# streaming normaliser (charnn.data.reading, fed in any chunks) must agree with.
_START = re.compile(r"^\*\*\* ?START OF.*$", re.MULTILINE)
_END = re.compile(r"^\*\*\* ?END OF.*$", re.MULTILINE)


def reference_normalize(text: str) -> str:
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    start = _START.search(text)
    if start:
        text = text[start.end() :]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    if start or end:
        text = text.strip("\n") + "\n"
    return text


ATOMS = ["a", " ", "\n", "\r", "\r\n", "*", "**", "***", " START OF", "START OF", " END OF", "END OF", "*** START OF X",
         "***START OF", "*** END OF Y", "***END OF", "\n*** START OF IT ***\n", "\n*** END OF IT ***\n", "é", "你好",
         "🙂", "\ufeff", "\n\n"]  # fmt: skip


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(st.sampled_from(ATOMS), max_size=30).map("".join), st.sampled_from([1, 2, 3, 5, 13, 1 << 20]))
def test_the_streaming_normaliser_equals_the_reference_in_any_chunks(text, chunk):
    assert normalize(text) == reference_normalize(text)
    pieces = [text[i : i + chunk] for i in range(0, len(text), chunk)]
    line_ends, scanner = _LineEnds(), Scanner()
    clean = []
    for i, piece in enumerate(pieces):
        cleaned = line_ends.clean(piece, None, final=i == len(pieces) - 1)
        clean.append(cleaned.text)
        scanner.feed(cleaned)
    if not pieces:
        clean.append(line_ends.clean("", None, final=True).text)
    cut = scanner.finish()
    whole = "".join(clean)
    start, stop = cut.kept(strip=cut.markers)
    assert whole[start:stop] + ("\n" if cut.markers else "") == reference_normalize(text)


def test_a_file_read_in_small_chunks_is_normalised_alike(tmp_path):
    text = "\ufeffhead\r\n*** START OF X ***\r\n\r\nbody “quoted” 你好 🙂\r\n\r\n*** END OF X ***\r\nlicence\r\n"
    path = tmp_path / "book.txt"
    path.write_bytes(text.encode("utf-8"))
    for chunk in (1, 2, 3, 7, 1 << 20):
        pieces = list(read_pieces(path, "utf-8", chunk))
        assert all(p.utf8 is None or p.utf8 == p.text.encode("utf-8") for p in pieces)
        assert cut_text("".join(p.text for p in pieces)) == reference_normalize(text) == "body “quoted” 你好 🙂\n"
