"""The status line under the VMix controls: what the chosen adapter is, whether it fits the loaded model, and how
the last generation of this tab went.

The line is refreshed when the adapter changes (choice, paste, "Send to"), by the refresh button, and once after
each generation of its tab (``javascript/vmix.js`` clicks a hidden button when the tab's generation info changes;
no listener hangs on the host's output components, which gradio 4 updates hundreds of times per generation).
API generations do not change it.
"""

from __future__ import annotations

import html
from typing import Any

from modules import shared
from torch import nn

from vmix_ext.weights import AdapterFileError, unet_family

from .adapters import library

# The last UI generation's line per tab ("txt2img", "img2img"), shown until the adapter changes again.
_after_generation: dict[str, tuple[str, bool]] = {}


def html_line(text: str, error: bool = False) -> str:
    css = "vmix-status vmix-error" if error else "vmix-status"
    return f"<div class='{css}'>{html.escape(text, quote=False)}</div>"


def loaded_family() -> str | None:
    """The family of the model the UI has loaded, from its cross-attention width; None if unknown or none."""
    model = getattr(shared, "sd_model", None)
    for path in ("forge_objects.unet.model.diffusion_model", "model.diffusion_model"):
        unet: Any = model
        for name in path.split("."):
            unet = getattr(unet, name, None)
        if isinstance(unet, nn.Module):
            return unet_family(unet)
    return None


def describe(name: str, verify: bool = False) -> str:
    """The line for a chosen adapter, or the reason it cannot be used. With ``verify`` the whole file is read and
    checked (weights too), as when the user picks it; otherwise the header alone (page build, refresh)."""
    if not name:
        if library().names():
            return html_line("Choose an adapter.")
        return html_line(
            f"No adapters in {library().folder}. VMix adapters are made with this extension's trainer "
            "(see its README); no official weights exist."
        )
    try:
        header = library().verify(name) if verify else library().header(name)
    except (LookupError, AdapterFileError) as exc:
        return html_line(str(exc), error=True)
    problem = header.family_problem(loaded_family())
    if problem:
        return html_line(f"{name}: {problem}; choose an adapter for this model", error=True)
    checked = " · file checked" if verify else ""
    return html_line(header.describe() + checked)


def after_generation(p: Any, tab: str, text: str, error: bool = False) -> None:
    if not getattr(p, "is_api", False):
        _after_generation[tab] = (text, error)


def forget(p: Any, tab: str) -> None:
    """A UI generation without VMix, or a new adapter choice: back to describing the adapter."""
    if p is None or not getattr(p, "is_api", False):
        _after_generation.pop(tab, None)


def current(tab: str, name: str, verify: bool = False) -> str:
    """The line to show now: the last generation's result if there was one since the adapter changed."""
    if tab in _after_generation:
        text, error = _after_generation[tab]
        return html_line(("Last generation ran without VMix: " + text) if error else text, error=error)
    return describe(name, verify=verify)
