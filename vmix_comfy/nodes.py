"""The VMix nodes (category ``VMix``): *Load VMix Adapter* and *Apply VMix*.

ComfyUI shows an exception raised by a node's function in the UI with its message, so every refusal here is an
exception whose text says what to change.
"""

from __future__ import annotations

from typing import Any, ClassVar

from vmix_ext.settings import SCALE_MAX, SCALE_MIN, SCALE_STEP

from . import apply, folders

CATEGORY = "VMix"
ADAPTER_TYPE = "VMIX_ADAPTER"

folders.register()


class LoadVMixAdapter:
    """Reads one adapter file from the ``vmix`` model folders and checks the file itself."""

    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (ADAPTER_TYPE, "STRING")
    RETURN_NAMES = ("adapter", "dimensions")
    OUTPUT_TOOLTIPS = (
        "The VMix adapter, for Apply VMix (it is matched to the model there).",
        "The adapter's dimension names, comma-separated: the vocabulary of Apply VMix's dimensions widget.",
    )
    DESCRIPTION = "Loads a VMix aesthetic adapter (.safetensors) from ComfyUI/models/vmix."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "adapter_name": (
                    folders.adapter_names(),
                    {"tooltip": "An adapter file from models/vmix (or a 'vmix:' folder of extra_model_paths.yaml)."},
                ),
            }
        }

    @classmethod
    def IS_CHANGED(cls, adapter_name: str) -> str:
        return folders.file_stamp(adapter_name)

    def load(self, adapter_name: str) -> tuple[apply.LoadedAdapter, str]:
        loaded = apply.load(adapter_name, folders.adapter_path(adapter_name))
        return loaded, ", ".join(loaded.dimension_names)


class ApplyVMix:
    """Returns a clone of the model whose cross-attention adds λ·V_a to its values (the paper's Eq. 9)."""

    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A copy of the model with VMix applied; the input model is unchanged.",)
    DESCRIPTION = (
        "Applies a VMix aesthetic adapter to an SD 1.x, SD 2.x or SDXL model. A later Apply VMix on the same model "
        "replaces this one; IP-Adapters and other attention patches keep working, before or after it."
    )
    TOOLTIPS: ClassVar[dict[str, str]] = {
        "strength": "λ: how strongly the aesthetic term is mixed in (0 = off, 1 = as trained).",
        "dimensions": "Which aesthetic dimensions are on: 'all', 'none', or names from the adapter, each optionally "
        "with a strength from 0 to 1, e.g. 'color, lighting:0.5' (unlisted dimensions are off).",
        "start_percent": "When VMix starts acting, as a fraction of sampling (as in Apply ControlNet).",
        "end_percent": "When VMix stops acting, as a fraction of sampling (as in Apply ControlNet).",
        "cond_only": "Mix into the positive (conditional) rows only, leaving the negative prompt's rows as they are.",
        "blocks": "Multiplies λ in the UNet's {} (1 = as the strength says; input and middle shape composition, "
        "output texture and colour).",
    }

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        tips = cls.TOOLTIPS
        return {
            "required": {
                "model": ("MODEL",),
                "adapter": (ADAPTER_TYPE,),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": SCALE_MIN,
                        "max": SCALE_MAX,
                        "step": SCALE_STEP,
                        "tooltip": tips["strength"],
                    },
                ),
                "dimensions": ("STRING", {"default": apply.ALL_DIMENSIONS, "tooltip": tips["dimensions"]}),
                "start_percent": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip": tips["start_percent"]},
                ),
                "end_percent": (
                    "FLOAT",
                    {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip": tips["end_percent"]},
                ),
                "cond_only": ("BOOLEAN", {"default": False, "tooltip": tips["cond_only"]}),
            },
            # Optional, so workflows saved before they existed load with λ everywhere.
            "optional": {
                f"{part}_scale": (
                    "FLOAT",
                    {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": tips["blocks"].format(words)},
                )
                for part, words in (("input", "input blocks"), ("middle", "middle block"), ("output", "output blocks"))
            },
        }

    def apply(
        self,
        model: Any,
        adapter: apply.LoadedAdapter,
        strength: float,
        dimensions: str,
        start_percent: float,
        end_percent: float,
        cond_only: bool,
        input_scale: float = 1.0,
        middle_scale: float = 1.0,
        output_scale: float = 1.0,
    ) -> tuple[Any]:
        blocks = (input_scale, middle_scale, output_scale)
        return (apply.apply(model, adapter, strength, dimensions, start_percent, end_percent, cond_only, blocks),)


NODE_CLASS_MAPPINGS = {
    "VMixAdapterLoader": LoadVMixAdapter,
    "ApplyVMix": ApplyVMix,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VMixAdapterLoader": "Load VMix Adapter",
    "ApplyVMix": "Apply VMix",
}
