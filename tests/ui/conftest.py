"""Fixtures of the UI tests: the host page served once per session, one headless Chromium, a fresh tab per test.

Nothing here imports gradio or Playwright at module level: the main run (no gradio) loads this file too.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

# Every flag keeps Chromium from reaching out or keeping state; a fresh user data dir per run.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import host_page

    page = host_page.build(tmp_path_factory.mktemp("models"))
    host_page.serve(page)
    yield page
    page.close()


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright
    from ui_env import CHROMIUM

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 960, "height": 1000},
        )
        # Only the test server is reachable: gradio's pages also ask for web fonts and a CDN script.
        context.route(
            "**/*",
            lambda route: route.continue_() if route.request.url.startswith("http://127.0.0.1") else route.abort(),
        )
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)
