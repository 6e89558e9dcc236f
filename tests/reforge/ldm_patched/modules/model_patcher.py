"""Stand-in for reForge's ``ldm_patched/modules/model_patcher.py``: the patch registry of its ``ModelPatcher``."""

from __future__ import annotations

from forge_family import ModelPatcherRegistry, set_model_options_patch_replace

__all__ = ["ModelPatcher", "set_model_options_patch_replace"]


class ModelPatcher(ModelPatcherRegistry):
    """Mirrors ``ModelPatcher`` (patch registry only): ``clone`` (L270) deep-copies ``model_options``;
    ``set_model_patch_replace`` (L406) goes through ``set_model_options_patch_replace`` (L54), which copies the dicts it
    writes into; ``set_model_attn2_replace`` (L418) stores under ``(block_name, number[, transformer_index])``."""
