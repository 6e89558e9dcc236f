"""How each dimension is labelled: the texts CLIP compares, or the aesthetic score, and how the yes/no cut is chosen.

Sources, later ones winning: the run config's dimensions (name, positive label text), a labelling settings TOML
(``--settings``), then the command line (``--contrast``, ``--threshold``, ``--fraction``,
``--aesthetic-dimension``). Unknown dimension names and bad values are reported, all at once.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser from PyPI (requirements-train.txt)
    import tomli as tomllib

from vmix_ext.adapter import Dimension

CLIP, AESTHETIC = "clip", "aesthetic"
METHODS = (CLIP, AESTHETIC)
# The contrasting text when none is given: a neutral description, so the score asks "does the label text describe
# this image better than a plain 'an image' does?". A negation ("not natural lighting") would be the obvious
# choice, but CLIP barely reads negations: it scores both texts alike. An antonym written by the user is best.
DEFAULT_CONTRAST = "an image"
# The cut when none is given: 0.5 is "the positive text wins"; LAION-Aesthetics' published subsets start at 6.
DEFAULT_THRESHOLD = {CLIP: 0.5, AESTHETIC: 6.0}
_KEYS = {"contrast", "threshold", "fraction", "method"}


@dataclass(frozen=True)
class DimensionRule:
    """How one dimension is labelled. ``threshold`` or ``fraction`` (the share of images labelled yes) when the user
    fixed one; otherwise a calibration set, if it labels this dimension, chooses the threshold, else the default."""

    name: str
    positive: str
    contrast: str = DEFAULT_CONTRAST
    method: str = CLIP
    threshold: float | None = None
    fraction: float | None = None

    @property
    def default_threshold(self) -> float:
        return DEFAULT_THRESHOLD[self.method]


@dataclass(frozen=True)
class CommandLineRules:
    """The per-dimension options of the command line, as ``NAME=VALUE`` texts (threshold: also a bare VALUE for
    every CLIP dimension)."""

    contrast: Sequence[str] = ()
    threshold: Sequence[str] = ()
    fraction: Sequence[str] = ()
    aesthetic_dimension: Sequence[str] = ()


def build_rules(
    dimensions: Sequence[Dimension], settings: Path | None, cli: CommandLineRules, problems: list[str]
) -> list[DimensionRule]:
    """One rule per dimension of the run config, in its order."""
    rules = {d.name: DimensionRule(d.name, d.positive) for d in dimensions}
    known = list(rules)

    def update(name: str, origin: str, **changes: Any) -> None:
        if name not in rules:
            problems.append(f"{origin}: unknown dimension {name!r}; the config defines {known}")
            return
        rules[name] = replace(rules[name], **changes)

    if settings is not None:
        for name, changes, origin in _settings_file(settings, problems):
            update(name, origin, **changes)
    for name, value, origin in _pairs(cli.contrast, "--contrast", problems):
        if value.strip():
            update(name, origin, contrast=value.strip())
        else:
            problems.append(f"{origin}: the contrasting text is empty")
    for name in cli.aesthetic_dimension:
        update(name, f"--aesthetic-dimension {name}", method=AESTHETIC)
    for text in cli.threshold:
        if "=" not in text:  # a bare number: every CLIP dimension
            value = _number(text, f"--threshold {text}", problems)
            if value is not None:
                for rule in list(rules.values()):
                    if rule.method == CLIP:
                        rules[rule.name] = replace(rule, threshold=value, fraction=None)
            continue
        for name, raw, origin in _pairs([text], "--threshold", problems):
            value = _number(raw, origin, problems)
            if value is not None:
                update(name, origin, threshold=value, fraction=None)
    for name, raw, origin in _pairs(cli.fraction, "--fraction", problems):
        value = _fraction(raw, origin, problems)
        if value is not None:
            update(name, origin, fraction=value, threshold=None)
    return [rules[name] for name in known]


def _pairs(texts: Sequence[str], option: str, problems: list[str]) -> list[tuple[str, str, str]]:
    pairs = []
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            problems.append(f"{option} {text!r}: write NAME=VALUE, e.g. {option} lighting=…")
            continue
        pairs.append((name.strip(), value, f"{option} {text}"))
    return pairs


def _number(raw: object, origin: str, problems: list[str]) -> float | None:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(raw, bool) or not math.isfinite(value):
        problems.append(f"{origin}: {raw!r} is not a number")
        return None
    return value


def _fraction(raw: object, origin: str, problems: list[str]) -> float | None:
    value = _number(raw, origin, problems)
    if value is not None and not 0 <= value <= 1:
        problems.append(f"{origin}: a fraction is a share of the images, from 0 to 1, got {value:g}")
        return None
    return value


def _settings_file(path: Path, problems: list[str]) -> list[tuple[str, dict[str, Any], str]]:
    """``[dimensions.NAME]`` tables with contrast, threshold or fraction, and method ("clip" or "aesthetic")."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"settings file {path} does not exist")
        return []
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"settings file {path}: not readable TOML ({exc})")
        return []
    where = f"settings {path.name}"
    unknown = sorted(set(raw) - {"dimensions"})
    if unknown:
        problems.append(f"{where}: unknown section(s) {unknown}; only [dimensions.NAME] tables are read")
    tables = raw.get("dimensions", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        problems.append(f"{where}: write one [dimensions.NAME] table per dimension")
        return []
    out = []
    for name, table in tables.items():
        origin = f"{where} [dimensions.{name}]"
        extra = sorted(set(table) - _KEYS)
        if extra:
            problems.append(f"{origin}: unknown key(s) {extra}; known: {', '.join(sorted(_KEYS))}")
        changes: dict[str, Any] = {}
        if "contrast" in table:
            if isinstance(table["contrast"], str) and table["contrast"].strip():
                changes["contrast"] = table["contrast"].strip()
            else:
                problems.append(f"{origin}: contrast must be a non-empty text")
        if "method" in table:
            if table["method"] in METHODS:
                changes["method"] = table["method"]
            else:
                problems.append(f"{origin}: method must be one of {METHODS}, got {table['method']!r}")
        if "threshold" in table and "fraction" in table:
            problems.append(f"{origin}: give threshold or fraction, not both")
        elif "threshold" in table:
            if (value := _number(table["threshold"], f"{origin} threshold", problems)) is not None:
                changes["threshold"] = value
        elif "fraction" in table:
            if (value := _fraction(table["fraction"], f"{origin} fraction", problems)) is not None:
                changes["fraction"] = value
        out.append((name, changes, origin))
    return out
