"""Stand-in for Forge Neo's ``backend/diffusion_engine/base.py`` (@ 0b824fed): ``ForgeObjects`` and the engine base
class, which is what ``p.sd_model`` is on Neo."""

from __future__ import annotations

import forge_family


class ForgeObjects(forge_family.ForgeObjects):
    """Mirrors ``ForgeObjects`` (unet, clip, vae, clipvision; ``shallow_copy``)."""


class ForgeDiffusionEngine(forge_family.DiffusionEngine):
    """Mirrors ``ForgeDiffusionEngine`` (attributes only). The legacy flags are ``is_sd1``, ``is_sdxl`` and
    ``is_wan``, all False here: Neo has no ``is_sd2`` (it dropped SD 2.x) and no ``is_sd3``. ``sd15.py`` sets
    ``is_sd1``, ``sdxl.py`` (base, refiner) and ``mugen.py`` ``is_sdxl``, ``wan.py`` ``is_wan``; Flux, Chroma, Lumina,
    Qwen and the other transformer engines set none of them."""

    def __init__(self, estimated_config=None, huggingface_components=None):
        super().__init__(estimated_config, huggingface_components)
        self.tiling_enabled = False
        self.is_sd1 = False
        self.is_sdxl = False
        self.is_wan = False

    def is_webui_legacy_model(self):
        """Mirrors ``is_webui_legacy_model``: SD 1.x or SDXL."""
        return self.is_sd1 or self.is_sdxl
