"""Stand-in for Forge Neo's ``backend/patcher/base.py``, a port of ComfyUI v0.7.0's ``comfy/model_patcher.py``
(Haoming02/sd-webui-forge-classic, neo line, @ 6c627e6f): the patch registry of its ``ModelPatcher``."""

from __future__ import annotations

from forge_family import ModelPatcherRegistry, set_model_options_patch_replace

__all__ = ["ModelPatcher", "set_model_options_patch_replace"]


class ModelPatcher(ModelPatcherRegistry):
    """Mirrors ``ModelPatcher`` (patch registry only): ``clone`` builds ``self.__class__`` on the same model with
    ``copy.deepcopy(self.model_options)``; ``set_model_patch_replace`` goes through ``set_model_options_patch_replace``,
    which copies the dicts it writes into; ``set_model_attn2_replace`` stores under
    ``(block_name, number[, transformer_index])``."""
