"""The web page in a real headless browser (Debian's Chromium, driven by Playwright).

Types a prompt, presses Generate, watches the text stream in and compares it with
`generate_text`; presses Stop mid-stream; checks that unknown characters are pointed out.
Saves a screenshot to test-artifacts/serve-page.png.
"""

from pathlib import Path

import pytest

from browser import CHROMIUM, FLAGS, playwright_api
from charnn.config import SampleConfig, ServeLimits
from charnn.constraints import ban_bias
from charnn.generation import generate_text
from charnn.run_folder import load_checkpoint
from serving import DEADLINE, gated, running_server, wait_until

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
sync_api = playwright_api()


@pytest.fixture(scope="module")
def server(tiny_run):
    with running_server(tiny_run, ServeLimits(max_new_chars=3000)) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1000, "height": 760},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    page.set_default_timeout(DEADLINE * 1000)  # waits are for conditions; the deadline is only a safety net
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelector('#model-vocabulary') !== null")
    yield page
    page.close()


def set_range(page, selector: str, value: float) -> None:
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


def test_generate_streams_the_same_text_as_generate_text(page, server, tiny_run):
    ckpt = load_checkpoint(tiny_run)
    assert page.inner_text("#model-model") == server.service.name
    assert page.inner_text("#model-validation-loss") == f"{ckpt.training['val_loss']:.4f}"
    assert "parameters" in page.inner_text("#model-size")

    page.fill("#prompt", "“Pip,” said Joe")
    set_range(page, "#temperature", 0.8)
    set_range(page, "#length", 400)
    page.fill("#seed", "11")
    # The engine holds after 100 characters until the page has shown part of the text, however
    # fast the machine: the text is watched growing, not only seen whole.
    with gated(server.service.engine, 99) as gate:
        page.click("#generate")
        page.wait_for_function("document.querySelector('#generated').textContent.length > 20")
        partial = page.inner_text("#generated")
        assert page.is_enabled("#stop") and page.is_disabled("#generate")
        gate.open()
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')")
    expected = generate_text(
        ckpt.model, ckpt.vocab, "“Pip,” said Joe", length=400, sampling=SampleConfig(0.8), seed=11
    )[0]
    text = page.eval_on_selector("#generated", "el => el.textContent")
    assert text == expected
    assert 20 < len(partial) < 400 and expected.startswith(partial.replace("\r", ""))  # it arrived in pieces
    assert "seed 11" in page.inner_text("#status")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)


def test_stop_ends_the_stream_and_frees_the_slot(page, server):
    page.fill("#prompt", "Pip")
    set_range(page, "#length", 3000)
    with gated(server.service.engine, 99) as gate:  # held after 100 characters: Stop comes mid-stream
        page.click("#generate")
        page.wait_for_function("document.querySelector('#generated').textContent.length > 10")
        page.click("#stop")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('stopped')")
        wait_until(lambda: not server.service.jobs, message="the slot to be given back")
        gate.open()
        wait_until(lambda: server.service.engine.active_rows == 0, message="the rows to leave the batch")
    assert len(page.eval_on_selector("#generated", "el => el.textContent")) < 3000
    assert page.is_enabled("#generate") and page.is_disabled("#stop")


def test_never_use_keeps_those_characters_out_as_the_library_does(page, tiny_run):
    ckpt = load_checkpoint(tiny_run)
    page.fill("#prompt", "Pip")
    set_range(page, "#temperature", 1.2)
    set_range(page, "#length", 300)
    page.fill("#seed", "3")
    page.fill("#ban", "eaQ")  # Q: not in the model's vocabulary, so not sent
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')")
    sampling = SampleConfig(1.2, logit_bias=ban_bias(ckpt.vocab, ban="ea"))
    expected = generate_text(ckpt.model, ckpt.vocab, "Pip", length=300, sampling=sampling, seed=3)[0]
    text = page.eval_on_selector("#generated", "el => el.textContent")
    assert text == expected and not set(text) & set("ea")
    page.fill("#ban", "")
    page.fill("#allow", "e")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')")
    assert set(page.eval_on_selector("#generated", "el => el.textContent")) == {"e"}


def test_unknown_characters_are_pointed_out_before_sending(page):
    page.fill("#prompt", "Pip met Qxz")
    warning = page.inner_text("#unknown")
    assert "Q" in warning and "x" in warning and "z" in warning
    assert page.is_disabled("#generate")
    page.fill("#prompt", "Pip")
    assert page.inner_text("#unknown") == ""
    assert page.is_enabled("#generate")
