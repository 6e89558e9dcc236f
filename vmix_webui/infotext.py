"""Pasting generation parameters back into the VMix controls (the host's ``on_infotext_pasted`` callback)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from vmix_ext.settings import INFOTEXT_ENABLED, INFOTEXT_HASH, INFOTEXT_KEYS, SettingsError, parse_dimensions

from .adapters import library, short_hash
from .log import logger
from .ui import NO_ADAPTER, dimension_names


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
    params[INFOTEXT_KEYS["dimensions"]] = pasted_dimensions(
        str(params.get(INFOTEXT_KEYS["dimensions"], "all")), adapter
    )
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


def pasted_dimensions(text: str, adapter: str) -> dict[str, Any]:
    choices = dimension_names(adapter)
    text = text.strip()
    if text == "all":
        chosen = list(choices)
    elif text == "none":
        chosen = []
    else:
        try:
            chosen = list(parse_dimensions(text) or ())
        except SettingsError as exc:
            logger.warning("pasted infotext has unreadable VMix dims %r (%s); all dimensions are on", text, exc)
            chosen = list(choices)
    return gr.update(choices=_with(choices, *chosen), value=chosen)


def _with(items: list[str], *extra: str) -> list[str]:
    """``items`` followed by whichever of ``extra`` they lack (a pasted value must be among a control's choices)."""
    return [*items, *(e for e in dict.fromkeys(extra) if e not in items)]
