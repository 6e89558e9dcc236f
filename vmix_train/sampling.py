"""Sampling with and without VMix during training (the sample grids) and in the toy demo: DDIM with CFG."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from vmix_ext.adapter import Strengths, VMixAdapter
from vmix_ext.hooks import ValueMixer
from vmix_ext.mixing import MixOptions
from vmix_train.model import BaseModel


@torch.no_grad()
def sample(
    base: BaseModel,
    prompts: Sequence[str],
    seeds: Sequence[int],
    size: int | tuple[int, int],
    *,
    adapter: VMixAdapter | None = None,
    strengths: Strengths = None,
    scale: float = 1.0,
    steps: int = 25,
    guidance: float = 7.5,
    negative_prompt: str = "",
) -> torch.Tensor:
    """Images in [-1, 1], (len(prompts), 3, height, width); one seed per prompt (the same noise with VMix off and
    on). ``size``: a square's side, or (width, height).

    With ``adapter`` every row, conditional and unconditional, gets λ·V_a (the paper's formula, the extension's
    default). ``guidance`` 1 skips the unconditional pass.
    """
    from diffusers import DDIMScheduler

    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    device = base.device
    scheduler = DDIMScheduler.from_config(base.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(steps)
    width, height = (size, size) if isinstance(size, int) else size
    shape = (base.latent_channels, height // base.latent_scale, width // base.latent_scale)
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    latents = torch.stack(noise).to(device, base.dtype) * scheduler.init_noise_sigma
    texts = [base.encode(list(prompts))]
    if guidance != 1:
        texts.insert(0, base.encode([negative_prompt] * len(prompts), zero_empty=True))  # as A1111 does
    context = torch.cat([text.context for text in texts]).to(base.dtype)
    added = None
    if texts[0].pooled is not None:  # SDXL: pooled text, and the image's size uncropped (sgm's defaults)
        pooled = torch.cat([text.pooled for text in texts if text.pooled is not None]).to(base.dtype)
        sizes = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=device)
        added = {"text_embeds": pooled, "time_ids": sizes.expand(pooled.shape[0], -1)}
    mixer = None
    if adapter is not None:
        values = {k: v.detach() for k, v in adapter.aesthetic_values(strengths, torch.float32).items()}
        mixer = ValueMixer(values, MixOptions(scale=scale))
        mixer.attach(base.unet)
    try:
        for t in scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if guidance != 1 else latents
            prediction = base.unet(model_input, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
            if guidance != 1:
                uncond_pred, cond_pred = prediction.chunk(2)
                prediction = uncond_pred + guidance * (cond_pred - uncond_pred)
            latents = scheduler.step(prediction, t, latents).prev_sample
    finally:
        if mixer is not None:
            mixer.close()
    return base.decode(latents)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(row.numpy()) for row in pixels]


def grid(columns: Sequence[torch.Tensor], gap: int = 2) -> Image.Image:
    """One column per tensor (each (rows, 3, H, W)), rows side by side, with a white gap."""
    tiles = [to_pil(column) for column in columns]
    return sheet_of_rows([list(row) for row in zip(*tiles, strict=True)], gap)


def sheet_of_rows(rows: Sequence[Sequence[Image.Image]], gap: int = 2) -> Image.Image:
    """Rows of tiles, each row as tall as its tallest tile, with white gaps; the rows may differ in size."""
    widths = [sum(tile.width for tile in row) + gap * (len(row) - 1) for row in rows]
    heights = [max(tile.height for tile in row) for row in rows]
    sheet = Image.new("RGB", (max(widths), sum(heights) + gap * (len(rows) - 1)), "white")
    top = 0
    for row, height in zip(rows, heights, strict=True):
        left = 0
        for tile in row:
            sheet.paste(tile, (left, top))
            left += tile.width + gap
        top += height + gap
    return sheet
