"""Stand-in for the host's ``modules/ui_components.py`` (``InputAccordion`` only), built on real gradio.

Written from, not copied from:
- gradio 3.41.2 (A1111 1.10, reForge, Forge Classic): AUTOMATIC1111/stable-diffusion-webui
  ``modules/ui_components.py`` at 051375258cb5e3dace772a1a57bbdb9b50f86f31 (``InputAccordionImpl``).
- gradio 4.40.0 (Forge, Forge Neo): lllyasviel/stable-diffusion-webui-forge ``modules/ui_components.py`` at
  dfdcbab685e57677014f05a3309b48cc87383167, the same class; that host's ``modules/gradio_extensions.py``
  (``EventWrapper``) turns the ``_js`` keyword of an event listener into gradio 4's ``js``.

What both do: the accordion is really a ``gr.Checkbox`` (the value the script receives), built invisible with
elem_id ``<id>-checkbox``; a change of it runs the browser function ``inputAccordionChecked(<id>, checked)`` (no
server call); ``.accordion`` is a ``gr.Accordion`` with elem_id ``<id>``, class ``input-accordion``, open when the
value is true, label defaulting to "Accordion"; ``with`` enters that accordion and yields the checkbox. The page's
``javascript/inputAccordion.js`` (stand-in in ``tests/ui/host/javascript``) puts a visible checkbox in the
accordion's label and keeps the two in step. (The host's ``extra()``, a column in the label row, is left out: VMix
does not use it.)
"""

from __future__ import annotations

from functools import wraps
from typing import Any

import gradio as gr

GRADIO_MAJOR = int(gr.__version__.split(".")[0])
# The keyword gradio takes for a listener's browser-side function: `_js` in 3.x, `js` in 4.x.
JS_KEYWORD = "_js" if GRADIO_MAJOR < 4 else "js"

if GRADIO_MAJOR >= 4:
    # As Forge's modules/gradio_extensions.py does before its components are defined: gradio 4 writes a .pyi file
    # beside the source of every Component subclass (here: into the repository) unless told not to, and Forge
    # turns off `component_meta.updateable` for the classes defined after it.
    import gradio.component_meta

    _create_or_modify_pyi = gradio.component_meta.create_or_modify_pyi

    def _no_pyi_for_host_classes(component_class: type, class_name: str, events: Any) -> None:
        if not hasattr(component_class, "webui_do_not_create_gradio_pyi_thank_you"):
            _create_or_modify_pyi(component_class, class_name, events)

    gradio.component_meta.create_or_modify_pyi = _no_pyi_for_host_classes
    gradio.component_meta.updateable = lambda fn: fn


class InputAccordionImpl(gr.Checkbox):
    """The hidden checkbox; ``setup=True`` also builds the accordion (the host builds plain copies without it)."""

    webui_do_not_create_gradio_pyi_thank_you = True
    global_index = 0

    # As the hosts do: gradio 4 builds a component's page config from its __init__ signature, so the subclass must
    # show gr.Checkbox's (else elem_id, label and visible never reach the page).
    @wraps(gr.Checkbox.__init__)
    def __init__(self, value: Any = None, setup: bool = False, **kwargs: Any) -> None:
        if not setup:
            super().__init__(value=value, **kwargs)
            return
        self.accordion_id = kwargs.get("elem_id") or f"input-accordion-{InputAccordionImpl.global_index}"
        if kwargs.get("elem_id") is None:
            InputAccordionImpl.global_index += 1
        super().__init__(value=value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        on_change = f'function(checked){{ inputAccordionChecked("{self.accordion_id}", checked); }}'
        self.change(fn=None, inputs=[self], **{JS_KEYWORD: on_change})
        self.accordion = gr.Accordion(
            **{
                **kwargs,
                "elem_id": self.accordion_id,
                "label": kwargs.get("label", "Accordion"),
                "elem_classes": ["input-accordion"],
                "open": value,
            }
        )

    def __enter__(self) -> InputAccordionImpl:
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.accordion.__exit__(*exc)

    def get_block_name(self) -> str:
        return "checkbox"


def InputAccordion(value: Any = None, **kwargs: Any) -> InputAccordionImpl:
    return InputAccordionImpl(value=value, setup=True, **kwargs)
