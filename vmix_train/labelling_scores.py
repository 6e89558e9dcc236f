"""Scores and cuts: CLIP zero-shot probabilities per dimension, and the threshold that turns a score into yes/no
(fixed, a share of the images, or chosen to agree best with a hand-labelled calibration set).

An image is "yes" for a dimension when its score is at or above the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def zero_shot(image_embeds: torch.Tensor, positive: torch.Tensor, contrast: torch.Tensor, scale: float) -> torch.Tensor:
    """P(positive text | image) against the contrasting text: CLIP's softmax over the two texts with its logit
    scale s, which is sigmoid(s · (cos(image, positive) − cos(image, contrast))). Embeddings are L2-normalised,
    so the dot products are the cosines. 0.5 means both texts fit equally well."""
    margin = image_embeds @ positive - image_embeds @ contrast
    return torch.sigmoid(scale * margin)


def cut_below(scores_high_to_low: Sequence[float], count: int) -> float:
    """A threshold that makes exactly the first ``count`` of the sorted scores "yes" (halfway between the last yes
    and the first no; just above the highest or at the lowest score at either end). Ties keep together: a
    threshold between two equal scores does not exist, so they share a side."""
    values = list(scores_high_to_low)
    if not values:
        return 0.0
    if count <= 0:
        return _just_above(values[0])
    if count >= len(values):
        return values[-1]
    return (values[count - 1] + values[count]) / 2 if values[count - 1] != values[count] else values[count - 1]


def _just_above(value: float) -> float:
    return value + 1e-6 * max(1.0, abs(value))


def threshold_for_fraction(scores: torch.Tensor, fraction: float) -> float:
    """The threshold that labels ``fraction`` of the images yes (rounded to whole images)."""
    ordered = sorted(scores.tolist(), reverse=True)
    return cut_below(ordered, round(fraction * len(ordered)))


def agreement(scores: torch.Tensor, truth: torch.Tensor, threshold: float) -> float:
    """The share of images whose yes/no at ``threshold`` matches the hand label."""
    return float(((scores >= threshold) == truth.bool()).float().mean()) if len(scores) else 0.0


@dataclass(frozen=True)
class Calibration:
    images: int
    yes: int  # hand-labelled yes among them
    threshold: float
    agreement: float  # at ``threshold``
    default_agreement: float  # at the threshold that would have been used without calibration


def calibrate(scores: torch.Tensor, truth: torch.Tensor, fallback: float) -> Calibration:
    """The threshold that agrees best with the hand labels: every cut between two neighbouring scores (and above
    and below them all) is tried; among equally good ones the one nearest ``fallback`` wins (usually the default,
    so that a calibration set that does not discriminate changes little)."""
    ordered = sorted(scores.tolist(), reverse=True)
    candidates = {cut_below(ordered, count) for count in range(len(ordered) + 1)}
    best = max(candidates, key=lambda t: (agreement(scores, truth, t), -abs(t - fallback)))
    return Calibration(
        images=len(scores),
        yes=int(truth.bool().sum()),
        threshold=best,
        agreement=agreement(scores, truth, best),
        default_agreement=agreement(scores, truth, fallback),
    )
