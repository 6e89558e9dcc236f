"""What the labeller reads before any model is loaded: the images (subfolders too), their captions (kohya-style
sidecar files or an existing ``metadata.jsonl``), existing labels and a hand-labelled calibration set.

Every problem is collected into one list (``LabelError``), the way the dataset check reports them, so a user fixes
them all before a model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vmix_train.dataset import IMAGE_SUFFIXES, METADATA

_SHOWN = 20


class LabelError(ValueError):
    """Every problem found before (or while) labelling, in one list; nothing was written."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:_SHOWN])
        more = f"\n  … and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        super().__init__(f"labelling found {len(problems)} problem(s); nothing was written:\n{shown}{more}")


@dataclass(frozen=True)
class MetadataEntry:
    """One line of a metadata.jsonl as the labeller uses it: the caption (if any) and the labels it states.

    ``labels`` holds only the dimensions the line decides: all of them for the list form ("these apply, the others
    do not"), only the keys present for the object form (``{"lighting": true}`` says nothing about "color")."""

    caption: str | None
    labels: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageItem:
    """An image to label: its path and its name relative to the images folder (POSIX separators)."""

    path: Path
    name: str


def find_images(root: Path, skip: Iterable[Path] = ()) -> list[ImageItem]:
    """Every image under ``root`` (subfolders included), sorted by name. Hidden folders (the labeller's own cache and
    report live in ``.vmix-label*``) and the folders in ``skip`` (an output folder inside the images) are left out."""
    skipped = {p.resolve() for p in skip}
    seen = {root.resolve()}  # a folder linked into itself is walked once
    found: list[ImageItem] = []

    def walk(folder: Path) -> None:
        for path in sorted(folder.iterdir()):
            if path.is_dir():
                resolved = path.resolve()
                if not path.name.startswith(".") and resolved not in skipped and resolved not in seen:
                    seen.add(resolved)
                    walk(path)
            elif path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                found.append(ImageItem(path, path.relative_to(root).as_posix()))

    walk(root)
    return found


def unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image, or None if it can (header and structure checked, as the dataset
    check does; a fault deeper in the data shows when the image is decoded for embedding)."""
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        return f"unreadable image ({exc})"
    return None


def read_sidecar(image: Path, extension: str) -> tuple[str | None, str | None]:
    """(caption, problem) from the kohya-style caption file next to ``image`` (``a.png`` → ``a.txt``): its first
    non-empty line, as kohya's trainer reads it. (None, None) when there is no such file."""
    sidecar = image.with_suffix(extension)
    if not sidecar.is_file():
        return None, None
    try:
        text = sidecar.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{sidecar.name}: caption file cannot be read as UTF-8 text ({exc.__class__.__name__})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else None), None


def read_metadata(
    path: Path, dimensions: Sequence[str] | None, problems: list[str], where: str = METADATA
) -> dict[str, MetadataEntry]:
    """The entries of a metadata.jsonl (the trainer's dataset format) by file name. Captions may be missing here;
    labels must be well formed and name known dimensions (``dimensions`` None: labels are not read). Problems are
    appended, prefixed with ``where``."""
    entries: dict[str, MetadataEntry] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{where}: cannot be read ({exc.__class__.__name__}: {exc})")
        return entries
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        at = f"{where} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{at}: not valid JSON ({exc.msg})")
            continue
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(f"{at}: must be a JSON object with a file_name")
            continue
        if name in entries:
            problems.append(f"{at}: {name} is listed twice")
            continue
        caption = entry.get("caption")
        caption = caption.strip() if isinstance(caption, str) and caption.strip() else None
        labels = (
            {}
            if dimensions is None
            else _stated_labels(entry.get("labels", {}), dimensions, f"{at} ({name})", problems)
        )
        entries[name] = MetadataEntry(caption, labels)
    return entries


def _stated_labels(raw: object, dimensions: Sequence[str], at: str, problems: list[str]) -> dict[str, bool]:
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        stated = {dim: dim in raw for dim in dimensions}
        named = set(raw)
    elif isinstance(raw, dict) and all(isinstance(value, bool) for value in raw.values()):
        stated = {dim: raw[dim] for dim in dimensions if dim in raw}
        named = set(raw)
    else:
        problems.append(f"{at}: labels must map dimension names to true/false, or list the dimensions that apply")
        return {}
    unknown = sorted(named - set(dimensions))
    if unknown:
        problems.append(f"{at}: unknown dimension name(s) {unknown}; the config defines {list(dimensions)}")
    return stated


@dataclass(frozen=True)
class CalibrationItem:
    path: Path
    labels: dict[str, bool]  # the dimensions this image was labelled for by hand


def read_calibration(path: Path, dimensions: Sequence[str], problems: list[str]) -> list[CalibrationItem]:
    """The hand-labelled images of a calibration metadata.jsonl; ``file_name`` is relative to its folder."""
    if not path.is_file():
        problems.append(f"calibration file {path} does not exist")
        return []
    where = f"calibration {path.name}"
    items: list[CalibrationItem] = []
    for name, entry in read_metadata(path, dimensions, problems, where).items():
        image = path.parent / name
        if not image.is_file():
            problems.append(f"{where}: {name}: file not found (names are relative to {path.parent})")
        elif (why := unreadable(image)) is not None:
            problems.append(f"{where}: {name}: {why}")
        elif entry.labels:
            items.append(CalibrationItem(image, entry.labels))
    if not items and not any(p.startswith(where) for p in problems):
        problems.append(f"{where}: no image in it has a label")
    return items
