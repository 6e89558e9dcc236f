"""Stand-in for Forge's ``backend/patcher/base.py``: ModelPatcher and its model_options patch registry.

Only the patch-registry surface is kept (no LoRA, no memory management, no device moves of weights).
"""

from __future__ import annotations

import copy

import torch


def set_model_options_patch_replace(model_options, patch, name, block_name, number, transformer_index=None):
    """Mirrors ``backend/patcher/base.py: set_model_options_patch_replace``.

    Stores ``patch`` under ``model_options["transformer_options"]["patches_replace"][name][key]`` where ``key`` is
    ``(block_name, number, transformer_index)`` or, when ``transformer_index`` is None, ``(block_name, number)``.
    Forge makes shallow copies of ``transformer_options``, of ``patches_replace`` and of the ``name`` dict before
    writing, so a dict shared with another patcher is never written to; other patches are kept by reference.
    """
    options = dict(model_options["transformer_options"])
    replace = dict(options.get("patches_replace", {}))
    by_key = dict(replace.get(name, {}))
    key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    by_key[key] = patch
    replace[name] = by_key
    options["patches_replace"] = replace
    model_options["transformer_options"] = options
    return model_options


class ModelPatcher:
    """Mirrors ``backend/patcher/base.py: ModelPatcher`` (patch registry only).

    ``model`` is the wrapped module (for the UNet, a ``KModel`` whose ``diffusion_model`` is the UNet).
    ``model_options`` starts as ``{"transformer_options": {}}``.
    """

    def __init__(self, model, load_device=None, offload_device=None, size=0, current_device=None, **kwargs):
        del kwargs
        self.size = size
        self.model = model
        self.lora_patches = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.model_options = {"transformer_options": {}}
        self.load_device = load_device if load_device is not None else torch.device("cpu")
        self.offload_device = offload_device if offload_device is not None else torch.device("cpu")
        self.current_device = self.offload_device if current_device is None else current_device

    def clone(self):
        """Mirrors ``ModelPatcher.clone``: same model object, ``copy.deepcopy`` of ``model_options``.

        The deep copy copies every patch stored there that is not a plain function: callable objects and bound
        methods (and the tensors/modules they hold) are duplicated; functions and closures are kept as they are.
        """
        n = ModelPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def is_clone(self, other):
        """Mirrors ``ModelPatcher.is_clone``: True when both patch the same model object."""
        return hasattr(other, "model") and self.model is other.model

    def set_model_patch(self, patch, name):
        """Mirrors ``ModelPatcher.set_model_patch``: append to ``transformer_options["patches"][name]`` (a new list)."""
        options = self.model_options["transformer_options"]
        patches = options.setdefault("patches", {})
        patches[name] = [*patches.get(name, []), patch]

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        """Mirrors ``ModelPatcher.set_model_patch_replace``."""
        self.model_options = set_model_options_patch_replace(
            self.model_options, patch, name, block_name, number, transformer_index=transformer_index
        )

    def set_model_attn1_patch(self, patch):
        """Mirrors ``ModelPatcher.set_model_attn1_patch`` (``patches["attn1_patch"]``)."""
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch):
        """Mirrors ``ModelPatcher.set_model_attn2_patch``.

        ``p(n, context, value, extra_options) -> (n, context, value)``, run before the replace lookup.
        """
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        """Mirrors ``ModelPatcher.set_model_attn1_replace``."""
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        """Mirrors ``ModelPatcher.set_model_attn2_replace``.

        ``patch(q, k, v, extra_options)`` receives the projected tensors and returns the attention result before
        ``to_out``. Forge's UNet passes the block's index inside its SpatialTransformer (``block_index``) as the
        third key element, despite the parameter name.
        """
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_attn1_output_patch(self, patch):
        """Mirrors ``ModelPatcher.set_model_attn1_output_patch``."""
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch):
        """Mirrors ``ModelPatcher.set_model_attn2_output_patch``: ``p(n, extra_options) -> n`` after ``to_out``."""
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_input_block_patch(self, patch):
        """Mirrors ``ModelPatcher.set_model_input_block_patch`` (stored only; the stand-in UNet run ignores it)."""
        self.set_model_patch(patch, "input_block_patch")

    def set_model_output_block_patch(self, patch):
        """Mirrors ``ModelPatcher.set_model_output_block_patch`` (stored only; the stand-in UNet run ignores it)."""
        self.set_model_patch(patch, "output_block_patch")

    def model_patches_to(self, device):
        """Mirrors ``ModelPatcher.model_patches_to``: a patch with a ``.to`` method is replaced by ``patch.to(device)``.

        Forge calls this with the load device and then the UNet dtype before sampling.
        """
        options = self.model_options["transformer_options"]
        for patch_list in options.get("patches", {}).values():
            for i, patch in enumerate(patch_list):
                if hasattr(patch, "to"):
                    patch_list[i] = patch.to(device)
        for by_key in options.get("patches_replace", {}).values():
            for key, patch in by_key.items():
                if hasattr(patch, "to"):
                    by_key[key] = patch.to(device)
