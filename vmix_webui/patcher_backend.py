"""The Forge family (Forge, reForge, Forge Classic, Forge Neo): attn2 replace patches on the host's UNet patcher.

These hosts rebuild ``p.sd_model.forge_objects.unet`` before every sampling pass. When a pass starts, VMix clones that
patcher, registers its patches on the clone (``vmix_ext.patcher``) and hands the clone to the host; when the pass
ends it puts the patcher it found back, so nothing after the pass sees VMix. What differs between the hosts is only
the attention function a patch calls, which ``hosts`` finds and passes in.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vmix_ext import patcher
from vmix_ext.patcher import AttentionCall
from vmix_ext.session import VMixRun

_FAMILY_FLAGS = ("is_sd1", "is_sd2", "is_sdxl")
_SAVED_PATCHERS = "_vmix_patchers_before_pass"


class PatcherBackend:
    def __init__(self, name: str, attention: AttentionCall, families: str = "SD 1.x, SD 2.x and SDXL") -> None:
        self.name = name
        self.attention = attention
        self.families = families

    def unet(self, p: Any) -> nn.Module:
        return p.sd_model.forge_objects.unet.model.diffusion_model

    def check_model(self, p: Any) -> None:
        """These hosts also run SD3, Flux, Chroma and others, which have no cross-attention for VMix."""
        model = p.sd_model
        if not any(getattr(model, flag, False) for flag in _FAMILY_FLAGS):
            raise ValueError(
                f"the loaded model ({type(model).__name__}) has no cross-attention layers; VMix on {self.name} works "
                f"with {self.families} models, not with SD3, Flux, Chroma or other transformer models"
            )

    def begin_pass(self, p: Any, run: VMixRun) -> None:
        self.check_model(p)
        forge_objects = p.sd_model.forge_objects
        found = forge_objects.unet
        run.check_fits(found.model.diffusion_model)
        clone = found.clone()
        patcher.install(clone.model_options, run.mixer, self.attention, run.adapter.layer_paths)
        # Forge and Neo call process_before_every_sampling twice for the hires pass, the first time before they
        # reset forge_objects: remember the patcher each forge_objects had before VMix, once, to put it back.
        saved = p.__dict__.setdefault(_SAVED_PATCHERS, [])
        if not any(objects is forge_objects for objects, _ in saved):
            saved.append((forge_objects, found))
        forge_objects.unet = clone

    def end_pass(self, p: Any, run: VMixRun | None) -> None:
        for forge_objects, found in reversed(p.__dict__.pop(_SAVED_PATCHERS, [])):
            forge_objects.unet = found
