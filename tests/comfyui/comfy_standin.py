"""Test helpers around the ComfyUI stand-in (not a ComfyUI file): a ComfyUI model from a tiny ldm UNet, and one UNet
call with the ``transformer_options`` ComfyUI's sampler would give it."""

from __future__ import annotations

import torch
from comfy import model_base
from comfy.ldm.modules.diffusionmodules import openaimodel
from comfy.model_patcher import ModelPatcher
from torch import nn

# The sources these stand-ins were written from (see README.md in this folder).
COMFYUI_COMMIT = "618b803d314a525faca8f8163d85eaa9ebc1d774"  # pollockjj/ComfyUI, ComfyUI 0.8.0 (2026-01-07)
IPADAPTER_PLUS_COMMIT = "9d076a3df0d2763cef5510ec5ab807f6632c39f5"  # cubiq/ComfyUI_IPAdapter_plus (2025-02-26)
COND, UNCOND = 0, 1  # cond_or_uncond values: the index of the cond list (positive 0, negative 1)


def comfy_model(unet: nn.Module, model_class: type[model_base.BaseModel] = model_base.BaseModel) -> ModelPatcher:
    """What a checkpoint loader outputs as MODEL: a ModelPatcher around a model holding the UNet."""
    return ModelPatcher(model_class(unet))


def unet_call(
    patcher: ModelPatcher,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    context: torch.Tensor,
    cond_or_uncond: list[int],
    sigmas: torch.Tensor | None = None,
) -> torch.Tensor:
    """The patcher's UNet on one batch of ``len(cond_or_uncond)`` chunks, with the transformer options that
    ``samplers._calc_cond_batch`` builds (``sigmas``: one per latent, default ones)."""
    if sigmas is None:
        sigmas = torch.ones(x.shape[0] // len(cond_or_uncond))
    model_options = patcher.model_options["transformer_options"]
    options = {k: dict(v) if isinstance(v, dict) else v for k, v in model_options.items()}
    options.update(cond_or_uncond=list(cond_or_uncond), uuids=[None] * len(cond_or_uncond), sigmas=sigmas)
    unet = patcher.get_model_object("diffusion_model")
    with torch.no_grad():
        return openaimodel.forward(unet, x, timesteps, context, options)
