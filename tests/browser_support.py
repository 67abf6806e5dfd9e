"""What the real-browser tests share: Debian's Chromium driven by Playwright, and waitress serving the
app in a thread of the test process."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying hosts this machine cannot reach.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# CI sets SIAMESE_REQUIRE_BROWSER=1: there a missing browser is a failure, not a quiet skip.
requires_browser = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("SIAMESE_REQUIRE_BROWSER"),
    reason="Debian's chromium is not installed (apt-get install chromium)")


@contextmanager
def serving(app) -> Iterator[str]:
    """waitress, as app.py runs it, on a free port of 127.0.0.1; yields the base URL."""
    import waitress

    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}/"
    finally:
        server.close()


@contextmanager
def chromium_browser():
    """Debian's Chromium (never a browser downloaded by Playwright)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def fresh_page(browser, timeout_ms: int):
    """A fresh page in its own context; fails the test if the page logs a JavaScript error.

    The page's Content-Security-Policy is bypassed: Playwright's wait_for_function compiles its
    predicate with `new Function` in the page, which the policy (script-src 'self', no 'unsafe-eval')
    refuses as soon as it polls. tests/test_serving.py checks the page under its policy, with locators.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors


def record_api_requests(page) -> list[tuple[str, str]]:
    """(method, URL) of every request the page makes to the JSON API from now on."""
    requests: list[tuple[str, str]] = []
    page.on("request", lambda request: requests.append((request.method, request.url))
            if "/api/" in request.url else None)
    return requests
