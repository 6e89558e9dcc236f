"""Stand-in for Forge Classic's ``modules_forge/unet_patcher.py``: ``UnetPatcher``, the object at
``p.sd_model.forge_objects.unet``."""

from __future__ import annotations

from ldm_patched.modules.model_patcher import ModelPatcher


class UnetPatcher(ModelPatcher):
    """Mirrors ``UnetPatcher`` (the registry part): its ``clone`` (L17) builds a new ``UnetPatcher`` on the same model
    with ``copy.deepcopy(self.model_options)``, which is ``ModelPatcher.clone`` here; ControlNet links and the
    sampling-memory extras are not reproduced. ``model`` is a ``ldm_patched.modules.model_base.BaseModel``."""
