"""Stand-in for Forge's ``backend/diffusion_engine/base.py``: ``ForgeObjects`` and the engine base class."""

from __future__ import annotations

from typing import ClassVar

import forge_family


class ForgeObjects(forge_family.ForgeObjects):
    """Mirrors ``backend/diffusion_engine/base.py: ForgeObjects`` (unet, clip, vae, clipvision; shallow_copy)."""


class ForgeDiffusionEngine(forge_family.DiffusionEngine):
    """Mirrors ``backend/diffusion_engine/base.py: ForgeDiffusionEngine`` (what ``p.sd_model`` is in Forge).

    The web-UI legacy flags all start False; ``sd15.py`` sets ``is_sd1``, ``sd20.py`` ``is_sd2``, ``sdxl.py``
    ``is_sdxl`` (base and refiner), ``sd35.py`` ``is_sd3``; ``flux.py`` and ``chroma.py`` set none of them.
    """

    matched_guesses: ClassVar[list] = []

    def __init__(self, estimated_config=None, huggingface_components=None):
        super().__init__(estimated_config, huggingface_components)
        self.fix_for_webui_backward_compatibility()

    def is_webui_legacy_model(self):
        """Mirrors ``ForgeDiffusionEngine.is_webui_legacy_model``."""
        return self.is_sd1 or self.is_sd2 or self.is_sdxl or self.is_sd3

    def fix_for_webui_backward_compatibility(self):
        """Mirrors ``ForgeDiffusionEngine.fix_for_webui_backward_compatibility``: the legacy attributes, all off."""
        self.tiling_enabled = False
        self.first_stage_model = None
        self.cond_stage_model = None
        self.use_distilled_cfg_scale = False
        self.is_sd1 = False
        self.is_sd2 = False
        self.is_sdxl = False
        self.is_sd3 = False
