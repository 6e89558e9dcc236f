"""The VMix accordion in a real browser: headless Chromium (Debian's) driven by Playwright against the host page of
``host_page.py``, in the real gradio of the environment (3.41.2 or 4.40.0).

Controls are found by their element ids (``vmix_ext.settings.elem_id``), never by layout, so added controls do not
disturb these tests.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_env import require_browser

require_browser()

import host_page  # noqa: E402, F401  (puts the host's modules on sys.path)
from modules.infotext_utils import parse_generation_parameters  # noqa: E402
from playwright.sync_api import Page, expect  # noqa: E402

from vmix_ext.settings import INFOTEXT_KEYS, LABELS, elem_id  # noqa: E402

TIMEOUT_MS = 15_000
IDLE_S = 5.0
# Where the screenshots go: docs/images when VMIX_UI_SCREENSHOTS names it (.ci/run does not), else a temp dir.
SCREENSHOTS = os.environ.get("VMIX_UI_SCREENSHOTS")


class Ui:
    """One browser tab on the host page, and every server call it makes."""

    def __init__(self, page: Page, gradio_version: str) -> None:
        self.page = page
        self.major = int(gradio_version.split(".")[0])
        self.requests: list[tuple[float, str, str]] = []
        self.sockets: list[tuple[float, str]] = []
        self.in_flight: set[Any] = set()  # requests without a response yet, open sockets
        self.last_activity = time.monotonic()
        page.on("request", self._on_request)
        page.on("requestfinished", self._done)
        page.on("requestfailed", self._done)
        page.on("websocket", self._on_socket)

    def _on_request(self, request: Any) -> None:
        self.requests.append((time.monotonic(), request.method, request.url))
        if "/heartbeat/" not in request.url:  # gradio 4's page-long stream
            self.in_flight.add(request)
        self.last_activity = time.monotonic()

    def _on_socket(self, socket: Any) -> None:
        self.sockets.append((time.monotonic(), socket.url))
        self.in_flight.add(socket)
        socket.on("close", lambda _: self._done(socket))
        self.last_activity = time.monotonic()

    def _done(self, item: Any) -> None:
        self.in_flight.discard(item)
        self.last_activity = time.monotonic()

    # -- locating ---------------------------------------------------------------------------------------------------

    def control(self, name: str, tab: str = "txt2img") -> Any:
        # .first: gradio 3's HTML puts the id on its block and again on the inner element
        return self.page.locator(f"#{elem_id(name, tab)}").first

    def switch(self, tab: str = "txt2img") -> Any:
        """The visible checkbox inputAccordion.js puts into the accordion's label."""
        return self.page.locator(f"#{elem_id('enabled', tab)}-visible-checkbox")

    def value_of_switch(self, tab: str = "txt2img") -> bool:
        """The hidden gradio checkbox: what the script receives."""
        return self.page.locator(f"#{elem_id('enabled', tab)}-checkbox input").is_checked()

    def is_open(self, tab: str = "txt2img") -> bool:
        header = self.control("enabled", tab).locator(".label-wrap").first
        return "open" in (header.get_attribute("class") or "").split()

    def status(self, tab: str = "txt2img") -> Any:
        return self.control("status", tab).locator(".vmix-status")

    def info(self, tab: str = "txt2img") -> Any:
        return self.page.locator(f"#html_info_{tab}").first

    # -- acting -----------------------------------------------------------------------------------------------------

    def open_tab(self, tab: str) -> None:
        self.page.locator("#tabs .tab-nav button").filter(has_text=re.compile(rf"^\s*{tab}\s*$")).click()

    def open_accordion(self, tab: str = "txt2img") -> None:
        if not self.is_open(tab):
            self.control("enabled", tab).locator(".label-wrap").first.click()
        expect(self.control("adapter", tab)).to_be_visible(timeout=TIMEOUT_MS)

    def choose_adapter(self, name: str, tab: str = "txt2img") -> None:
        self.open_accordion(tab)
        if self.control("adapter", tab).locator("input").input_value() == name:
            return
        self.control("adapter", tab).locator("input").click()
        start = self.mark()
        # The option's value is data-value in gradio 3, aria-label in gradio 4.
        self.control("adapter", tab).locator(f"li[data-value='{name}'], li[aria-label='{name}']").click()
        expect(self.control("adapter", tab).locator("input")).to_have_value(name, timeout=TIMEOUT_MS)
        self.wait_for_events(start, 1)  # the change event updates the dimensions and the status line

    def dimensions(self, tab: str = "txt2img") -> dict[str, bool]:
        """Each offered dimension and whether it is checked."""
        return self.control("dimensions", tab).evaluate(  # at once: the list may be changing
            "group => Object.fromEntries(Array.from(group.querySelectorAll('label'))"
            ".map(label => [label.textContent.trim(), label.querySelector('input').checked]))"
        )

    def expect_dimensions(self, expected: dict[str, bool], tab: str = "txt2img") -> None:
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while self.dimensions(tab) != expected and time.monotonic() < deadline:
            self.page.wait_for_timeout(100)
        assert self.dimensions(tab) == expected

    def set_number(self, name: str, value: float, tab: str = "txt2img") -> None:
        box = self.control(name, tab).locator("input[type=number]")
        box.fill(str(value))
        box.press("Enter")
        box.blur()
        self.settle()

    def generate(self, tab: str = "txt2img") -> str:
        """Click Generate, wait for this generation's infotext and for the status refresh vmix.js schedules."""
        final = self.info(tab).locator(".final-infotext")
        before = final.get_attribute("data-run") if final.count() else "0"
        start = self.mark()
        self.page.locator(f"#{tab}_generate").click()
        expect(final).to_have_attribute("data-run", str(int(before or 0) + 1), timeout=TIMEOUT_MS)
        self.wait_for_events(start, 2, timeout_s=1.5, required=False)  # vmix.js's refresh, if it clicks
        return final.inner_text()

    def paste(self, text: str, tab: str = "txt2img") -> None:
        self.page.locator(f"#{tab}_prompt textarea").fill(text)
        start = self.mark()
        self.page.locator(f"#{tab}_paste").click()
        self.wait_for_events(start, 1)

    def wait_for_events(self, since: float, count: int, timeout_s: float = TIMEOUT_MS / 1000, required: bool = True):
        """Wait until ``count`` gradio events have started since ``since`` (the browser may open an event's
        connection a moment after the click), then until the page is quiet."""
        deadline = time.monotonic() + timeout_s
        while self.events(since) < count and time.monotonic() < deadline:
            self.page.wait_for_timeout(50)
        assert self.events(since) >= count or not required, f"expected {count} events: {self.server_calls(since)}"
        self.settle()

    def settle(self, quiet_s: float = 0.8) -> None:
        """Wait until no server call is open and none has started or ended for ``quiet_s`` (longer than the
        400 ms vmix.js waits before it refreshes the status line)."""
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            if not self.in_flight and time.monotonic() - self.last_activity >= quiet_s:
                return
            self.page.wait_for_timeout(50)
        raise AssertionError(f"the page never went quiet: {self.in_flight}")

    # -- counting ---------------------------------------------------------------------------------------------------

    def mark(self) -> float:
        return time.monotonic()

    def server_calls(self, since: float) -> list[str]:
        """Every request or socket to the test server since ``since`` (static files included)."""
        calls = [f"{method} {url}" for t, method, url in self.requests if t >= since and "127.0.0.1" in url]
        return calls + [f"WS {url}" for t, url in self.sockets if t >= since]

    def events(self, since: float) -> int:
        """Gradio events run since ``since``: a queue socket each in gradio 3, a POST /queue/join each in gradio 4."""
        if self.major < 4:
            return sum(1 for t, url in self.sockets if t >= since and "queue/join" in url)
        return sum(1 for t, method, url in self.requests if t >= since and method == "POST" and "queue/join" in url)


@pytest.fixture()
def ui(host: Any, browser_context: Any) -> Iterator[Ui]:
    host.reset()
    page = browser_context.new_page()
    view = Ui(page, host.gradio_version)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if "error running callback" in msg.text else None)
    page.goto(host.url)
    # inputAccordion.js has run (its onUiLoaded callback), so the host's page scripts work.
    expect(view.switch("txt2img")).to_be_attached(timeout=TIMEOUT_MS)
    expect(view.switch("img2img")).to_be_attached(timeout=TIMEOUT_MS)
    view.settle()
    yield view
    page.close()
    assert errors == [], f"page script errors: {errors}"


def infotext_items(text: str) -> dict[str, str]:
    """The infotext's "key: value" pairs, as the host's paste step reads them."""
    return parse_generation_parameters(text)


def test_enable_switch_drives_the_script_argument(ui: Ui):
    assert not ui.switch().is_checked() and not ui.value_of_switch() and not ui.is_open()
    # Opening the accordion switches VMix on (linked), as in the hosts.
    ui.open_accordion()
    expect(ui.switch()).to_be_checked()
    assert ui.value_of_switch()
    ui.choose_adapter("film")
    items = infotext_items(ui.generate())
    assert items[INFOTEXT_KEYS["adapter"]] == "film"
    # The checkbox alone switches it off and leaves the accordion open.
    ui.switch().click()
    expect(ui.switch()).not_to_be_checked()
    assert not ui.value_of_switch() and ui.is_open()
    assert INFOTEXT_KEYS["adapter"] not in infotext_items(ui.generate())


def test_choosing_an_adapter_changes_dimensions_and_status(ui: Ui, host: Any):
    ui.choose_adapter("film")
    ui.expect_dimensions({"color": True, "lighting": True, "focus": True})
    expect(ui.status()).to_have_text(re.compile(r"SD 1\.x, 3 dimensions \(color, lighting, focus\)"))
    ui.choose_adapter("mood")
    ui.expect_dimensions({"warmth": True, "contrast": True})
    expect(ui.status()).to_have_text(re.compile(r"SD 1\.x, 2 dimensions \(warmth, contrast\)"))
    expect(ui.status()).not_to_have_class(re.compile("vmix-error"))
    # The other tab is its own.
    ui.open_tab("img2img")
    ui.open_accordion("img2img")
    expect(ui.control("adapter", "img2img").locator("input")).to_have_value("broken")
    expect(ui.status("img2img")).to_contain_text("not a safetensors file")
    ui.open_tab("txt2img")
    if SCREENSHOTS:
        ui.choose_adapter("film")
        ui.control("dimensions").locator("label", has_text="focus").click()
        ui.settle(0.5)
        shoot(ui, "accordion.png")


def test_broken_and_mismatched_adapters_say_why(ui: Ui):
    ui.choose_adapter("film")
    ui.choose_adapter("broken")
    expect(ui.status()).to_have_class(re.compile("vmix-error"))
    expect(ui.status()).to_contain_text("broken.safetensors")
    expect(ui.status()).to_contain_text("not a safetensors file")
    ui.expect_dimensions({})
    ui.choose_adapter("wide")
    expect(ui.status()).to_have_class(re.compile("vmix-error"))
    expect(ui.status()).to_contain_text("made for SDXL, but the loaded model is SD 1.x")
    if SCREENSHOTS:
        shoot(ui, "accordion-error.png")


def test_refresh_finds_a_new_adapter(ui: Ui, host: Any):
    ui.choose_adapter("film")
    added = host.folder / "added.safetensors"
    added.write_bytes((host.folder / "mood.safetensors").read_bytes())
    try:
        start = ui.mark()
        ui.control("refresh").click()
        ui.wait_for_events(start, 1)
        ui.choose_adapter("added")
        ui.expect_dimensions({"warmth": True, "contrast": True})
        expect(ui.status()).to_have_text(re.compile(r"2 dimensions \(warmth, contrast\)"))
    finally:
        added.unlink()
        host.reset()


def test_strength_controls(ui: Ui):
    ui.choose_adapter("film")
    scale = ui.control("scale").locator("input[type=range]")
    assert (scale.get_attribute("min"), scale.get_attribute("max"), scale.get_attribute("step")) == ("0", "2", "0.05")
    expect(scale).to_have_value("1")
    # The label carries the hover hint javascript/vmix.js adds to the host's `titles`.
    label = ui.control("scale").get_by_text(LABELS["scale"], exact=True)
    expect(label).to_have_attribute("title", re.compile("Strength of the aesthetic term"), timeout=TIMEOUT_MS)
    ui.set_number("scale", 0.35)
    expect(scale).to_have_value("0.35")
    ui.control("dimensions").locator("label", has_text="lighting").click()
    ui.expect_dimensions({"color": True, "lighting": False, "focus": True})
    items = infotext_items(ui.generate())
    assert items[INFOTEXT_KEYS["scale"]] == "0.35"
    assert items[INFOTEXT_KEYS["dimensions"]] == "color, focus"
    expect(ui.status()).to_contain_text("λ 0.35 · color, focus")


def test_paste_with_vmix_keys_restores_the_controls(ui: Ui):
    text = (
        "a cat\nNegative prompt: blurry\nSteps: 3, Sampler: Euler, Seed: 1, "
        f"{INFOTEXT_KEYS['adapter']}: mood, {INFOTEXT_KEYS['scale']}: 0.5, {INFOTEXT_KEYS['dimensions']}: warmth"
    )
    ui.paste(text)
    expect(ui.switch()).to_be_checked()
    assert ui.value_of_switch() and ui.is_open()
    expect(ui.control("adapter").locator("input")).to_have_value("mood")
    expect(ui.control("scale").locator("input[type=range]")).to_have_value("0.5")
    ui.expect_dimensions({"warmth": True, "contrast": False})
    expect(ui.status()).to_have_text(re.compile(r"2 dimensions \(warmth, contrast\)"))
    expect(ui.page.locator("#txt2img_steps input[type=number]")).to_have_value("3")  # a host field, pasted alike
    items = infotext_items(ui.generate())
    assert (items[INFOTEXT_KEYS["adapter"]], items[INFOTEXT_KEYS["scale"]]) == ("mood", "0.5")


def test_paste_without_vmix_keys_switches_off_and_keeps_the_rest(ui: Ui):
    ui.choose_adapter("film")
    ui.set_number("scale", 1.5)
    expect(ui.switch()).to_be_checked()
    ui.paste("a dog\nSteps: 3, Sampler: Euler, Seed: 2")
    expect(ui.switch()).not_to_be_checked()
    assert not ui.value_of_switch()
    expect(ui.control("adapter").locator("input")).to_have_value("film")
    expect(ui.control("scale").locator("input[type=range]")).to_have_value("1.5")
    ui.expect_dimensions({"color": True, "lighting": True, "focus": True})


def test_status_line_after_a_generation(ui: Ui):
    ui.choose_adapter("film")
    described = ui.status().inner_text()
    ui.generate()
    expect(ui.status()).to_have_text(re.compile(r"^film \[[0-9a-f]{10}\] · SD 1\.x · λ 1 · color, lighting, focus$"))
    assert ui.status().inner_text() != described
    # A failed run says so, and the image was made without VMix.
    ui.choose_adapter("broken")
    ui.generate()
    expect(ui.status()).to_have_class(re.compile("vmix-error"))
    expect(ui.status()).to_contain_text("Last generation ran without VMix")
    # The other tab's line did not move.
    expect(ui.status("img2img")).not_to_contain_text("Last generation")


def test_status_line_after_a_repeated_generation(ui: Ui):
    ui.choose_adapter("film")
    ui.generate()
    summary = ui.status().inner_text()
    ui.choose_adapter("mood")
    ui.choose_adapter("film")
    expect(ui.status()).not_to_have_text(summary)  # describes the adapter again
    ui.generate()  # the same seed and settings, so the same infotext
    expect(ui.status()).to_have_text(summary, timeout=3000)


def test_no_event_loops(ui: Ui):
    """Idle: no server call at all. One generation: the generation's own event and the one status refresh."""
    start = ui.mark()
    ui.page.wait_for_timeout(IDLE_S * 1000)
    assert ui.server_calls(start) == []
    ui.choose_adapter("film")
    start = ui.mark()
    ui.generate()
    ui.wait_for_events(start, 2)  # Generate, then vmix.js's status refresh
    ui.settle(quiet_s=1.5)  # and nothing after them
    assert ui.events(start) == 2, ui.server_calls(start)
    assert len(ui.server_calls(start)) <= 4, ui.server_calls(start)  # gradio 4: POST queue/join + GET queue/data each
    start = ui.mark()
    ui.page.wait_for_timeout(3000)
    assert ui.server_calls(start) == []


def shoot(ui: Ui, name: str) -> None:
    """A PNG of the txt2img accordion into VMIX_UI_SCREENSHOTS."""
    folder = Path(SCREENSHOTS or ".")
    folder.mkdir(parents=True, exist_ok=True)
    ui.control("enabled").screenshot(path=str(folder / name))
