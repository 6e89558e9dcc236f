"""The frozen base model the trainer works with: UNet, text encoder, tokenizer, noise schedule and (optionally) VAE.

Everything is diffusers/transformers modules, whatever the source: a WebUI single-file checkpoint (``checkpoint.py``)
or, for the toy demo, small modules built in code. The adapter still names layers by their ldm paths
(``vmix_ext.layers``), so a file trained here loads in A1111 and Forge unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vmix_train.embeddings import final_layer_norm

Tokenize = Callable[[list[str]], torch.Tensor]  # texts -> input_ids (N, 77), padded as the UNet context is


@dataclass
class BaseModel:
    unet: nn.Module  # diffusers UNet2DConditionModel
    text_encoder: nn.Module  # transformers CLIPTextModel
    tokenize: Tokenize
    eos_token_id: int
    scheduler: object  # diffusers DDPMScheduler: the training noise schedule and prediction type
    family: str  # "sd1", … (vmix_ext.families)
    vae: nn.Module | None = None  # diffusers AutoencoderKL; None = the UNet works on pixels (the toy)
    clip_skip: int = 1  # A1111's "clip skip": 1 = the last layer
    name: str = ""  # the checkpoint's file name, recorded in the adapter
    hash: str = ""  # the checkpoint's short hash (as A1111 shows it), recorded in the adapter

    def freeze(self) -> BaseModel:
        for module in self.modules():
            module.requires_grad_(False).eval()
        return self

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.unet, self.text_encoder, self.vae) if m is not None]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> BaseModel:
        for module in self.modules():
            module.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """The UNet context for ``captions``, (B, 77, d): the layer chosen by clip skip, through the final layer
        norm, as A1111 builds it for SD 1.x."""
        ids = self.tokenize(captions).to(self.device)
        output = self.text_encoder(ids, output_hidden_states=self.clip_skip > 1)
        if self.clip_skip == 1:
            return output.last_hidden_state
        return final_layer_norm(self.text_encoder)(output.hidden_states[-self.clip_skip])

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W) -> what the UNet denoises (scaled VAE latents, or the pixels)."""
        if self.vae is None:
            return pixels
        posterior = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return posterior.sample(generator) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of ``encode_images``: images in [-1, 1]."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return images.float().clamp(-1, 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def latent_scale(self) -> int:
        """Pixels per latent along each side (8 for SD, 1 without a VAE)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)
