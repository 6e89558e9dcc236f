"""Decoding training images: each one turned upright (EXIF orientation), resized to cover its bucket and cut to it.

Decoding is the slow part of the data path, so it runs in DataLoader worker processes (``num_workers``). Nothing in
it is random: the crop is the centre, and every random choice is made in the main process from (seed, position), so
any number of workers gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageOps

from vmix_train.buckets import Placement

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
    """RGB in [-1, 1], (3, bucket height, bucket width)."""
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    if upright.size != placement.original:
        raise ValueError(f"{path}: the image is {upright.size} now, {placement.original} when the run was planned")
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

    def __getitem__(self, item: tuple[object, int]) -> tuple[object, int, torch.Tensor]:
        tag, index = item
        return tag, index, load_placed(self.paths[index], self.placements[index])


def collate(items: list[tuple[object, int, torch.Tensor]]) -> tuple[object, list[int], torch.Tensor]:
    """One batch: its tag (all items share it), the example indices and the stacked pixels."""
    tags = {repr(tag) for tag, _, _ in items}
    if len(tags) != 1:
        raise ValueError(f"a batch mixes items of {sorted(tags)}")
    return items[0][0], [index for _, index, _ in items], torch.stack([pixels for _, _, pixels in items])
