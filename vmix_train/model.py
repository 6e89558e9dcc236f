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

from vmix_train.embeddings import end_of_text_rows, final_layer_norm

Tokenize = Callable[[list[str]], torch.Tensor]  # texts -> input_ids (N, 77), padded as the UNet context is


@dataclass
class TextConditioning:
    """What the UNet gets from the captions."""

    context: torch.Tensor  # (B, 77, d): the cross-attention context
    pooled: torch.Tensor | None = None  # (B, 1280): SDXL's pooled OpenCLIP-bigG vector; None for SD 1.x/2.x


@dataclass
class BaseModel:
    unet: nn.Module  # diffusers UNet2DConditionModel
    text_encoder: nn.Module  # transformers CLIPTextModel (SDXL: CLIP ViT-L, the context's first 768 channels)
    tokenize: Tokenize
    eos_token_id: int
    scheduler: object  # diffusers DDPMScheduler: the training noise schedule and prediction type
    family: str  # "sd1", … (vmix_ext.families)
    vae: nn.Module | None = None  # diffusers AutoencoderKL; None = the UNet works on pixels (the toy)
    clip_skip: int = 1  # A1111's "clip skip": 1 = the last layer
    name: str = ""  # the checkpoint's file name, recorded in the adapter
    hash: str = ""  # the checkpoint's short hash (as A1111 shows it), recorded in the adapter
    text_encoder_2: nn.Module | None = None  # SDXL: OpenCLIP ViT-bigG, a CLIPTextModelWithProjection
    tokenize_2: Tokenize | None = None  # SDXL: its tokenizer (CLIP's vocabulary, padded with 0)

    def __post_init__(self) -> None:
        if self.clip_skip < 1:
            raise ValueError(f"clip_skip counts from 1 (the last layer), got {self.clip_skip}")

    def freeze(self) -> BaseModel:
        for module in self.modules():
            module.requires_grad_(False).eval()
        return self

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.unet, *self.text_encoders, self.vae) if m is not None]

    @property
    def text_encoders(self) -> list[nn.Module]:
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]

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
    def encode(self, captions: list[str], zero_empty: bool = False) -> TextConditioning:
        """The UNet's text conditioning for ``captions``, as A1111 builds it.

        SD 1.x/2.x: the layer chosen by clip skip, through the final layer norm (SD 2.x's encoder was loaded without
        its last block, so its last layer is the penultimate one). SDXL: both encoders' penultimate layers without
        the final layer norm, concatenated (768 + 1280 = 2048), and the second encoder's pooled vector (sgm's
        "penultimate" context and "pooled" output).

        ``zero_empty``: SDXL's empty captions give zeros instead of the encoded empty text, as A1111 feeds SDXL an
        empty negative prompt (sgm's ``force_zero_embeddings``) and as sgm drops captions in training. The other
        families encode the empty text, as A1111 does for them.
        """
        device = next(self.text_encoder.parameters()).device
        ids = self.tokenize(captions).to(device)
        if self.text_encoder_2 is not None:
            assert self.tokenize_2 is not None, "SDXL's second text encoder needs its tokenizer"
            first = self.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
            second = self.text_encoder_2(self.tokenize_2(captions).to(device), output_hidden_states=True)
            text = TextConditioning(torch.cat([first, second.hidden_states[-2]], dim=-1), second.text_embeds)
            if zero_empty and "" in captions:
                keep = torch.tensor([c != "" for c in captions], device=device)
                text = TextConditioning(text.context * keep[:, None, None], text.pooled * keep[:, None])
            return text
        output = self.text_encoder(ids, output_hidden_states=self.clip_skip > 1)
        if self.clip_skip == 1:
            return TextConditioning(output.last_hidden_state)
        return TextConditioning(final_layer_norm(self.text_encoder)(output.hidden_states[-self.clip_skip]))

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """The UNet context for ``captions``, (B, 77, d)."""
        return self.encode(captions).context

    @torch.no_grad()
    def end_of_text_states(self, texts: list[str]) -> torch.Tensor:
        """The context row at each text's first end-of-text token, (N, d): AesEmb's vectors. They come from the
        very context the UNet sees (same encoders, layers and concatenation), or V_a would be computed from
        vectors the UNet never saw."""
        return end_of_text_rows(self.encode_text(texts), self.tokenize(texts), self.eos_token_id)

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
