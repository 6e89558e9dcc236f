"""Stand-in for ComfyUI's ``comfy/model_patcher.py`` (0.8.0): the ``ModelPatcher`` surface VMix and IP-Adapters use.

- ``model_options`` starts as ``{"transformer_options": {}}``; ``clone()`` shares ``model`` and deep-copies
  ``model_options`` (``copy.deepcopy``), so every patch object in it is copied into the clone.
- ``set_model_patch_replace(patch, name, block_name, number, transformer_index=None)`` goes through the module
  function ``set_model_options_patch_replace``: it shallow-copies ``transformer_options``, ``patches_replace`` and
  ``patches_replace[name]``, then stores the patch under ``(block_name, number, transformer_index)`` or, without an
  index, ``(block_name, number)``. ``set_model_attn2_replace`` is that with ``name="attn2"``.
- ``set_model_patch`` appends to ``transformer_options["patches"][name]`` (``attn2_patch``,
  ``attn2_output_patch``).
- ``get_model_object(name)`` returns an object patch if one is set, else the attribute path on ``model``.
- ``model_patches_to(device)`` calls ``.to(device)`` on every patch that has one (ComfyUI does so with the load
  device and then with the model's dtype before sampling) and stores the result; ``model_patches_models()``
  gathers ``patch.models()``.

Simplifications: no weight patches, hooks, wrappers, callbacks, attachments or memory management.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


def set_model_options_patch_replace(
    model_options: dict, patch: Any, name: str, block_name: str, number: int, transformer_index: int | None = None
) -> dict:
    to = model_options["transformer_options"].copy()
    to["patches_replace"] = dict(to.get("patches_replace", {}))
    to["patches_replace"][name] = dict(to["patches_replace"].get(name, {}))
    block = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    to["patches_replace"][name][block] = patch
    model_options["transformer_options"] = to
    return model_options


class ModelPatcher:
    def __init__(
        self,
        model: torch.nn.Module,
        load_device: torch.device | str = "cpu",
        offload_device: torch.device | str = "cpu",
        size: int = 0,
    ) -> None:
        self.model = model
        self.load_device = torch.device(load_device)
        self.offload_device = torch.device(offload_device)
        self.size = size
        self.model_options: dict[str, Any] = {"transformer_options": {}}
        self.object_patches: dict[str, Any] = {}
        self.object_patches_backup: dict[str, Any] = {}
        self.parent: ModelPatcher | None = None

    def clone(self) -> ModelPatcher:
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size)
        n.object_patches = self.object_patches.copy()
        n.object_patches_backup = self.object_patches_backup
        n.model_options = copy.deepcopy(self.model_options)
        n.parent = self
        return n

    def set_model_patch(self, patch: Any, name: str) -> None:
        to = self.model_options["transformer_options"]
        to.setdefault("patches", {})
        to["patches"][name] = [*to["patches"].get(name, []), patch]

    def set_model_patch_replace(
        self, patch: Any, name: str, block_name: str, number: int, transformer_index: int | None = None
    ) -> None:
        self.model_options = set_model_options_patch_replace(
            self.model_options, patch, name, block_name, number, transformer_index=transformer_index
        )

    def set_model_attn2_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn2_replace(
        self, patch: Any, block_name: str, number: int, transformer_index: int | None = None
    ) -> None:
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_attn2_output_patch(self, patch: Any) -> None:
        self.set_model_patch(patch, "attn2_output_patch")

    def add_object_patch(self, name: str, obj: Any) -> None:
        self.object_patches[name] = obj

    def get_model_object(self, name: str) -> Any:
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        obj: Any = self.model
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj

    def model_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def model_patches_to(self, device: torch.device | torch.dtype) -> None:
        to = self.model_options["transformer_options"]
        for patch_list in to.get("patches", {}).values():
            for i, patch in enumerate(patch_list):
                if hasattr(patch, "to"):
                    patch_list[i] = patch.to(device)
        for patch_table in to.get("patches_replace", {}).values():
            for key, patch in patch_table.items():
                if hasattr(patch, "to"):
                    patch_table[key] = patch.to(device)

    def model_patches_models(self) -> list[Any]:
        to = self.model_options["transformer_options"]
        models: list[Any] = []
        for patch_list in to.get("patches", {}).values():
            models += [m for patch in patch_list if hasattr(patch, "models") for m in patch.models()]
        for patch_table in to.get("patches_replace", {}).values():
            models += [m for patch in patch_table.values() if hasattr(patch, "models") for m in patch.models()]
        return models
