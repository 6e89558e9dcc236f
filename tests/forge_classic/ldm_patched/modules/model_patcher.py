"""Stand-in for Forge Classic's ``ldm_patched/modules/model_patcher.py``: the patch registry of its ``ModelPatcher``."""

from __future__ import annotations

from forge_family import ModelPatcherRegistry


class ModelPatcher(ModelPatcherRegistry):
    """Mirrors ``ModelPatcher`` (patch registry only): ``clone`` (L50) deep-copies ``model_options``;
    ``set_model_attn2_replace`` (L141) stores under ``(block_name, number[, transformer_index])``. Unlike reForge and
    Forge, Classic's ``set_model_patch_replace`` (L114) writes into the dicts it finds, in place."""

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        """Mirrors ``set_model_patch_replace``: creates ``patches_replace`` / ``name`` if missing, writes in place."""
        to = self.model_options["transformer_options"]
        by_key = to.setdefault("patches_replace", {}).setdefault(name, {})
        key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        by_key[key] = patch
