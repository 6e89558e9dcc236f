"""Stand-in for ComfyUI's ``nodes.py`` (0.8.0): the core nodes the VMix example workflows use (their
``INPUT_TYPES``/``RETURN_TYPES``, no function bodies) and ``load_custom_node``, the loader of ``custom_nodes/*``.

``load_custom_node(module_path)`` for a folder: the module name is the folder's path with every "." replaced by
"_x_"; ``importlib.util.spec_from_file_location(name, <folder>/__init__.py)`` then ``exec_module`` (the folder is not
put on ``sys.path``), and the module's ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS`` are merged into this
module's. An exception is logged and the pack skipped. ``LOAD_ERRORS`` (not ComfyUI's) keeps those exceptions.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import traceback
from typing import Any

import comfy.samplers
import folder_paths

MAX_RESOLUTION = 16384


class CheckpointLoaderSimple:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"


class CLIPTextEncode:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"


class EmptyLatentImage:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size: dict[str, Any] = {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}
        return {
            "required": {
                "width": ("INT", size),
                "height": ("INT", size),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = "latent"


class KSampler:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS,),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS,),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT",),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "sampling"


class VAEDecode:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "latent"


class SaveImage:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"


class PreviewImage(SaveImage):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}


NODE_CLASS_MAPPINGS: dict[str, Any] = {
    "KSampler": KSampler,
    "CheckpointLoaderSimple": CheckpointLoaderSimple,
    "CLIPTextEncode": CLIPTextEncode,
    "VAEDecode": VAEDecode,
    "EmptyLatentImage": EmptyLatentImage,
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "KSampler": "KSampler",
    "CheckpointLoaderSimple": "Load Checkpoint",
    "CLIPTextEncode": "CLIP Text Encode (Prompt)",
    "VAEDecode": "VAE Decode",
    "EmptyLatentImage": "Empty Latent Image",
    "SaveImage": "Save Image",
    "PreviewImage": "Preview Image",
}
CORE_NODES: frozenset[str] = frozenset(NODE_CLASS_MAPPINGS)
LOAD_ERRORS: dict[str, Exception] = {}


def load_custom_node(module_path: str, ignore: frozenset[str] = frozenset()) -> bool:
    sys_module_name = module_path.replace(".", "_x_")
    try:
        spec = importlib.util.spec_from_file_location(sys_module_name, os.path.join(module_path, "__init__.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[sys_module_name] = module
        spec.loader.exec_module(module)
        mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
        if mappings is None:
            logging.warning("Skip %s module for custom nodes due to the lack of NODE_CLASS_MAPPINGS", module_path)
            return False
        for name, node_cls in mappings.items():
            if name not in ignore:
                NODE_CLASS_MAPPINGS[name] = node_cls
                node_cls.RELATIVE_PYTHON_MODULE = f"custom_nodes.{os.path.basename(module_path)}"
        NODE_DISPLAY_NAME_MAPPINGS.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
        return True
    except Exception as exc:
        logging.warning(traceback.format_exc())
        LOAD_ERRORS[module_path] = exc
        return False
