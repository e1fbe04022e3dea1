"""The page of `charrnn serve` (`GET /`), tested in headless Chromium driven by Playwright: a
prompt typed, the button pressed, the streamed text and its colours checked against the API's
own completion and log-probabilities, and the key asked for by a server that has one."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import train_names
from test_serve import start, stop

httpx = pytest.importorskip("httpx")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_names(tmp_path_factory.mktemp("page"), 60)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses root
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield chromium
        chromium.close()


def open_page(browser, address: str):
    """A new page on `address`, with every console message and script error kept in `.problems`."""
    page = browser.new_page(viewport={"width": 1000, "height": 640})
    page.problems = []
    page.on("console", lambda message: page.problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.goto(f"{address}/")
    return page


class Assets(HTMLParser):
    """Every attribute of the page that could fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.found += [(tag, f"{name}={value}") for name, value in attrs if name in ("src", "href", "action")]


def test_the_page_has_no_external_assets_and_runs_only_its_own_script(folder: Path) -> None:
    proc, address = start(folder, "-m", "names")
    try:
        reply = httpx.get(f"{address}/")
    finally:
        stop(proc)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    assets = Assets()
    assets.feed(reply.text)
    assert assets.found == []
    policy = reply.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'sha256-" in policy


@needs_browser
def test_type_a_prompt_press_the_button_and_the_text_streams_in_coloured_by_surprise(folder: Path, browser) -> None:
    proc, address = start(folder, "-m", "names")
    try:
        page = open_page(browser, address)
        page.wait_for_selector("body[data-model]")
        assert page.text_content("#model") == "names · rnn 1x16, vocab 13 · step 60"
        page.fill("#prompt", "al")
        page.fill("#length", "60")
        page.fill("#temperature", "0.9")
        page.fill("#top_p", "0.95")
        page.fill("#seed", "5")
        page.click("#go")
        page.wait_for_selector("body[data-state=done]")
        shown = page.eval_on_selector_all(
            "#out span.c", "spans => spans.map(s => [s.textContent, s.dataset.surprise, s.style.background])"
        )
        asked = {"prompt": "al", "max_tokens": 60, "temperature": 0.9, "top_p": 0.95, "seed": 5, "logprobs": 1}
        whole = httpx.post(f"{address}/v1/completions", json=asked).json()["choices"][0]
        assert page.text_content("#out") == "al" + whole["text"]
        assert "".join(char for char, _, _ in shown) == whole["text"] and len(shown) == 60
        for (_, surprise, colour), logprob in zip(shown, whole["logprobs"]["token_logprobs"], strict=True):
            assert float(surprise) == pytest.approx(-logprob, abs=1e-5)
            red = 255 + (232 - 255) * min(-logprob / 6, 1)  # white to viz's red over 0 to 6 nats
            assert colour.startswith(f"rgb({round(red)}, ")
        assert page.text_content("#status").startswith("60 characters in ")
        assert math.isfinite(max(float(s) for _, s, _ in shown))
        shot = page.screenshot()
        assert len(shot) > 10_000  # a page drawn, not a blank one
        assert page.problems == []
    finally:
        stop(proc)


@needs_browser
def test_a_server_with_a_key_has_the_page_ask_for_it(folder: Path, browser) -> None:
    proc, address = start(folder, "-m", "names", "--api-key", "s3cret")
    try:
        page = open_page(browser, address)
        page.wait_for_selector("#keybox:not([hidden])")
        assert page.text_content("#model") == "this server needs its API key"
        page.fill("#key", "wrong")
        page.click("#go")
        page.wait_for_selector("body[data-state=error]")
        assert "a valid API key is required" in page.text_content("#status")
        page.fill("#key", "s3cret")
        page.fill("#length", "20")
        page.click("#go")
        page.wait_for_selector("body[data-state=done]")
        assert len(page.query_selector_all("#out span.c")) == 20
        page.wait_for_selector("body[data-model=names]")  # with the key, /health describes the model
        assert [p for p in page.problems if "401" not in p] == []  # the browser logs the refused request
    finally:
        stop(proc)
