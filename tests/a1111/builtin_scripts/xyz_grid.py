"""Stand-in for scripts/xyz_grid.py (the built-in X/Y/Z plot): AxisOption, axis_options and the per-cell
apply-then-process_images loop. Loaded by modules.scripts.load_script_file, so its module name is 'xyz_grid.py'."""

from __future__ import annotations

import csv
from collections.abc import Callable
from copy import copy
from io import StringIO
from typing import Any

import gradio as gr
from modules import errors, processing, scripts, shared


def format_value_add_label(p: Any, opt: AxisOption, x: Any) -> str:
    """Mirrors xyz_grid.format_value_add_label."""
    if type(x) is float:
        x = round(x, 8)
    return f"{opt.label}: {x}"


def apply_field(field: str) -> Callable:
    """Mirrors xyz_grid.apply_field: setattr(p, field, x)."""

    def fun(p: Any, x: Any, xs: Any) -> None:
        setattr(p, field, x)

    return fun


def do_nothing(p: Any, x: Any, xs: Any) -> None:
    """Mirrors xyz_grid.do_nothing."""


class AxisOption:
    """Mirrors xyz_grid.AxisOption(label, type, apply, format_value, confirm, cost, choices, prepare). The plain
    class has no is_img2img attribute; the UI lists type(x) == AxisOption entries on both tabs."""

    def __init__(
        self,
        label: str,
        type: Callable,
        apply: Callable,
        format_value: Callable = format_value_add_label,
        confirm: Callable | None = None,
        cost: float = 0.0,
        choices: Callable | None = None,
        prepare: Callable | None = None,
    ) -> None:
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


class AxisOptionImg2Img(AxisOption):
    """Mirrors xyz_grid.AxisOptionImg2Img (is_img2img = True)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    """Mirrors xyz_grid.AxisOptionTxt2Img (is_img2img = False)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.is_img2img = False


axis_options: list[AxisOption] = [
    AxisOption("Nothing", str, do_nothing, format_value=lambda p, opt, x: ""),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
    AxisOptionTxt2Img("Hires steps", int, apply_field("hr_second_pass_steps")),
]


def current_axis_options(is_img2img: bool) -> list[AxisOption]:
    """Mirrors Script.ui's filter: plain AxisOption, or the subclass matching the tab."""
    return [x for x in axis_options if type(x) is AxisOption or x.is_img2img == is_img2img]  # type: ignore[attr-defined]


def process_axis(p: Any, opt: AxisOption, vals: str, vals_dropdown: list | None = None) -> list:
    """Mirrors run()'s process_axis (no range syntax): dropdown values when opt.choices, else opt.prepare(vals)
    or a CSV split; cast with opt.type; then opt.confirm(p, values)."""
    if opt.label == "Nothing":
        return [0]
    if opt.choices is not None and vals_dropdown is not None:
        valslist = list(vals_dropdown)
    elif opt.prepare is not None:
        valslist = opt.prepare(vals)
    else:
        valslist = [x.strip() for x in next(csv.reader(StringIO(vals)), []) if x.strip()]
    valslist = [opt.type(x) for x in valslist]
    if opt.confirm:
        opt.confirm(p, valslist)
    return valslist


def run_cells(p: Any, opt: AxisOption, values: list) -> list:
    """Mirrors run()'s cell(): for each value pc = copy(p) (SHALLOW: extra_generation_params, script_args and other
    containers are shared with p and across cells), pc.styles copied, opt.apply(pc, v, values), then
    process_images(pc); an exception is displayed and becomes an empty Processed. Copies are never closed."""
    results = []
    for v in values:
        if shared.state.interrupted or shared.state.stopping_generation:
            results.append(processing.Processed(p, [], p.seed, ""))
            continue
        pc = copy(p)
        pc.styles = pc.styles[:]
        opt.apply(pc, v, values)
        try:
            res = processing.process_images(pc)
        except Exception as e:
            errors.display(e, "generating image for xyz plot")
            res = processing.Processed(p, [], p.seed, "")
        results.append(res)
    return results


class Script(scripts.Script):
    """Mirrors xyz_grid.Script: a selectable script ('X/Y/Z plot'); the stand-in has one axis (X)."""

    def title(self) -> str:
        """Mirrors Script.title."""
        return "X/Y/Z plot"

    def ui(self, is_img2img: bool) -> list:
        """A reduced UI: X type (index into current_axis_options) and X values."""
        self.current_axis_options = current_axis_options(is_img2img)
        x_type = gr.Dropdown(
            label="X type",
            choices=[x.label for x in self.current_axis_options],
            value="Nothing",
            type="index",
            elem_id=self.elem_id("x_type"),
        )
        x_values = gr.Textbox(label="X values", lines=1, elem_id=self.elem_id("x_values"))
        return [x_type, x_values]

    def run(self, p: Any, x_type: int, x_values: str) -> processing.Processed:
        """Mirrors Script.run: fix_seed, build the axis values, run the cells; returns the first cell's Processed
        with every cell's images/infotexts appended (no grid image is drawn)."""
        processing.fix_seed(p)
        opt = self.current_axis_options[x_type or 0]
        cells = run_cells(p, opt, process_axis(p, opt, x_values))
        out = processing.Processed(p, [], p.seed, cells[0].info if cells else "")
        for c in cells:
            out.images += c.images
            out.infotexts += c.infotexts
        return out
