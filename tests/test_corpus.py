import http.server
import threading
from pathlib import Path

import pytest

from charnn.data.corpus import REGISTERED, load_corpus, normalize
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
