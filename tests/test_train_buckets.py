"""Aspect-ratio buckets: the bucket list, each image's bucket and crop, and the order of the steps (one bucket per
step, every image once per epoch, reproducible, the same split for 1 and 2 processes)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from vmix_train.buckets import Bucket, BucketSettings, StepPlan, make_buckets, nearest_bucket, place


def settings(**changes) -> BucketSettings:
    values = {"enabled": True, "resolution": 512, "step": 64, "min_side": 256, "max_side": 1024, "max_aspect": 2.0}
    return BucketSettings(**(values | changes))


def test_sd15_buckets_fill_the_area_in_64_px_steps():
    buckets = make_buckets(settings())
    sizes = [(b.width, b.height) for b in buckets]
    # For each width the tallest height in 64-px steps with width × height ≤ 512², both ways round, ≤ 2:1.
    assert sizes == [(384, 640), (448, 576), (512, 512), (576, 448), (640, 384)]
    for b in buckets:
        assert b.width % 64 == 0 and b.height % 64 == 0
        assert b.width * b.height <= 512 * 512
        assert max(b.width, b.height) / min(b.width, b.height) <= 2
        assert (b.width + 64) * b.height > 512 * 512 or b.width * (b.height + 64) > 512 * 512  # as large as fits


def test_bounds_and_the_square_switch():
    wide = make_buckets(settings(max_aspect=4.0))
    assert Bucket(256, 1024) in wide and Bucket(1024, 256) in wide
    assert all(256 <= side <= 1024 for b in wide for side in (b.width, b.height))
    assert make_buckets(settings(enabled=False)) == [Bucket(512, 512)]
    assert make_buckets(settings(resolution=16, step=64, min_side=64, max_side=32)) == []  # nothing fits


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1000, 1000), (512, 512)),
        ((1920, 1080), (640, 384)),  # 16:9 → the widest (5:3)
        ((1080, 1920), (384, 640)),
        ((800, 600), (576, 448)),  # 4:3 → 9:7
        ((600, 800), (448, 576)),
        ((5000, 100), (640, 384)),  # beyond every bucket: the nearest end
    ],
)
def test_each_image_goes_to_the_bucket_of_the_nearest_aspect_ratio(size, expected):
    buckets = make_buckets(settings())
    chosen = nearest_bucket(buckets, *size)
    assert (chosen.width, chosen.height) == expected
    distance = abs(math.log(chosen.width / chosen.height) - math.log(size[0] / size[1]))
    assert all(distance <= abs(math.log(b.width / b.height) - math.log(size[0] / size[1])) + 1e-12 for b in buckets)


def test_placement_covers_the_bucket_and_cuts_the_centre():
    placement = place(1920, 1080, Bucket(640, 384))
    # scale = max(640/1920, 384/1080) = 0.3556: 683 × 384, 21 columns cut on the left
    assert placement.resized == (683, 384) and placement.crop == (0, 21)
    assert placement.time_ids == (1080, 1920, 0, 21, 384, 640)  # original h, w; crop top, left; target h, w
    tall = place(300, 1000, Bucket(384, 640))
    assert tall.resized == (384, 1280) and tall.crop == ((1280 - 640) // 2, 0)
    square = place(20, 16, Bucket(16, 16))  # as the trainer always did: the shorter side to 16, the centre
    assert square.resized == (20, 16) and square.crop == (0, 2)


def plan_for(sizes, global_batch, seed=0):
    buckets = make_buckets(settings())
    number = {b: n for n, b in enumerate(buckets)}
    bucket_of = [number[nearest_bucket(buckets, *size)] for size in sizes]
    return StepPlan(bucket_of, len(buckets), global_batch, seed), bucket_of


SIZES = [(1000, 1000)] * 7 + [(1920, 1080)] * 5 + [(800, 600)] * 2 + [(1080, 1920)]


def test_steps_never_mix_buckets_and_an_epoch_shows_every_image():
    plan, bucket_of = plan_for(SIZES, global_batch=4)
    # 7, 5, 2, 1 images: 2 + 2 + 1 + 1 steps of 4
    assert plan.steps_per_epoch == 6
    for epoch in range(3):
        seen = Counter()
        for step in range(epoch * 6, (epoch + 1) * 6):
            bucket, members = plan.step(step)
            assert len(members) == 4
            assert {bucket_of[i] for i in members} == {bucket}
            seen.update(members)
        assert set(seen) == set(range(len(SIZES)))  # every image in every epoch
        # a bucket's last step is filled up with its first images: at most one extra round per bucket
        for index, count in seen.items():
            assert count <= math.ceil(4 / Counter(bucket_of)[bucket_of[index]]) + 1
    assert plan.repeated() == sorted({bucket_of[12], bucket_of[14]})  # the buckets of 2 and of 1 image


def test_the_order_follows_the_seed_and_is_the_same_however_often_it_is_asked():
    first, _ = plan_for(SIZES, 4, seed=3)
    again, _ = plan_for(SIZES, 4, seed=3)
    other, _ = plan_for(SIZES, 4, seed=4)
    steps = range(20)
    assert [first.step(s) for s in steps] == [again.step(s) for s in reversed(steps)][::-1]
    assert [first.step(s) for s in steps] != [other.step(s) for s in steps]
    assert [first.step(s) for s in range(6)] != [first.step(s) for s in range(6, 12)]  # each epoch reshuffled


def test_one_and_two_processes_split_the_same_global_batch(tmp_path):
    """TrainingData.items: 1 process × batch 4 and 2 processes × batch 2 (or 1 process × batch 2 × 2
    micro-batches) cover the same (position, image) pairs at every step."""
    from types import SimpleNamespace

    from vmix_train.data import TrainingData
    from vmix_train.distributed import World

    plan, _ = plan_for(SIZES, 4, seed=1)

    def items(world, batch, accumulation, step):
        data = SimpleNamespace(plan=plan, world=world, global_batch=4)
        return [i for micro in range(accumulation) for i in TrainingData.items(data, step, micro, batch)]

    for step in range(12):
        one = items(World(), 4, 1, step)
        accumulated = items(World(), 2, 2, step)
        two = items(World(0, 2), 2, 1, step) + items(World(1, 2), 2, 1, step)
        assert one == accumulated == two
        assert [position for position, _ in one] == list(range(4 * step, 4 * step + 4))
