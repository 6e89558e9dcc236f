"""Stand-in for Forge's ``backend/diffusion_engine/base.py``: ``ForgeObjects`` and the engine base class."""

from __future__ import annotations

from typing import ClassVar


class ForgeObjects:
    """Mirrors ``backend/diffusion_engine/base.py: ForgeObjects`` (unet, clip, vae, clipvision; shallow_copy)."""

    def __init__(self, unet, clip, vae, clipvision):
        self.unet = unet
        self.clip = clip
        self.vae = vae
        self.clipvision = clipvision

    def shallow_copy(self):
        """Mirrors ``ForgeObjects.shallow_copy``: a new holder pointing at the same patchers."""
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class ForgeDiffusionEngine:
    """Mirrors ``backend/diffusion_engine/base.py: ForgeDiffusionEngine`` (what ``p.sd_model`` is in Forge).

    The web-UI legacy flags all start False; ``sd15.py`` sets ``is_sd1``, ``sd20.py`` ``is_sd2``, ``sdxl.py``
    ``is_sdxl`` (base and refiner), ``sd35.py`` ``is_sd3``; ``flux.py`` and ``chroma.py`` set none of them.
    """

    matched_guesses: ClassVar[list] = []

    def __init__(self, estimated_config=None, huggingface_components=None):
        del huggingface_components
        self.model_config = estimated_config
        self.is_inpaint = False
        self.forge_objects = None
        self.forge_objects_original = None
        self.forge_objects_after_applying_lora = None
        self.current_lora_hash = str([])
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
