"""Decoding training images: each one turned upright (EXIF orientation), resized to cover its bucket and cut to it.

Decoding is the slow part of the data path, so it runs in DataLoader worker processes (``num_workers``). Nothing in
it is random: the crop is the centre, and every random choice is made in the main process from (seed, position), so
any number of workers gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from vmix_train.buckets import Placement
from vmix_train.errors import TrainingError

_TURNED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_ORIENTATION = 0x0112


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is shown: EXIF orientations 5–8 swap the stored sides."""
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # a damaged EXIF block: the pixels are still fine
        orientation = 1
    width, height = image.size
    return (height, width) if orientation in _TURNED else (width, height)


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return upright_size(image)


def load_placed(path: Path, placement: Placement) -> torch.Tensor:
    """RGB in [-1, 1], (3, bucket height, bucket width); a TrainingError naming the file if it cannot be used (it
    changed or went away since the dataset was checked)."""
    problem = _image_problem(path, placement)
    if problem:
        raise TrainingError(problem)
    return _decode(path, placement)


def _image_problem(path: Path, placement: Placement) -> str | None:
    try:
        with Image.open(path) as image:
            size = upright_size(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"{path}: cannot be read any more ({exc}); was the dataset changed during the run?"
    if size != placement.original:
        return f"{path}: the image is {size} now, {placement.original} when the run started; restart the run"
    return None


def _decode(path: Path, placement: Placement) -> torch.Tensor:
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    resized = upright.resize(placement.resized, Image.Resampling.BICUBIC)
    top, left = placement.crop
    bucket = placement.bucket
    crop = resized.crop((left, top, left + bucket.width, top + bucket.height))
    pixels = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8).reshape(bucket.height, bucket.width, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1


class PlacedImages(torch.utils.data.Dataset):
    """The dataset's images as a torch Dataset for DataLoader workers. Items are (tag, example index): the tag (any
    picklable value, e.g. the step and micro-batch) travels with the pixels so the consumer can check the order."""

    def __init__(self, paths: Sequence[Path], placements: Sequence[Placement]) -> None:
        self.paths = list(paths)
        self.placements = list(placements)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[object, int]) -> tuple[object, int, torch.Tensor | str]:
        """(tag, index, pixels), or the problem as text in place of the pixels: an error raised in a worker would
        reach the training process wrapped in the worker's traceback, a message does not."""
        tag, index = item
        try:
            return tag, index, load_placed(self.paths[index], self.placements[index])
        except TrainingError as exc:
            return tag, index, str(exc)


def collate(items: list[tuple[object, int, torch.Tensor | str]]) -> tuple[object, list[int], torch.Tensor | str]:
    """One batch: its tag (all items share it), the example indices and the stacked pixels, or the items' problems
    as text. It runs in the worker, so problems travel as text and ``unpack`` raises them where the batch is used."""
    problems = [pixels for _, _, pixels in items if isinstance(pixels, str)]
    indices = [index for _, index, _ in items]
    if problems:
        return items[0][0], indices, "; ".join(problems)
    tags = {repr(tag) for tag, _, _ in items}
    if len(tags) != 1:
        raise ValueError(f"a batch mixes items of {sorted(tags)}")
    return items[0][0], indices, torch.stack([p for _, _, p in items if isinstance(p, torch.Tensor)])


def unpack(batch: tuple[object, list[int], torch.Tensor | str]) -> tuple[object, list[int], torch.Tensor]:
    """A collated batch, or its images' problems raised as a TrainingError (one message, no worker traceback)."""
    tag, indices, pixels = batch
    if isinstance(pixels, str):
        raise TrainingError(pixels)
    return tag, indices, pixels
