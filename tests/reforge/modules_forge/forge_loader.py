"""Stand-in for reForge's ``modules_forge/forge_loader.py``: the holder of ``p.sd_model.forge_objects``."""

from __future__ import annotations

import forge_family


class ForgeSD(forge_family.ForgeObjects):
    """Mirrors ``ForgeSD`` (L174): unet, clip, vae, clipvision; ``shallow_copy``. ``load_model_for_a1111`` sets
    ``sd_model.forge_objects`` and two shallow copies of it, ``forge_objects_original`` and
    ``forge_objects_after_applying_lora`` (L445-447)."""
