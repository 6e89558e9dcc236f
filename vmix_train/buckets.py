"""Aspect-ratio buckets and the order of the run's optimizer steps.

Buckets: every (width, height) in ``step``-pixel steps whose area is at most the run's ``resolution``², the side not
exceeding the bounds, at most ``max_aspect`` long; for each width the tallest height that fits, and the same shapes
turned by 90°. An image goes to the bucket whose aspect ratio is nearest to its own (on a log scale, so 2:1 and 1:2
are equally far from 1:1), is resized to cover it and has the centre cut out. With bucketing off there is one
bucket, the ``resolution`` square, and every image is centre-cropped to it as before.

Order: every optimizer step trains on one bucket, and all its images (the whole global batch, on every process and
in every micro-batch) come from that bucket, so any split of the global batch over processes and micro-batches sees
the same images: 2 processes with batch b train exactly what 1 process with batch 2b does. In each epoch every
bucket's images are shuffled and cut into groups of one global batch (the last group of a bucket is filled up with
its first images again), and the groups are shuffled; both shuffles are seeded by (seed, epoch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vmix_train.streams import stream


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Placement:
    """How one image becomes a training image of its bucket: resized to ``resized`` (width, height), which covers the
    bucket, then the bucket's size cut out at ``crop`` (top, left) of the resized image."""

    bucket: Bucket
    original: tuple[int, int]  # (width, height), after the EXIF orientation
    resized: tuple[int, int]  # (width, height)
    crop: tuple[int, int]  # (top, left)

    @property
    def time_ids(self) -> tuple[int, int, int, int, int, int]:
        """SDXL's size conditioning: original (height, width), crop corner (top, left), target (height, width), as
        sgm's original_size_as_tuple, crop_coords_top_left and target_size_as_tuple (diffusers' time_ids)."""
        width, height = self.original
        top, left = self.crop
        return (height, width, top, left, self.bucket.height, self.bucket.width)


@dataclass(frozen=True)
class BucketSettings:
    """The run's bucketing options, resolved (no 0 = "default" left)."""

    enabled: bool
    resolution: int
    step: int
    min_side: int
    max_side: int
    max_aspect: float


def make_buckets(settings: BucketSettings) -> list[Bucket]:
    """The run's buckets, sorted by width; one square when bucketing is off. Empty when none fits the bounds."""
    if not settings.enabled:
        return [Bucket(settings.resolution, settings.resolution)]
    area, step = settings.resolution**2, settings.step
    found: set[Bucket] = set()
    width = step * max(1, math.ceil(settings.min_side / step))
    while width <= settings.max_side:
        height = min(settings.max_side, area // width // step * step)
        if height >= settings.min_side and max(width, height) / min(width, height) <= settings.max_aspect + 1e-9:
            found.update({Bucket(width, height), Bucket(height, width)})
        width += step
    return sorted(found)


def nearest_bucket(buckets: Sequence[Bucket], width: int, height: int) -> Bucket:
    """The bucket whose aspect ratio is nearest the image's on a log scale; ties go to the larger area."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b.width / b.height) - aspect), -b.width * b.height, b.width))


def place(width: int, height: int, bucket: Bucket) -> Placement:
    """Resize (width, height) to cover the bucket with the aspect ratio kept, and centre the cut."""
    scale = max(bucket.width / width, bucket.height / height)
    resized = (max(bucket.width, round(width * scale)), max(bucket.height, round(height * scale)))
    crop = ((resized[1] - bucket.height) // 2, (resized[0] - bucket.width) // 2)
    return Placement(bucket, (width, height), resized, crop)


class StepPlan:
    """Which images every optimizer step trains on: ``step(s)`` is the bucket and the global batch's example indices,
    a function of (seed, s) only. Holds one epoch's order at a time (a list of indices)."""

    def __init__(self, bucket_of: Sequence[int], bucket_count: int, global_batch: int, seed: int) -> None:
        self.members: list[list[int]] = [[] for _ in range(bucket_count)]
        for index, bucket in enumerate(bucket_of):
            self.members[bucket].append(index)
        self.global_batch = global_batch
        self.seed = seed
        self.steps_per_epoch = sum(math.ceil(len(m) / global_batch) for m in self.members)
        if self.steps_per_epoch == 0:
            raise ValueError("no images to plan")
        self._epoch: tuple[int, list[tuple[int, list[int]]]] | None = None

    def epoch(self, epoch: int) -> list[tuple[int, list[int]]]:
        """The epoch's steps in order, each as (bucket number, example indices)."""
        if self._epoch is not None and self._epoch[0] == epoch:
            return self._epoch[1]
        generator = stream(self.seed, "order", epoch)
        groups: list[tuple[int, list[int]]] = []
        size = self.global_batch
        for bucket, members in enumerate(self.members):
            if not members:
                continue
            order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
            filled = math.ceil(len(order) / size) * size
            order = [order[i % len(order)] for i in range(filled)]  # the last group filled up with the first
            groups.extend((bucket, order[start : start + size]) for start in range(0, filled, size))
        shuffled = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
        self._epoch = (epoch, shuffled)
        return shuffled

    def step(self, step: int) -> tuple[int, list[int]]:
        epoch, offset = divmod(step, self.steps_per_epoch)
        return self.epoch(epoch)[offset]

    def repeated(self) -> list[int]:
        """The buckets with fewer images than a global batch (their steps repeat images)."""
        return [b for b, members in enumerate(self.members) if 0 < len(members) < self.global_batch]
