"""Stand-in for Forge Classic's ``modules_forge/forge_loader.py``: the holder of ``p.sd_model.forge_objects``."""

from __future__ import annotations

import forge_family


class ForgeObjects(forge_family.ForgeObjects):
    """Mirrors ``ForgeObjects`` (L39): unet, clip, vae, clipvision; ``shallow_copy``. The loader sets
    ``sd_model.forge_objects`` and two shallow copies of it, ``forge_objects_original`` and
    ``forge_objects_after_applying_lora``."""
