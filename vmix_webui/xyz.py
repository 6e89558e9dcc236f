"""VMix's axes in the host's built-in X/Y/Z plot script.

Axis values are set on a copy of ``p`` before ``process`` runs, as ``p.vmix_<field>``; the script prefers them over
the UI values (``settings_for``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from modules import scripts

from vmix_ext.settings import LABELS, PASSES, VMixSettings, parse_dimensions

from .adapters import library
from .ui import dimension_names

XYZ_ATTRIBUTE = "vmix_{}"
BLOCK_FIELDS = ("input_scale", "middle_scale", "output_scale")
_PREFIX = "[VMix] "


def settings_for(p: Any, args: Sequence[Any], strengths: Sequence[Any] = ()) -> VMixSettings:
    """UI (or API) values, with the UI's per-dimension strength sliders folded into the dimensions, and any X/Y/Z
    cell values that were set on this copy of ``p``."""
    settings = with_slider_strengths(VMixSettings.from_args(args), strengths)
    overrides = {}
    for name in VMixSettings.field_names():
        attribute = XYZ_ATTRIBUTE.format(name)
        if hasattr(p, attribute):
            overrides[name] = getattr(p, attribute)
    return settings.with_overrides(overrides)


def xyz_dimensions(cell: str) -> tuple[str, ...] | None:
    """One X/Y/Z cell: ``color+focus``, ``all`` or ``none`` (cells themselves are separated by commas)."""
    cell = cell.strip()
    if cell == "all":
        return None
    if cell == "none":
        return ()
    return parse_dimensions(cell.replace("+", ","))


def _setter(field: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[Any, Any, Any], None]:
    def apply(p: Any, value: Any, _values: Any) -> None:
        setattr(p, XYZ_ATTRIBUTE.format(field), convert(value))

    return apply


def add_axes() -> None:
    """From ``on_before_ui``: find the X/Y/Z script's module and add VMix's axes once (it runs again on Reload UI)."""
    module = next((data.module for data in scripts.scripts_data if data.script_class.__module__ == "xyz_grid.py"), None)
    if module is None:
        return
    if any(getattr(option, "label", "").startswith(_PREFIX) for option in module.axis_options):
        return
    module.axis_options.extend(
        [
            module.AxisOption(_PREFIX + LABELS["scale"], float, _setter("scale")),
            module.AxisOption(
                _PREFIX + "Enabled", str, _setter("enabled", lambda v: v == "True"), choices=lambda: ["True", "False"]
            ),
            module.AxisOption(_PREFIX + "Adapter", str, _setter("adapter"), choices=lambda: library().names()),
            module.AxisOption(_PREFIX + "Dimensions (a+b, all, none)", str, _setter("dimensions", xyz_dimensions)),
            *(module.AxisOption(_PREFIX + LABELS[f], float, _setter(f)) for f in BLOCK_FIELDS),
            module.AxisOption(_PREFIX + LABELS["passes"], str, _setter("passes"), choices=lambda: list(PASSES)),
            module.AxisOption(_PREFIX + LABELS["hires_scale"], float, _setter("hires_scale")),
        ]
    )


def with_slider_strengths(settings: VMixSettings, strengths: Sequence[Any]) -> VMixSettings:
    """The UI's strength sliders (one per dimension of the chosen adapter, in the adapter's order; 1 when unused,
    which is also what the API's padding gives) become ``name:strength`` items of the ticked dimensions. An item
    that already names its strength (pasted or typed ``name:0.5``) keeps it."""
    if not strengths or settings.dimensions is None or not settings.adapter:
        return settings
    order = dimension_names(settings.adapter)
    chosen = []
    for item in settings.dimensions:
        name, _, strength = item.partition(":")
        slider = strengths[order.index(name)] if name in order and order.index(name) < len(strengths) else 1.0
        if not strength and slider is not None and float(slider) != 1.0:
            item = f"{name}:{float(slider):g}"
        chosen.append(item)
    return settings.with_overrides({"dimensions": tuple(chosen)})
