"""The paper's three image metrics (Tables 1-3): CLIP score, the LAION aesthetic score and FID.

- **CLIP score** of an image and its prompt: 100 · max(cos(E_image, E_text), 0), the standard definition
  (Hessel et al. 2021 with w = 100, as torchmetrics' CLIPScore), per image.
- **Aesthetic score**: the LAION improved-aesthetic-predictor head on the L2-normalised CLIP ViT-L/14 image
  embedding (``vmix_train.aesthetic``), per image.
- **FID** between a set of generated images and a reference set: torchmetrics' ``FrechetInceptionDistance`` on the
  2048 pool features of FID's Inception-v3 (``vmix_train.inception``), or on any feature network given to it.

Per-image scores are summarised as a mean and its standard error over the images (prompts × seeds); FID is a
statistic of the whole set and has none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from vmix_train.aesthetic import AestheticHead
from vmix_train.clip_models import ClipScorer


class MetricError(ValueError):
    """A metric that cannot be computed with what is installed or given; the message says what to do."""


def require_torchmetrics() -> None:
    """FID is torchmetrics'; say so before hours of generation rather than after."""
    try:
        import torchmetrics.image.fid  # noqa: F401
    except ImportError:
        raise MetricError("FID needs torchmetrics: pip install torchmetrics (it does not install torch)") from None


def check_aesthetic_pair(scorer: ClipScorer, head: AestheticHead) -> None:
    width = getattr(getattr(scorer.model, "config", None), "projection_dim", head.embed_dim)
    if width != head.embed_dim:
        raise MetricError(_width_problem(scorer, head, width))


def _width_problem(scorer: ClipScorer, head: AestheticHead, width: int) -> str:
    return (
        f"the aesthetic head takes {head.embed_dim}-wide CLIP embeddings but CLIP model '{scorer.source}' gives "
        f"{width}-wide ones; the LAION head needs CLIP ViT-L/14 (openai/clip-vit-large-patch14)"
    )


@dataclass(frozen=True)
class Summary:
    """Mean of per-image scores and its standard error (sample standard deviation / √n; NaN for one image)."""

    mean: float
    se: float
    count: int


def summarise(values: Sequence[float] | torch.Tensor) -> Summary:
    data = torch.as_tensor(values, dtype=torch.float64).flatten()
    count = int(data.numel())
    if count == 0:
        return Summary(math.nan, math.nan, 0)
    se = float(data.std(correction=1) / math.sqrt(count)) if count > 1 else math.nan
    return Summary(float(data.mean()), se, count)


def clip_scores(scorer: ClipScorer, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
    """(N,) CLIP scores of each image with its own prompt: 100 · max(cosine similarity, 0)."""
    if len(images) != len(prompts):
        raise ValueError(f"one prompt per image: {len(images)} images, {len(prompts)} prompts")
    cosine = (scorer.image_embeds(images) * scorer.text_embeds(prompts)).sum(-1)
    return 100 * cosine.clamp(min=0)


def aesthetic_scores(scorer: ClipScorer, head: AestheticHead, images: Sequence[Image.Image]) -> torch.Tensor:
    """(N,) LAION aesthetic scores (about 1 to 10)."""
    embeds = scorer.image_embeds(images)
    if embeds.shape[-1] != head.embed_dim:
        raise MetricError(_width_problem(scorer, head, embeds.shape[-1]))
    with torch.no_grad():
        return head(embeds.to(next(head.parameters()).device)).float().cpu()


def uint8_batch(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> (B, 3, H, W) uint8, the input of FID's feature networks."""
    arrays = [torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8) for img in images]
    return torch.stack([a.reshape(img.height, img.width, 3) for a, img in zip(arrays, images, strict=True)]).permute(
        0, 3, 1, 2
    )


class FrechetDistance:
    """FID against one reference set, for many generated sets: the reference statistics are computed once.

    ``features``: a network from uint8 (B, 3, H, W) images to (B, D) features (``vmix_train.inception.FidInception``
    for FID proper). Images are fed in batches of one size, so sets of mixed sizes work.
    """

    def __init__(self, features: nn.Module, device: str | torch.device = "cpu", batch_size: int = 16) -> None:
        require_torchmetrics()
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.metric = FrechetInceptionDistance(feature=features, reset_real_features=False).to(self.device)
        self.reference_count = 0

    def add_reference(self, images: Iterable[Image.Image]) -> None:
        self.reference_count += self._update(images, real=True)

    def distance(self, images: Iterable[Image.Image]) -> float:
        """FID of ``images`` against the reference; NaN when either set has fewer than two images."""
        self.metric.reset()  # the generated set's statistics only; the reference is kept
        count = self._update(images, real=False)
        if count < 2 or self.reference_count < 2:
            return math.nan
        return float(self.metric.compute())

    def _update(self, images: Iterable[Image.Image], real: bool) -> int:
        count = 0
        batch: list[Image.Image] = []
        for image in images:
            if batch and (image.size != batch[0].size or len(batch) == self.batch_size):
                self.metric.update(uint8_batch(batch).to(self.device), real=real)
                count += len(batch)
                batch = []
            batch.append(image)
        if batch:
            self.metric.update(uint8_batch(batch).to(self.device), real=real)
            count += len(batch)
        return count
