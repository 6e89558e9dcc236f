"""Writing the labelled dataset in the trainer's format (docs/dataset-format.md): ``metadata.jsonl`` in the dataset
folder, every image listed by its path inside that folder.

Images already inside the dataset folder (labelling in place, or an images folder inside it) are listed where they
are; others are copied (or symbolically linked) into it under their path relative to the images folder. The
written folder is checked with the trainer's own ``load_dataset``; if that fails, the previous ``metadata.jsonl``
is put back.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmix_train.dataset import IMAGE_SUFFIXES, METADATA, DatasetError, load_dataset
from vmix_train.labelling_inputs import LabelError

PREVIOUS_METADATA = "metadata.previous.jsonl"


@dataclass(frozen=True)
class OutputEntry:
    source: Path  # the image as found
    file_name: str  # its name inside the dataset folder
    caption: str
    labels: dict[str, bool]
    copy: bool  # the image is outside the dataset folder: copy or link it in

    def line(self) -> str:
        return json.dumps({"file_name": self.file_name, "caption": self.caption, "labels": self.labels})


def dataset_name(source: Path, name_in_images: str, dataset: Path) -> tuple[str, bool]:
    """(the image's file_name in the dataset, whether it must be copied there)."""
    resolved, folder = source.resolve(), dataset.resolve()
    if resolved.is_relative_to(folder):
        return resolved.relative_to(folder).as_posix(), False
    return name_in_images, True


def stray_images(dataset: Path, listed: Sequence[str]) -> list[str]:
    """Images at the top of the dataset folder that the new metadata.jsonl would not list: the dataset check
    refuses them, so they are reported before anything is written."""
    if not dataset.is_dir():
        return []
    names = set(listed)
    return [
        f"{path.name}: an image in the dataset folder {dataset} that is not part of this labelling "
        "(remove it, or choose an empty --out)"
        for path in sorted(dataset.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and path.name not in names
    ]


def write_dataset(
    dataset: Path, entries: Sequence[OutputEntry], dimensions: Sequence[str], backup: Path, link: bool
) -> int:
    """Copy or link the images that need it, write metadata.jsonl and check it with the trainer's dataset check.
    Returns how many images were copied (or linked) now; unchanged copies from an earlier run are kept."""
    placed = 0
    try:
        dataset.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            if entry.copy and _place(entry.source, dataset / entry.file_name, link):
                placed += 1
        metadata = dataset / METADATA
        previous = metadata.read_bytes() if metadata.is_file() else None
        if previous is not None:
            backup.mkdir(parents=True, exist_ok=True)
            (backup / PREVIOUS_METADATA).write_bytes(previous)
        tmp = metadata.with_name(METADATA + ".tmp")
        tmp.write_text("".join(entry.line() + "\n" for entry in entries), encoding="utf-8")
        os.replace(tmp, metadata)
    except OSError as exc:
        raise LabelError([f"cannot write the dataset in {dataset}: {exc}"]) from None
    try:
        load_dataset(dataset, dimensions)
    except DatasetError as exc:
        if previous is None:
            metadata.unlink()
        else:
            metadata.write_bytes(previous)
        raise LabelError([f"the written dataset fails the trainer's check: {p}" for p in exc.problems]) from None
    return placed


def _place(source: Path, target: Path, link: bool) -> bool:
    """Copy (keeping the modification time) or symlink ``source`` to ``target``; False when already there."""
    if link:
        if target.is_symlink() and target.resolve() == source.resolve():
            return False
    elif target.is_file() and not target.is_symlink():
        a, b = source.stat(), target.stat()
        if a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns:
            return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    if link:
        tmp.symlink_to(source.resolve())
    else:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)
    return True
