"""Stand-in for modules/ui_components.py (InputAccordion and the Form* helpers)."""

from __future__ import annotations

from typing import Any

import gradio as gr


class FormRow(gr.Row):
    """Mirrors ui_components.FormRow."""


class FormColumn(gr.Column):
    """Mirrors ui_components.FormColumn."""


class FormGroup(gr.Group):
    """Mirrors ui_components.FormGroup."""


class FormHTML(gr.HTML):
    """Mirrors ui_components.FormHTML."""


class InputAccordion(gr.Checkbox):
    """Mirrors ui_components.InputAccordion: really a hidden Checkbox (the script arg, elem_id '<id>-checkbox',
    visible=False) plus a gr.Accordion (elem_id '<id>', label default 'Accordion', open=value) in .accordion;
    `with InputAccordion(...) as acc:` enters the accordion and yields the checkbox."""

    global_index = 0

    def __init__(self, value: bool, **kwargs: Any) -> None:
        self.accordion_id = kwargs.get("elem_id")
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordion.global_index}"
            InputAccordion.global_index += 1
        super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.change(fn=None, inputs=[self])
        self.accordion = gr.Accordion(
            **{
                **kwargs,
                "elem_id": self.accordion_id,
                "label": kwargs.get("label", "Accordion"),
                "elem_classes": ["input-accordion"],
                "open": value,
            }
        )

    def extra(self) -> gr.Column:
        """Mirrors InputAccordion.extra: a column placed in the accordion's label row."""
        return gr.Column(elem_id=self.accordion_id + "-extra", elem_classes="input-accordion-extra", min_width=0)

    def __enter__(self) -> InputAccordion:
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.accordion.__exit__(*exc)

    def get_block_name(self) -> str:
        """Mirrors get_block_name."""
        return "checkbox"
