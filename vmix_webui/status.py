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

from vmix_ext.families import family_for_context_dim, family_label
from vmix_ext.layers import layer_widths
from vmix_ext.weights import AdapterFileError

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
        if unet is not None:
            widths = {context for context, _ in layer_widths(unet).values()}
            return family_for_context_dim(widths.pop()) if len(widths) == 1 else None
    return None


def describe(name: str) -> str:
    """The line for a chosen adapter, or the reason it cannot be used."""
    if not name:
        if library().names():
            return html_line("Choose an adapter.")
        return html_line(
            f"No adapters in {library().folder}. VMix adapters are made with this extension's trainer "
            "(see its README); no official weights exist."
        )
    try:
        header = library().header(name)
    except (LookupError, AdapterFileError) as exc:
        return html_line(str(exc), error=True)
    family = loaded_family()
    if family is not None and family != header.family:
        return html_line(
            f"{name}: made for {family_label(header.family)}, but the loaded model is {family_label(family)}; "
            "choose an adapter for this model",
            error=True,
        )
    return html_line(header.describe())


def after_generation(p: Any, tab: str, text: str, error: bool = False) -> None:
    if not getattr(p, "is_api", False):
        _after_generation[tab] = (text, error)


def forget(p: Any, tab: str) -> None:
    """A UI generation without VMix, or a new adapter choice: back to describing the adapter."""
    if p is None or not getattr(p, "is_api", False):
        _after_generation.pop(tab, None)


def current(tab: str, name: str) -> str:
    """The line to show now: the last generation's result if there was one since the adapter changed."""
    if tab in _after_generation:
        text, error = _after_generation[tab]
        return html_line(("Last generation ran without VMix: " + text) if error else text, error=error)
    return describe(name)
