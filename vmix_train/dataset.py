"""The training dataset: images, a caption each and a yes/no per aesthetic dimension, checked before training.

Layout (documented in docs/dataset-format.md): a folder of images plus ``metadata.jsonl``, one JSON object per
line: ``{"file_name": "a.png", "caption": "…", "labels": {"lighting": true, "color": false}}``. ``labels`` may
also be a list of the dimensions that are "yes"; a dimension that is not mentioned counts as "no".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vmix_train.images import upright_size

METADATA = "metadata.jsonl"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
_SHOWN = 20


class DatasetError(ValueError):
    """Every problem found in a dataset, in one list, so a user can fix them all before training starts."""

    def __init__(self, folder: str | Path, problems: list[str]) -> None:
        self.folder = str(folder)
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:_SHOWN])
        more = f"\n  … and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        super().__init__(f"dataset '{folder}' has {len(problems)} problem(s); nothing was trained:\n{shown}{more}")


@dataclass(frozen=True)
class Example:
    image: Path
    caption: str
    labels: tuple[float, ...]  # 1.0 = yes, 0.0 = no, in the order of the run's dimensions
    size: tuple[int, int] = (0, 0)  # (width, height) as shown (EXIF orientation applied); (0, 0) = not read yet


def load_dataset(folder: str | Path, dimensions: Sequence[str]) -> list[Example]:
    """Read ``metadata.jsonl`` and check every entry and image; raise one DatasetError listing all problems."""
    folder = Path(folder)
    metadata = folder / METADATA
    if not metadata.is_file():
        raise DatasetError(folder, [f"{METADATA} is missing (see docs/dataset-format.md)"])
    problems: list[str] = []
    examples: list[Example] = []
    listed: set[str] = set()
    try:
        text = metadata.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(folder, [f"{METADATA} is not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except OSError as exc:
        raise DatasetError(folder, [f"{METADATA} cannot be read ({exc.strerror or exc})"]) from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{METADATA} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a JSON object")
            continue
        example = _example(folder, entry, dimensions, where, listed, problems)
        if example is not None:
            examples.append(example)
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.name not in listed:
            problems.append(f"{path.name}: an image with no entry in {METADATA} (add one, or move it out)")
    if not examples and not problems:
        problems.append(f"{METADATA} lists no images")
    if problems:
        raise DatasetError(folder, problems)
    return examples


def _example(
    folder: Path, entry: dict, dimensions: Sequence[str], where: str, listed: set[str], problems: list[str]
) -> Example | None:
    name = entry.get("file_name")
    if not isinstance(name, str) or not name:
        problems.append(f"{where}: no file_name")
        return None
    if name in listed:
        problems.append(f"{where}: {name} is listed twice")
        return None
    listed.add(name)
    found = len(problems)
    caption = entry.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        problems.append(f"{name}: missing caption")
    labels = _labels(name, entry.get("labels", {}), dimensions, problems)
    path = folder / name
    size = (0, 0)
    if not path.is_file():
        problems.append(f"{name}: file not found")
    else:
        try:
            with Image.open(path) as image:
                image.verify()  # must come first: it needs the file as just opened
            with Image.open(path) as image:
                size = upright_size(image)
        except Image.DecompressionBombError as exc:
            problems.append(f"{name}: too large to train on ({exc})")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            problems.append(f"{name}: unreadable image ({exc})")
    if len(problems) > found:
        return None
    return Example(path, caption.strip(), labels, size)


def _labels(name: str, raw: object, dimensions: Sequence[str], problems: list[str]) -> tuple[float, ...]:
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        raw = dict.fromkeys(raw, True)
    if not isinstance(raw, dict) or not all(isinstance(value, bool) for value in raw.values()):
        problems.append(f"{name}: labels must map dimension names to true/false, or list the dimensions that apply")
        return ()
    unknown = sorted(set(raw) - set(dimensions))
    if unknown:
        problems.append(f"{name}: unknown dimension name(s) {unknown}; the config defines {list(dimensions)}")
    return tuple(1.0 if raw.get(dim, False) else 0.0 for dim in dimensions)
