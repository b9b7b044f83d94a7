"""The exported web folder in a real headless browser (Debian's Chromium, driven by Playwright).

The folder is served by a plain static file server on loopback (Python's http.server: no
charnn behind it), and every request the page makes is checked to stay in that folder. The
page's greedy text equals `charnn generate --temperature 0 --precision fp32`.
"""

import functools
import http.server
import json
import threading

import pytest

from browser import CHROMIUM, FLAGS, playwright_api
from charnn.config import ModelConfig, SampleConfig, TrainConfig
from charnn.data.corpus import load_corpus
from charnn.generation import generate_text
from charnn.interop.web import ORT_WEB_FILES, export_web
from charnn.run_folder import load_checkpoint
from charnn.training import train
from charnn.vocab import Vocabulary
from conftest import TINY_TEXT, run_cli

DEADLINE = 120  # seconds; only a safety net: every wait is for a condition

sync_api = playwright_api()


@pytest.fixture(scope="module")
def site(tiny_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("site") / "web"
    done = run_cli("export", str(tiny_run), "--format", "web", "--out", str(folder))
    assert done.returncode == 0, done.stderr
    return folder


@pytest.fixture(scope="module")
def static_server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".wasm": "application/wasm"}  # fmt: skip

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def page(static_server, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            page = context.new_page()
            page.set_default_timeout(DEADLINE * 1000)
            requests = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(static_server)
            page.wait_for_function("document.querySelector('#status').textContent === 'ready'")
            page.requests = requests
            yield page
        finally:
            context.close()


def generate_in_page(page, prompt: str, temperature: float, length: int) -> str:
    page.fill("#prompt", prompt)
    page.fill("#temperature", str(temperature))
    page.fill("#length", str(length))
    page.click("#generate")
    page.wait_for_function("['done', 'stopped'].includes(document.querySelector('#status').textContent)")
    return page.inner_text("#generated")


def test_the_folder_holds_everything(site, tiny_run):
    ckpt = load_checkpoint(tiny_run)
    names = {p.name for p in site.iterdir() if p.is_file()}  # (a test below adds a folder)
    assert {"index.html", "model.onnx", "model.json", *ORT_WEB_FILES} == names
    info = json.loads((site / "model.json").read_text(encoding="utf-8"))
    assert info["vocabulary"] == list(ckpt.vocab.characters) and info["model"] == ckpt.config.to_dict()


def test_greedy_text_equals_charnn_generate(page, static_server, tiny_run):
    ckpt = load_checkpoint(tiny_run)
    expected = generate_text(
        ckpt.model, ckpt.vocab, "Pip", length=300, sampling=SampleConfig(temperature=0), precision="fp32"
    )[0]
    assert generate_in_page(page, "Pip", 0, 300) == expected
    rate = float(page.get_attribute("#speed", "data-chars-per-second"))
    print(f"\nbrowser page: {rate:.0f} characters/s ({page.inner_text('#speed')})")
    assert rate > 0
    # Everything came from the folder itself: no other host, and no server-side code.
    assert page.requests and all(url.startswith(static_server) for url in page.requests)

    # A non-ASCII prompt goes in character by character, as the vocabulary holds them.
    expected = generate_text(
        ckpt.model, ckpt.vocab, "“你好", length=50, sampling=SampleConfig(temperature=0), precision="fp32"
    )[0]
    assert generate_in_page(page, "“你好", 0, 50) == expected


def test_sampling_stop_and_mistakes(page, tiny_run):
    ckpt = load_checkpoint(tiny_run)
    text = generate_in_page(page, "Pip", 1.0, 80)
    assert len(text) == 80 and not ckpt.vocab.unknown(text)

    page.fill("#length", "100000")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#generated').textContent.length >= 20")
    page.click("#stop")
    page.wait_for_function("document.querySelector('#status').textContent === 'stopped'")
    assert 20 <= len(page.inner_text("#generated")) < 100000

    page.fill("#prompt", "Quxz")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#error').textContent !== ''")
    assert "'Q'" in page.inner_text("#error").replace('"', "'")


def test_an_lstm_of_two_layers_in_the_page(page, static_server, site, tmp_path):
    """An LSTM's graph takes two states (state_h, state_c): the page reads their names from model.json."""
    corpus_path = tmp_path / "corpus.txt"
    corpus_path.write_text(TINY_TEXT * 40, encoding="utf-8")
    corpus = load_corpus(str(corpus_path))
    vocab = Vocabulary.from_text(corpus.text)
    config = ModelConfig(vocab_size=len(vocab), embedding_dim=8, hidden_size=16, cell="lstm", num_layers=2)
    options = TrainConfig(seq_len=20, batch_size=8, max_steps=150, lr=2e-2, seed=1, precision="fp32")
    result = train(corpus, config, options, tmp_path / "run")
    ckpt = load_checkpoint(result.last_checkpoint)
    # Served from the same origin as the first model, in a folder of its own.
    export_web(ckpt.model, ckpt.vocab, site / "lstm")
    page.goto(static_server + "lstm/")
    page.wait_for_function("document.querySelector('#status').textContent === 'ready'")
    assert "LSTM 2×16" in page.inner_text("#model-info")
    expected = generate_text(
        ckpt.model, ckpt.vocab, "Pip", length=200, sampling=SampleConfig(temperature=0), precision="fp32"
    )[0]
    assert generate_in_page(page, "Pip", 0, 200) == expected
