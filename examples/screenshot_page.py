"""A picture of `charrnn serve`'s page once it has generated: the README's examples/page.png.

    python examples/screenshot_page.py "http://127.0.0.1:8000/#prompt=ROMEO%3A&length=400&seed=1&go" page.png

The URL's fragment fills the form (`prompt`, `length`, `temperature`, `top_p`, `seed`) and `go`
presses Generate; the picture is taken when the text has finished streaming in. Needs the `dev`
extra's Playwright and Debian's `chromium`.
"""

from __future__ import annotations

import os
import shutil
import sys

from playwright.sync_api import sync_playwright


def main(url: str, out: str, width: int = 1000, height: int = 620) -> None:
    with sync_playwright() as playwright:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses root
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=args)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        page.wait_for_selector("body[data-state=done]", timeout=120_000)
        page.screenshot(path=out)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
