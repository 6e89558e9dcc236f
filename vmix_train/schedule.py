"""The learning rate as a function of the step: a linear warm-up, then constant, linear or cosine decay.

A pure function of the step (no scheduler object with state of its own), so a resumed run uses exactly the rates
the killed one would have, and the schedule can be read off the config.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The factor on the base learning rate for update number ``step`` (0 for the first of ``total``).

    Warm-up: (step + 1) / warmup for the first ``warmup`` updates. Then, with p = (step − warmup) / (total − warmup)
    going from 0 towards 1: constant 1, linear 1 − p, cosine (1 + cos πp) / 2. The last update's rate is small but
    not zero.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; one of {SCHEDULES}")
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0
