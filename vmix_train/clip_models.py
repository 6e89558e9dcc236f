"""A CLIP model for scoring images and texts, loaded offline: labelling (zero-shot per dimension) and evaluation
(CLIP score, the LAION aesthetic predictor's image embedding) share it.

The model comes from a local folder (``save_pretrained`` layout) or from the Hugging Face cache by repository name,
always with ``local_files_only``: nothing is downloaded, and a missing model gets a message saying where to put it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image


class ClipModelError(ValueError):
    """A CLIP model that cannot be loaded; the message names the source and what to do."""


@dataclass
class ClipScorer:
    """transformers' ``CLIPModel`` with its processor; every embedding it returns is L2-normalised."""

    model: Any  # transformers.CLIPModel
    processor: Any  # transformers.CLIPProcessor
    device: torch.device
    source: str

    @torch.no_grad()
    def image_embeds(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, D) projected image embeddings, L2-normalised, float32 on the CPU."""
        pixels = self.processor(images=[img.convert("RGB") for img in images], return_tensors="pt")["pixel_values"]
        dtype = next(self.model.parameters()).dtype
        features = self.model.get_image_features(pixel_values=pixels.to(self.device, dtype))
        return F.normalize(_tensor(features).float(), dim=-1).cpu()

    @torch.no_grad()
    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, D) projected text embeddings, L2-normalised, float32 on the CPU (texts cut to the model's length)."""
        tokens = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        features = self.model.get_text_features(
            input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
        )
        return F.normalize(_tensor(features).float(), dim=-1).cpu()


def load_clip(source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ClipScorer:
    """A CLIP model from a local folder or the Hugging Face cache (e.g. ``openai/clip-vit-large-patch14``)."""
    from transformers import CLIPModel, CLIPProcessor

    text = str(source)
    local = Path(text).expanduser()
    where = str(local) if local.exists() else text
    if local.exists() and not (local / "config.json").is_file():
        raise ClipModelError(f"CLIP model folder {local} has no config.json (a folder written by save_pretrained)")
    try:
        model = CLIPModel.from_pretrained(where, local_files_only=True, torch_dtype=dtype)
        processor = CLIPProcessor.from_pretrained(where, local_files_only=True)
    except OSError as exc:
        raise ClipModelError(
            f"CLIP model '{text}' is neither a local folder nor in the Hugging Face cache; download it once "
            f"(for example `huggingface-cli download {text}`) or give the path of a saved model "
            f"({exc.__class__.__name__})"
        ) from None
    device = torch.device(device)
    model.to(device).eval().requires_grad_(False)
    return ClipScorer(model, processor, device, text)


def _tensor(features: Any) -> torch.Tensor:
    # transformers 5 may return a model output object instead of a bare tensor from get_*_features.
    if isinstance(features, torch.Tensor):
        return features
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(features, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP feature output {type(features).__name__}")
