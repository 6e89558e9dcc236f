"""The VMix accordion of the txt2img and img2img tabs."""

from __future__ import annotations

from typing import Any

import gradio as gr

from vmix_ext.settings import (
    BLOCK_SCALE_MAX,
    INFOTEXT_ENABLED,
    INFOTEXT_KEYS,
    LABELS,
    PASSES,
    SCALE_MAX,
    SCALE_MIN,
    SCALE_STEP,
    elem_id,
)
from vmix_ext.weights import AdapterFileError

from . import status
from .adapters import library

# gradio 3.41 and 4 take (label, value) pairs as Radio choices; older ones only values.
_RADIO_PAIRS = tuple(int(part) for part in getattr(gr, "__version__", "3.41").split(".")[:2] if part.isdigit()) >= (
    3,
    41,
)

try:  # A1111 1.7+ and the Forge family
    from modules.ui_components import InputAccordion
except ImportError:  # pragma: no cover - older hosts
    InputAccordion = None

TITLE = "VMix"
NO_ADAPTER = ""
# gradio cannot add components after the page is built: a fixed pool of strength sliders, one shown per dimension of
# the chosen adapter (in the adapter's order). Never written to infotext: "VMix dims" carries the strengths.
STRENGTH_SLIDERS = 8
STRENGTH_KEYS = tuple(f"VMix strength {i + 1}" for i in range(STRENGTH_SLIDERS))


def dimension_names(name: str) -> list[str]:
    if not name:
        return []
    try:
        return [d.name for d in library().header(name).dimensions]
    except (LookupError, AdapterFileError):
        return []


def on_adapter_change(tab: str, name: str, chosen: list[str] | None, previous: str | None) -> tuple[Any, ...]:
    """Any change of the adapter: a choice, pasted infotext or "Send to img2img" (which copies the adapter and the
    dimensions together, without the paste step). Dimensions that all belong to the new adapter were set with it
    and stay, with their strengths (also none at all, unless there was no adapter before); otherwise the user
    switched adapters and every dimension is on at full strength."""
    names = dimension_names(name)
    chosen = list(chosen or [])
    fits = all(item.partition(":")[0] in names for item in chosen)
    keep = fits and (bool(chosen) or bool(dimension_names(previous or NO_ADAPTER)))
    status.forget(None, tab)
    dims = gr.update(choices=names, value=chosen if keep else names)
    line = status.current(tab, name, verify=True)  # a choice reads the whole file: a broken one shows now
    return (dims, line, name, *strength_updates(names, keep_values=keep))


def strength_updates(names: list[str], keep_values: bool = False) -> list[dict[str, Any]]:
    """One update per slider of the pool: shown and labelled for each dimension, hidden (and 1) for the rest."""
    updates = []
    for i in range(STRENGTH_SLIDERS):
        if i < len(names):
            value = {} if keep_values else {"value": 1.0}
            updates.append(gr.update(visible=True, label=LABELS["strength"].format(names[i]), **value))
        else:
            updates.append(gr.update(visible=False, value=1.0))
    return updates


def on_refresh(tab: str, name: str) -> tuple[Any, ...]:
    library().clear()
    choices = library().names()
    keep = name if name in choices else (choices[0] if choices else NO_ADAPTER)
    names = dimension_names(keep)
    status.forget(None, tab)
    return (
        gr.update(choices=[NO_ADAPTER, *choices], value=keep),
        gr.update(choices=names, value=names),
        status.current(tab, keep),
        *strength_updates(names),
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
        strengths = [
            gr.Slider(
                label=LABELS["strength"].format(dims[i]) if i < len(dims) else "",
                minimum=0.0,
                maximum=1.0,
                step=0.05,
                value=1.0,
                visible=i < len(dims),
                elem_id=elem_id(f"strength_{i + 1}", tab),
            )
            for i in range(STRENGTH_SLIDERS)
        ]
        with gr.Accordion("Advanced", open=False, elem_id=elem_id("advanced", tab)):
            cond_only = gr.Checkbox(label=LABELS["cond_only"], value=False, elem_id=elem_id("cond_only", tab))
            with gr.Row():
                start = gr.Slider(
                    label=LABELS["start"], minimum=0.0, maximum=1.0, step=0.01, value=0.0, elem_id=elem_id("start", tab)
                )
                end = gr.Slider(
                    label=LABELS["end"], minimum=0.0, maximum=1.0, step=0.01, value=1.0, elem_id=elem_id("end", tab)
                )
            with gr.Row():
                blocks = [
                    gr.Slider(
                        label=LABELS[field],
                        minimum=0.0,
                        maximum=BLOCK_SCALE_MAX,
                        step=0.05,
                        value=1.0,
                        elem_id=elem_id(field, tab),
                    )
                    for field in ("input_scale", "middle_scale", "output_scale")
                ]
            with gr.Row():
                passes = gr.Radio(
                    label=LABELS["passes"],
                    choices=list(PASSES),  # plain values: (label, value) pairs are not in every gradio 3
                    value="both",
                    elem_id=elem_id("passes", tab),
                )
                hires_scale = gr.Slider(
                    label=LABELS["hires_scale"],
                    minimum=-1.0,
                    maximum=SCALE_MAX,
                    step=SCALE_STEP,
                    value=-1.0,
                    elem_id=elem_id("hires_scale", tab),
                )
        line = gr.HTML(value=status.describe(first), elem_id=elem_id("status", tab))
        # Clicked by javascript/vmix.js once the tab's generation info has changed (see status.py). Hidden by CSS,
        # not visible=False, so the script finds a clickable element whatever a gradio version does with those.
        after_generation = gr.Button(
            "VMix status", elem_id=elem_id("status_refresh", tab), elem_classes=["vmix-hidden"]
        )
        previous = gr.State(first)  # the adapter before a change, for on_adapter_change

    adapter.change(
        fn=lambda name, chosen, before: on_adapter_change(tab, name, chosen, before),
        inputs=[adapter, dimensions, previous],
        outputs=[dimensions, line, previous, *strengths],
    )
    refresh.click(
        fn=lambda name: on_refresh(tab, name), inputs=[adapter], outputs=[adapter, dimensions, line, *strengths]
    )
    after_generation.click(fn=lambda name: status.current(tab, name), inputs=[adapter], outputs=[line])

    # The host's args order: every VMixSettings field, then the strength sliders (UI only: the API's padding gives 1).
    controls = [enabled, adapter, scale, dimensions, cond_only, start, end, *blocks, passes, hires_scale]
    # Plain keys for every control (see infotext.py), so "Send to img2img" copies VMix's controls too.
    keys = [INFOTEXT_ENABLED, *INFOTEXT_KEYS.values(), *STRENGTH_KEYS]
    return [*controls, *strengths], list(zip([*controls, *strengths], keys, strict=True))


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
