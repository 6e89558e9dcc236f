"""Pasting generation parameters back into the VMix controls (the host's ``on_infotext_pasted`` callback)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from vmix_ext.settings import (
    INFOTEXT_ENABLED,
    INFOTEXT_HASH,
    INFOTEXT_KEYS,
    OPTIONAL_KEYS,
    SettingsError,
    VMixSettings,
    parse_dimensions,
    split_dimension,
)

from .adapters import library, short_hash
from .log import logger
from .ui import NO_ADAPTER, STRENGTH_KEYS, dimension_names


def on_infotext_pasted(_infotext: str, params: dict[str, Any]) -> None:
    """Prepare VMix's entries before the host applies pasted parameters to the controls.

    The switch gets a value from the presence of ``VMix adapter`` (text without VMix turns VMix off), and the
    adapter and dimension entries become updates that also set the choices: the adapter is found by name or, if
    the file was renamed since, by the hash the infotext recorded.
    """
    params[INFOTEXT_ENABLED] = INFOTEXT_KEYS["adapter"] in params
    if not params[INFOTEXT_ENABLED]:
        return
    adapter = pasted_adapter(str(params[INFOTEXT_KEYS["adapter"]]), params.get(INFOTEXT_HASH))
    dimensions, strengths = pasted_dimensions(str(params.get(INFOTEXT_KEYS["dimensions"], "all")), adapter)
    params[INFOTEXT_KEYS["dimensions"]] = dimensions
    names = dimension_names(adapter)
    for i, key in enumerate(STRENGTH_KEYS):  # the sliders follow the adapter's order; unused ones go back to 1
        params[key] = strengths.get(names[i], 1.0) if i < len(names) else 1.0
    # Keys written only when not at their default (and absent from older text) mean the default: set the controls
    # to it, or a value the user had set before pasting would stay.
    defaults = VMixSettings()
    for name in OPTIONAL_KEYS:
        default = getattr(defaults, name)
        params.setdefault(INFOTEXT_KEYS[name], -1.0 if default is None else default)
    params[INFOTEXT_KEYS["adapter"]] = gr.update(
        choices=[NO_ADAPTER, *_with(library().names(), adapter)], value=adapter
    )


def pasted_adapter(name: str, wanted_hash: str | None) -> str:
    names = library().names()
    if name not in names and wanted_hash:
        name = next((n for n in names if short_hash(n) == wanted_hash), name)
    if name not in names:
        logger.warning("pasted infotext names adapter '%s', which is not in %s", name, library().folder)
    return name


def pasted_dimensions(text: str, adapter: str) -> tuple[dict[str, Any], dict[str, float]]:
    """The dimension checkboxes for pasted ``VMix dims`` (names only; a name the adapter lacks is added so the user
    sees it) and the strengths it names, for the sliders."""
    choices = dimension_names(adapter)
    text = text.strip()
    strengths: dict[str, float] = {}
    if text == "all":
        chosen = list(choices)
    elif text == "none":
        chosen = []
    else:
        try:
            items = [split_dimension(item) for item in parse_dimensions(text) or ()]
        except SettingsError as exc:
            logger.warning("pasted infotext has unreadable VMix dims %r (%s); all dimensions are on", text, exc)
            items = [(name, 1.0) for name in choices]
        chosen = [name for name, _ in items]
        strengths = dict(items)
    return gr.update(choices=_with(choices, *chosen), value=chosen), strengths


def _with(items: list[str], *extra: str) -> list[str]:
    """``items`` followed by whichever of ``extra`` they lack (a pasted value must be among a control's choices)."""
    return [*items, *(e for e in dict.fromkeys(extra) if e not in items)]
