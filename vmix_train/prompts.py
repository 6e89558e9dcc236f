"""The sample-prompts file: what the sample grids show, apart from the training captions.

A TOML file (``[data] sample_prompts``) with one ``[[prompt]]`` table per grid row::

    [[prompt]]
    text = "a lighthouse on a cliff at dusk"
    dimensions = ["lighting"]        # the dimensions on (the others off); or {lighting = 1.0, color = 0.5};
                                     #   left out: every dimension on
    negative = "blurry"              # optional, default ""
    seed = 7                         # optional, default: the prompt's number (0, 1, …)
    width = 512                      # optional, default: the run's resolution (multiples of 8)
    height = 768

Each row shows the prompt with VMix off and on (the given dimensions, λ = 1), with the same seed.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser from PyPI (requirements-train.txt)
    import tomli as tomllib

from vmix_train.streams import MAX_SEED, SEED_RANGE

MAX_SIDE = 8192
_KEYS = {"text", "dimensions", "negative", "seed", "width", "height"}


@dataclass(frozen=True)
class SamplePrompt:
    text: str
    strengths: tuple[float, ...]  # one per run dimension, in the config's order: 1 = on, 0 = off
    seed: int
    negative: str = ""
    width: int | None = None  # None = the run's resolution
    height: int | None = None


def read_sample_prompts(path: Path, dimensions: list[str], problems: list[str]) -> tuple[SamplePrompt, ...]:
    """Parse the file; every problem is appended to ``problems`` (prefixed with the file's name)."""
    where = f"sample prompts '{path}'"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"{where} does not exist")
        return ()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{where} cannot be read ({exc})")
        return ()
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{where} is not valid TOML: {exc}")
        return ()
    items = raw.get("prompt")
    extra = sorted(set(raw) - {"prompt"})
    if extra:
        problems.append(f"{where}: unknown key(s) {extra}; write one [[prompt]] table per prompt")
    if not isinstance(items, list) or not items:
        problems.append(f"{where} has no [[prompt]] tables")
        return ()
    prompts = []
    for number, item in enumerate(items):
        prompt = _prompt(item, number, dimensions, f"{where}, prompt {number + 1}", problems)
        if prompt is not None:
            prompts.append(prompt)
    return tuple(prompts)


def _prompt(item: Any, number: int, dimensions: list[str], where: str, problems: list[str]) -> SamplePrompt | None:
    if not isinstance(item, dict):
        problems.append(f"{where} must be a table")
        return None
    found = len(problems)
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}; known: {', '.join(sorted(_KEYS))}")
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        problems.append(f"{where}: text must be a non-empty string")
    negative = item.get("negative", "")
    if not isinstance(negative, str):
        problems.append(f"{where}: negative must be a string")
    seed = item.get("seed", number)
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        problems.append(f"{where}: seed = {seed!r} is out of range ({SEED_RANGE})")
    sides = []
    for key in ("width", "height"):
        value = item.get(key)
        if value is not None and (type(value) is not int or not 8 <= value <= MAX_SIDE or value % 8):
            problems.append(f"{where}: {key} = {value!r} is out of range (a multiple of 8 from 8 to {MAX_SIDE})")
        sides.append(value)
    strengths = _strengths(item.get("dimensions"), dimensions, where, problems)
    if len(problems) > found:
        return None
    return SamplePrompt(text.strip(), strengths, seed, negative, sides[0], sides[1])


def _strengths(raw: Any, dimensions: list[str], where: str, problems: list[str]) -> tuple[float, ...]:
    if raw is None:
        return (1.0,) * len(dimensions)
    if isinstance(raw, list) and all(isinstance(name, str) for name in raw):
        raw = dict.fromkeys(raw, 1.0)
    if not isinstance(raw, dict):
        problems.append(f"{where}: dimensions must list dimension names, or map them to strengths from 0 to 1")
        return ()
    unknown = sorted(set(raw) - set(dimensions))
    if unknown:
        problems.append(f"{where}: unknown dimension name(s) {unknown}; the config defines {dimensions}")
    values = []
    for name in dimensions:
        value = raw.get(name, 0.0)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not 0 <= value <= 1:
            problems.append(f"{where}: dimension {name} = {value!r} is out of range (a number from 0 to 1)")
            value = 0.0
        values.append(float(value))
    return tuple(values)
