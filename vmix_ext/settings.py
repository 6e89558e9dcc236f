"""The one vocabulary for VMix parameters: UI element ids, API keys, infotext keys and X/Y/Z axes.

Every host path builds a ``VMixSettings`` from what it received (UI values, an API request, pasted infotext, an
X/Y/Z cell) and hands only that object to the core.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

SCALE_MIN = 0.0
SCALE_MAX = 2.0
SCALE_STEP = 0.05

# Infotext keys. "VMix adapter" doubles as the enable switch: pasted text without it turns VMix off.
INFOTEXT_KEYS: dict[str, str] = {
    "adapter": "VMix adapter",
    "scale": "VMix scale",
    "dimensions": "VMix dims",
    "cond_only": "VMix cond only",
    "start": "VMix start",
    "end": "VMix end",
    "input_scale": "VMix input scale",
    "middle_scale": "VMix middle scale",
    "output_scale": "VMix output scale",
    "passes": "VMix passes",
    "hires_scale": "VMix hires scale",
}
# Keys added after the first release: written only when they differ from the default, so infotext without them
# (every image made before) keeps its meaning, and so do API requests that do not name them.
OPTIONAL_KEYS = ("input_scale", "middle_scale", "output_scale", "passes", "hires_scale")
PASSES = ("both", "first", "hires")  # which sampling passes VMix applies to: all, the first only, hires fix only
BLOCK_SCALE_MAX = 2.0
INFOTEXT_HASH = "VMix hash"
# Never written: the paste step derives it from the presence of "VMix adapter", so each control has a plain key.
INFOTEXT_ENABLED = "VMix enabled"
INFOTEXT_ERROR = "VMix error"

LABELS: dict[str, str] = {
    "enabled": "Enable VMix",
    "adapter": "VMix adapter",
    "scale": "Scale (λ)",
    "dimensions": "Aesthetic dimensions",
    "cond_only": "Conditional rows only",
    "start": "Start at step fraction",
    "end": "End at step fraction",
    "input_scale": "Input blocks ×",
    "middle_scale": "Middle block ×",
    "output_scale": "Output blocks ×",
    "passes": "Apply on",
    "hires_scale": "Hires pass λ (-1: same)",
    "strength": "Strength of {}",
}
PASS_LABELS = {"both": "both passes", "first": "first pass", "hires": "hires pass"}


class SettingsError(ValueError):
    """A VMix parameter that cannot be used; the message names the parameter and what it accepts."""


@dataclass(frozen=True)
class VMixSettings:
    """All VMix parameters of one generation. Field order is the positional order of the API's ``args`` list.

    ``dimensions`` holds the names of the dimensions that are on, each optionally with a strength in [0, 1] as
    ``"name:0.5"``; None means every dimension of the adapter is on (the paper's default at inference).
    ``input_scale`` / ``middle_scale`` / ``output_scale`` multiply λ in those parts of the UNet; ``passes`` says
    whether VMix applies to the first pass, the hires-fix pass or both; ``hires_scale`` is λ for the hires pass
    (None: the same λ).
    """

    enabled: bool = False
    adapter: str = ""
    scale: float = 1.0
    dimensions: tuple[str, ...] | None = None
    cond_only: bool = False
    start: float = 0.0
    end: float = 1.0
    input_scale: float = 1.0
    middle_scale: float = 1.0
    output_scale: float = 1.0
    passes: str = "both"
    hires_scale: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "enabled", _as_bool("enabled", self.enabled))
        object.__setattr__(self, "cond_only", _as_bool("cond_only", self.cond_only))
        object.__setattr__(self, "adapter", _as_adapter_name(self.adapter))
        object.__setattr__(self, "scale", _as_float("scale", self.scale, SCALE_MIN, SCALE_MAX))
        object.__setattr__(self, "start", _as_float("start", self.start, 0.0, 1.0))
        object.__setattr__(self, "end", _as_float("end", self.end, 0.0, 1.0))
        object.__setattr__(self, "dimensions", parse_dimensions(self.dimensions))
        for name in ("input_scale", "middle_scale", "output_scale"):
            object.__setattr__(self, name, _as_float(name, getattr(self, name), 0.0, BLOCK_SCALE_MAX))
        object.__setattr__(self, "passes", _as_choice("passes", self.passes, PASSES))
        object.__setattr__(self, "hires_scale", _as_optional_scale(self.hires_scale))
        if self.start >= self.end:
            raise SettingsError(f"VMix 'start' ({self.start}) must be smaller than 'end' ({self.end})")

    # -- building -----------------------------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_args(cls, args: Sequence[Any]) -> VMixSettings:
        """From the script's positional args (UI order), or from one dict in place of them (the API's friendly form).

        The host pads a short API list with the UI defaults, so after a dict in the first place the rest is padding;
        keys missing from the dict take this class's defaults (every dimension on), not the UI's.
        """
        if len(args) >= 1 and isinstance(args[0], Mapping):
            return cls.from_dict(args[0])
        names = cls.field_names()
        if len(args) > len(names):
            raise SettingsError(f"VMix takes at most {len(names)} args ({', '.join(names)}), got {len(args)}")
        return cls(**dict(zip(names, args, strict=False)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> VMixSettings:
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise SettingsError(f"unknown VMix key(s) {unknown}; known keys: {', '.join(cls.field_names())}")
        return cls(**values)

    def with_overrides(self, overrides: Mapping[str, Any]) -> VMixSettings:
        """A copy with some fields replaced (X/Y/Z cells set attributes on ``p`` that land here)."""
        return replace(self, **overrides) if overrides else self

    def as_args(self) -> list[Any]:
        return [getattr(self, name) for name in self.field_names()]

    # -- dimensions ---------------------------------------------------------------------------------------------

    def strengths(self, adapter_dimensions: Sequence[str]) -> dict[str, float]:
        """Strength of each of the adapter's dimensions; names the adapter lacks are an error that lists its own."""
        if self.dimensions is None:
            return dict.fromkeys(adapter_dimensions, 1.0)
        chosen = dict(split_dimension(item) for item in self.dimensions)
        unknown = [name for name in chosen if name not in adapter_dimensions]
        if unknown:
            raise SettingsError(
                f"dimension(s) {', '.join(unknown)} not in this adapter; it has: {', '.join(adapter_dimensions)}"
            )
        return {name: chosen.get(name, 0.0) for name in adapter_dimensions}

    # -- infotext -----------------------------------------------------------------------------------------------

    def to_infotext(self, adapter_hash: str | None = None) -> dict[str, Any]:
        """The infotext entries of an enabled generation (nothing is written when VMix is off)."""
        if not self.enabled:
            return {}
        entries: dict[str, Any] = {INFOTEXT_KEYS["adapter"]: self.adapter}
        if adapter_hash:
            entries[INFOTEXT_HASH] = adapter_hash
        entries[INFOTEXT_KEYS["scale"]] = _format_number(self.scale)
        entries[INFOTEXT_KEYS["dimensions"]] = _dimensions_text(self.dimensions)
        entries[INFOTEXT_KEYS["cond_only"]] = self.cond_only
        entries[INFOTEXT_KEYS["start"]] = _format_number(self.start)
        entries[INFOTEXT_KEYS["end"]] = _format_number(self.end)
        defaults = VMixSettings()
        for name in OPTIONAL_KEYS:
            value = getattr(self, name)
            if value != getattr(defaults, name):
                entries[INFOTEXT_KEYS[name]] = _format_number(value) if isinstance(value, float) else value
        return entries

    @property
    def blocks(self) -> tuple[float, float, float]:
        return (self.input_scale, self.middle_scale, self.output_scale)

    def applies_to(self, hires_pass: bool) -> bool:
        return self.passes == "both" or self.passes == ("hires" if hires_pass else "first")

    def scale_for(self, hires_pass: bool) -> float:
        return self.hires_scale if hires_pass and self.hires_scale is not None else self.scale

    @classmethod
    def from_infotext(cls, params: Mapping[str, Any]) -> VMixSettings:
        """The settings a pasted infotext describes: VMix off when it has no ``VMix adapter`` entry."""
        if INFOTEXT_KEYS["adapter"] not in params:
            return cls()
        values: dict[str, Any] = {"enabled": True}
        for name, key in INFOTEXT_KEYS.items():
            if key in params:
                values[name] = params[key]
        dims = str(values.get("dimensions", "")).strip()
        if dims in ("all", "none"):
            values["dimensions"] = None if dims == "all" else ()
        return cls(**values)


def elem_id(field_name: str, tab: str) -> str:
    """Element id of a UI control: unique per tab, stable for the JavaScript and for users' CSS."""
    return f"{tab}_vmix_{field_name}"


def parse_dimensions(value: Any) -> tuple[str, ...] | None:
    """None stays None (all on); a comma-separated string or a list of names becomes a tuple of items."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [part for part in value.split(",")]
    if not isinstance(value, Sequence):
        raise SettingsError(f"VMix 'dimensions' must be a list of names or a comma-separated string, got {value!r}")
    items = []
    for item in value:
        if not isinstance(item, str):
            raise SettingsError(f"VMix 'dimensions' must contain names (strings), got {item!r}")
        item = item.strip()
        if item:
            name, strength = split_dimension(item)
            items.append(name if strength == 1.0 else f"{name}:{_format_number(strength)}")
    return tuple(items)


def split_dimension(item: str) -> tuple[str, float]:
    """``"lighting"`` -> ("lighting", 1.0); ``"lighting:0.5"`` -> ("lighting", 0.5)."""
    name, sep, strength = item.partition(":")
    name = name.strip()
    if not name:
        raise SettingsError(f"VMix dimension {item!r} has no name")
    if not sep:
        return name, 1.0
    what = f"the strength of VMix dimension '{name}'"
    return name, _as_float(name, strength.strip(), 0.0, 1.0, what=what)


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
        return value.strip().lower() in {"true", "1", "yes", "on"}
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise SettingsError(f"VMix '{name}' must be true or false, got {value!r}")


def _as_float(name: str, value: Any, low: float, high: float, what: str | None = None) -> float:
    """``what`` names the value in the message when it is not a plain parameter ("VMix 'scale'")."""
    what = what or f"VMix '{name}'"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{what} must be a number from {low} to {high}, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or not low <= number <= high:
        raise SettingsError(f"{what} must be a number from {low} to {high}, got {value!r}")
    return number


def _as_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    text = str(value).strip().lower() if isinstance(value, str) else value
    if text not in choices:
        raise SettingsError(f"VMix '{name}' must be one of {', '.join(choices)}, got {value!r}")
    return text


def _as_optional_scale(value: Any) -> float | None:
    """None, "" or a negative number (the UI's -1) mean "the same λ as the first pass"."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "same")):
        return None
    number = _as_float("hires_scale", value, -1.0, SCALE_MAX)
    return None if number < 0 else number


def _as_adapter_name(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SettingsError(f"VMix 'adapter' must be an adapter name (a string), got {value!r}")
    return value.strip()


def _dimensions_text(dimensions: tuple[str, ...] | None) -> str:
    # Words rather than an empty value, so the entry survives every infotext writer and reader.
    if dimensions is None:
        return "all"
    return ", ".join(dimensions) if dimensions else "none"


def _format_number(value: float) -> str:
    return f"{value:g}"
