"""Stand-in for Forge's ``backend/patcher/unet.py``: UnetPatcher, the object at ``p.sd_model.forge_objects.unet``."""

from __future__ import annotations

import copy

from backend.patcher.base import ModelPatcher


class UnetPatcher(ModelPatcher):
    """Mirrors ``backend/patcher/unet.py: UnetPatcher`` (the patch-registry part).

    ``self.model`` is a ``KModel`` (``backend/modules/k_model.py``); the UNet itself is ``self.model.diffusion_model``.
    """

    @classmethod
    def from_model(cls, model, diffusers_scheduler=None, config=None, k_predictor=None):
        """Mirrors ``UnetPatcher.from_model``: wrap a bare UNet in a ``KModel`` and a patcher."""
        from backend.modules.k_model import KModel

        return cls(KModel(model=model, diffusers_scheduler=diffusers_scheduler, k_predictor=k_predictor, config=config))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_preserved_memory_during_sampling = 0
        self.extra_model_patchers_during_sampling = []
        self.extra_concat_condition = None

    def clone(self):
        """Mirrors ``UnetPatcher.clone``: same model, deep copy of ``model_options``, shallow copies of the rest."""
        n = UnetPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        return n

    def add_extra_preserved_memory_during_sampling(self, memory_in_bytes):
        """Mirrors ``UnetPatcher.add_extra_preserved_memory_during_sampling`` (a counter here)."""
        self.extra_preserved_memory_during_sampling += memory_in_bytes

    def add_extra_model_patcher_during_sampling(self, model_patcher):
        """Mirrors ``UnetPatcher.add_extra_model_patcher_during_sampling`` (recorded only)."""
        self.extra_model_patchers_during_sampling.append(model_patcher)

    def add_extra_torch_module_during_sampling(self, m, cast_to_unet_dtype=True):
        """Mirrors ``UnetPatcher.add_extra_torch_module_during_sampling``: optionally cast ``m`` to the UNet dtype
        and register a ``ModelPatcher`` for it, which is returned."""
        if cast_to_unet_dtype:
            m.to(next(self.model.diffusion_model.parameters()).dtype)
        patcher = ModelPatcher(model=m, load_device=self.load_device, offload_device=self.offload_device)
        self.add_extra_model_patcher_during_sampling(patcher)
        return patcher

    def append_model_option(self, k, v, ensure_uniqueness=False):
        """Mirrors ``UnetPatcher.append_model_option``: append ``v`` to the list ``model_options[k]``."""
        values = self.model_options.setdefault(k, [])
        if ensure_uniqueness and v in values:
            return
        values.append(v)

    def append_transformer_option(self, k, v, ensure_uniqueness=False):
        """Mirrors ``UnetPatcher.append_transformer_option``: append to ``transformer_options[k]`` (in place)."""
        options = self.model_options.setdefault("transformer_options", {})
        values = options.setdefault(k, [])
        if ensure_uniqueness and v in values:
            return
        values.append(v)

    def set_transformer_option(self, k, v):
        """Mirrors ``UnetPatcher.set_transformer_option``."""
        self.model_options.setdefault("transformer_options", {})[k] = v

    def add_conditioning_modifier(self, modifier, ensure_uniqueness=False):
        """Mirrors ``UnetPatcher.add_conditioning_modifier`` (stored only)."""
        self.append_model_option("conditioning_modifiers", modifier, ensure_uniqueness)

    def add_block_modifier(self, modifier, ensure_uniqueness=False):
        """Mirrors ``UnetPatcher.add_block_modifier`` (stored only; the stand-in UNet run ignores it)."""
        self.append_transformer_option("block_modifiers", modifier, ensure_uniqueness)

    def set_model_replace_all(self, patch, target="attn1"):
        """Mirrors ``UnetPatcher.set_model_replace_all``: register ``patch`` under every 3-part key with
        block name in input/middle/output, number and index in range(16)."""
        for block_name in ("input", "middle", "output"):
            for number in range(16):
                for transformer_index in range(16):
                    self.set_model_patch_replace(patch, target, block_name, number, transformer_index)
