"""The VMix accordion of the txt2img and img2img tabs."""

from __future__ import annotations

from typing import Any

import gradio as gr

from vmix_ext.settings import INFOTEXT_ENABLED, INFOTEXT_KEYS, LABELS, SCALE_MAX, SCALE_MIN, SCALE_STEP, elem_id
from vmix_ext.weights import AdapterFileError

from . import status
from .adapters import library

try:  # A1111 1.7+ and the Forge family
    from modules.ui_components import InputAccordion
except ImportError:  # pragma: no cover - older hosts
    InputAccordion = None

TITLE = "VMix"
NO_ADAPTER = ""


def dimension_names(name: str) -> list[str]:
    if not name:
        return []
    try:
        return [d.name for d in library().header(name).dimensions]
    except (LookupError, AdapterFileError):
        return []


def on_adapter_change(
    tab: str, name: str, chosen: list[str] | None, previous: str | None
) -> tuple[dict[str, Any], str, str]:
    """Any change of the adapter: a choice, pasted infotext or "Send to img2img" (which copies the adapter and the
    dimensions together, without the paste step). Dimensions that all belong to the new adapter were set with it
    and stay (also none at all, unless there was no adapter before); otherwise the user switched adapters and every
    dimension is on."""
    names = dimension_names(name)
    chosen = list(chosen or [])
    fits = all(item.partition(":")[0] in names for item in chosen)
    keep = fits and (bool(chosen) or bool(dimension_names(previous or NO_ADAPTER)))
    status.forget(None, tab)
    return gr.update(choices=names, value=chosen if keep else names), status.current(tab, name), name


def on_refresh(tab: str, name: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    library().clear()
    choices = library().names()
    keep = name if name in choices else (choices[0] if choices else NO_ADAPTER)
    names = dimension_names(keep)
    status.forget(None, tab)
    return (
        gr.update(choices=[NO_ADAPTER, *choices], value=keep),
        gr.update(choices=names, value=names),
        status.current(tab, keep),
    )


def build(tab: str) -> tuple[list[Any], list[tuple[Any, str]]]:
    """The controls in the host's args order, and the (component, infotext key) pairs for pasting."""
    names = library().names()
    first = names[0] if names else NO_ADAPTER
    with _accordion(tab) as enabled:
        with gr.Row():
            adapter = gr.Dropdown(
                label=LABELS["adapter"], choices=[NO_ADAPTER, *names], value=first, elem_id=elem_id("adapter", tab)
            )
            refresh = gr.Button("🔄", elem_id=elem_id("refresh", tab), elem_classes=["tool"])
        scale = gr.Slider(
            label=LABELS["scale"],
            minimum=SCALE_MIN,
            maximum=SCALE_MAX,
            step=SCALE_STEP,
            value=1.0,
            elem_id=elem_id("scale", tab),
        )
        dims = dimension_names(first)
        dimensions = gr.CheckboxGroup(
            label=LABELS["dimensions"], choices=dims, value=dims, elem_id=elem_id("dimensions", tab)
        )
        with gr.Accordion("Advanced", open=False, elem_id=elem_id("advanced", tab)):
            cond_only = gr.Checkbox(label=LABELS["cond_only"], value=False, elem_id=elem_id("cond_only", tab))
            with gr.Row():
                start = gr.Slider(
                    label=LABELS["start"], minimum=0.0, maximum=1.0, step=0.01, value=0.0, elem_id=elem_id("start", tab)
                )
                end = gr.Slider(
                    label=LABELS["end"], minimum=0.0, maximum=1.0, step=0.01, value=1.0, elem_id=elem_id("end", tab)
                )
        line = gr.HTML(value=status.describe(first), elem_id=elem_id("status", tab))
        # Clicked by javascript/vmix.js once the tab's generation info has changed (see status.py). Hidden by CSS:
        # gradio 4 leaves invisible components out of the page, where the script could not click them.
        after_generation = gr.Button(
            "VMix status", elem_id=elem_id("status_refresh", tab), elem_classes=["vmix-hidden"]
        )
        previous = gr.State(first)  # the adapter before a change, for on_adapter_change

    adapter.change(
        fn=lambda name, chosen, before: on_adapter_change(tab, name, chosen, before),
        inputs=[adapter, dimensions, previous],
        outputs=[dimensions, line, previous],
    )
    refresh.click(fn=lambda name: on_refresh(tab, name), inputs=[adapter], outputs=[adapter, dimensions, line])
    after_generation.click(fn=lambda name: status.current(tab, name), inputs=[adapter], outputs=[line])

    controls = [enabled, adapter, scale, dimensions, cond_only, start, end]
    # Plain keys for every control (see infotext.py), so "Send to img2img" copies VMix's controls too.
    keys = [INFOTEXT_ENABLED, *INFOTEXT_KEYS.values()]
    return controls, list(zip(controls, keys, strict=True))


def _accordion(tab: str) -> Any:
    if InputAccordion is not None:
        return InputAccordion(False, label=TITLE, elem_id=elem_id("enabled", tab))
    return _LegacyAccordion(tab)  # pragma: no cover


class _LegacyAccordion:  # pragma: no cover - A1111 before 1.7 has no InputAccordion
    def __init__(self, tab: str) -> None:
        self.accordion = gr.Accordion(TITLE, open=False)
        self.tab = tab

    def __enter__(self) -> Any:
        self.accordion.__enter__()
        return gr.Checkbox(label=LABELS["enabled"], value=False, elem_id=elem_id("enabled", self.tab))

    def __exit__(self, *exc: object) -> None:
        self.accordion.__exit__(*exc)
