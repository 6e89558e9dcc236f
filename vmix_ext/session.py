"""One generation's VMix: the adapter, its V_a for the chosen dimensions, and the mixer that adds them.

Host glue creates a ``VMixRun`` when a generation starts, attaches its mixer (hooks or patches) for each sampling
pass, and calls ``close`` when the generation ends, whatever way it ends. The run holds no reference to a UNet.
"""

from __future__ import annotations

import weakref
from dataclasses import replace

import torch
from torch import nn

from .families import family_label
from .hooks import ValueMixer
from .layers import cross_attention_layers
from .library import AdapterLibrary
from .mixing import MixOptions
from .settings import PASS_LABELS, VMixSettings
from .weights import check_adapter_fits, check_values_finite, short_hash


class VMixRun:
    def __init__(self, settings: VMixSettings, library: AdapterLibrary, file_hash: str | None = None) -> None:
        self.settings = settings
        self.path = library.path_for(settings.adapter)
        self.adapter = library.load(settings.adapter)
        self.strengths = settings.strengths(self.adapter.dimension_names)
        options = MixOptions(settings.scale, settings.cond_only, settings.start, settings.end, settings.blocks)
        values = library.values(settings.adapter, self.strengths)
        self._values = values
        self.first_mixer = ValueMixer(values, options)
        self.hires_mixer = self.first_mixer
        if settings.hires_scale is not None:  # hires fix with its own λ: a second mixer on the same V_a
            self.hires_mixer = ValueMixer(values, replace(options, scale=settings.hires_scale))
        self.mixer = self.first_mixer
        self.hash = file_hash if file_hash is not None else short_hash(self.path)
        self._fitted: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    def select_pass(self, hires_pass: bool) -> bool:
        """Before a sampling pass: make ``mixer`` the one for this pass; False when VMix skips the pass."""
        self.mixer = self.hires_mixer if hires_pass else self.first_mixer
        return self.settings.applies_to(hires_pass)

    def check_fits(self, unet: nn.Module) -> None:
        """Refuse an adapter that does not fit ``unet``; each UNet is checked once per generation (hires fix may
        bring a second checkpoint, which is checked when its pass starts)."""
        if unet in self._fitted:
            return
        check_adapter_fits(self.adapter, unet, self.path)
        # Finite float32 weights can still overflow the half precision the UNet computes in: refuse before a step.
        check_values_finite(self._values, self._largest_scale(), compute_dtype(unet), self.path)
        self._fitted.add(unet)

    def _largest_scale(self) -> float:
        settings = self.settings
        return max(settings.scale, settings.hires_scale or 0.0) * max(settings.blocks)

    def infotext(self) -> dict[str, object]:
        return self.settings.to_infotext(self.hash)

    def status(self) -> str:
        on = [name if w == 1 else f"{name} {w:g}" for name, w in self.strengths.items() if w > 0]
        settings = self.settings
        parts = [
            f"{settings.adapter} [{self.hash}]" if self.hash else settings.adapter,
            family_label(self.adapter.family),
            f"λ {settings.scale:g}",
            ", ".join(on) if on else "no dimension on",
        ]
        if settings.blocks != (1.0, 1.0, 1.0):
            parts.append("blocks ×{:g}/{:g}/{:g}".format(*settings.blocks))
        if settings.passes != "both" or settings.hires_scale is not None:
            hires = f"hires λ {settings.hires_scale:g}" if settings.hires_scale is not None else ""
            parts.append(
                " ".join(filter(None, [PASS_LABELS[settings.passes] + " only" * (settings.passes != "both"), hires]))
            )
        return " · ".join(parts)

    def close(self) -> None:
        self.first_mixer.close()
        self.hires_mixer.close()


def compute_dtype(unet: nn.Module) -> torch.dtype:
    """The dtype the cross-attention projections compute in: their weights' dtype, or float16 for weights stored
    in fp8 (A1111's and Forge's fp8 storage computes in half precision)."""
    for layer in cross_attention_layers(unet).values():
        weight = getattr(layer.to_v, "weight", None)
        if isinstance(weight, torch.Tensor):
            if weight.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
                return weight.dtype
            return torch.float16
    return torch.float32
