"""Stand-in for Forge's ``backend/patcher/base.py``: ModelPatcher and its model_options patch registry.

Only the patch-registry surface is kept (no LoRA, no memory management, no device moves of weights).
"""

from __future__ import annotations

from forge_family import ModelPatcherRegistry


class ModelPatcher(ModelPatcherRegistry):
    """Mirrors ``backend/patcher/base.py: ModelPatcher`` (patch registry only).

    ``model`` is the wrapped module (for the UNet, a ``KModel`` whose ``diffusion_model`` is the UNet).
    ``model_options`` starts as ``{"transformer_options": {}}``. What every host of the family shares (``clone`` with
    its ``copy.deepcopy`` of ``model_options``, ``is_clone``, ``set_model_patch``, ``set_model_patch_replace``,
    ``set_model_attn2_replace``) is ``forge_family.ModelPatcherRegistry``; the deep copy copies every patch stored
    there that is not a plain function (callable objects and the tensors/modules they hold are duplicated).
    """

    def __init__(self, model, load_device=None, offload_device=None, size=0, current_device=None, **kwargs):
        super().__init__(model, load_device, offload_device, size, **kwargs)
        self.lora_patches = {}
        self.object_patches_backup = {}
        self.current_device = self.offload_device if current_device is None else current_device

    def clone(self):
        """Mirrors ``ModelPatcher.clone``: same model object, ``copy.deepcopy`` of ``model_options``."""
        n = super().clone()
        n.current_device = self.current_device
        n.lora_patches = self.lora_patches.copy()
        return n

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
