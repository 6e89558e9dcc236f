"""Stand-in for ComfyUI's ``comfy/model_base.py`` (0.8.0): the model a ModelPatcher wraps.

``BaseModel`` holds ``diffusion_model`` (the UNet) and ``model_sampling``; ``apply_model(x, sigma, c_crossattn,
transformer_options)`` mirrors ``_apply_model``: scale the input for ε-prediction, turn sigma into a timestep, run the
diffusion model with ``transformer_options``, and return the denoised latent. The subclasses are the classes ComfyUI
uses for each family (flag only here); ``Flux`` holds a model without cross-attention.
"""

from __future__ import annotations

import torch
from torch import nn

from .ldm.modules.diffusionmodules import openaimodel
from .model_sampling import EPS, ModelSamplingDiscrete, ModelSamplingDiscreteFlow


class BaseModel(nn.Module):
    def __init__(self, diffusion_model: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model
        self.model_sampling = ModelSamplingDiscrete()
        self.prediction = EPS()

    def apply_model(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        c_crossattn: torch.Tensor | None = None,
        transformer_options: dict | None = None,
    ) -> torch.Tensor:
        sigma = t
        xc = self.prediction.calculate_input(sigma, x)
        timestep = self.model_sampling.timestep(t).float()
        output = self.run_diffusion_model(xc, timestep, c_crossattn, transformer_options or {})
        return self.prediction.calculate_denoised(sigma, output.float(), x)

    def run_diffusion_model(
        self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor | None, transformer_options: dict
    ) -> torch.Tensor:
        return openaimodel.forward(self.diffusion_model, x, timestep, context, transformer_options)


class SDXL(BaseModel):
    pass


class SDXLRefiner(BaseModel):
    pass


class Flux(BaseModel):
    def __init__(self, diffusion_model: nn.Module) -> None:
        super().__init__(diffusion_model)
        self.model_sampling = ModelSamplingDiscreteFlow()
