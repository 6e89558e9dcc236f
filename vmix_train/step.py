"""One training step of VMix: the base UNet frozen, F, Z and every W_Va learning from the usual diffusion loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vmix_ext.adapter import VMixAdapter
from vmix_ext.hooks import ValueMixer
from vmix_ext.mixing import MixOptions


@dataclass
class Batch:
    latents: torch.Tensor  # (B, C, h, w), already scaled as the UNet expects
    context: torch.Tensor  # (B, T, d): the captions' text-encoder states (caption dropout applied by the loader)
    strengths: torch.Tensor  # (B, N): each image's labels, 1 = yes, 0 = no
    noise: torch.Tensor | None = None  # (B, C, h, w); drawn from the loss's generator when None
    timesteps: torch.Tensor | None = None  # (B,) int; drawn from the loss's generator when None
    # SDXL's extra UNet inputs (diffusers' added_cond_kwargs): "text_embeds", the pooled text (B, 1280), and
    # "time_ids", (B, 6) original size, crop corner and target size; None for SD 1.x/2.x.
    added: dict[str, torch.Tensor] | None = None


class VMixTrainingStep:
    """Computes the loss of one batch: noise the latents at random timesteps, predict with VMix mixed in at λ = 1
    (each row with its own labels), and compare with the scheduler's target (ε, or v for v-prediction models).

    ``unet`` is a diffusers ``UNet2DConditionModel`` (its layers are found by their ldm paths); it is frozen here.
    """

    def __init__(self, unet: nn.Module, adapter: VMixAdapter, scheduler: Any, wrapped: nn.Module | None = None) -> None:
        self.unet = unet.requires_grad_(False)
        self.adapter = adapter.requires_grad_(True)
        # ``wrapped``: the adapter inside DistributedDataParallel; V_a is computed by calling it, so DDP
        # averages the gradients across processes.
        self.values_module: nn.Module = wrapped if wrapped is not None else adapter
        self.scheduler = scheduler
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction type {self.prediction_type!r} (epsilon or v_prediction)")
        self._mixer: ValueMixer | None = None

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        latents = batch.latents
        # Noise and timesteps come from a CPU generator whatever the device, so a run is reproducible (and resumable)
        # on any hardware; the copy to the GPU costs one small transfer per step.
        noise, timesteps = batch.noise, batch.timesteps
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
        if timesteps is None:
            steps = self.scheduler.config.num_train_timesteps
            timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator)
        noise, timesteps = noise.to(latents.device, latents.dtype), timesteps.to(latents.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        values = self.values_module(batch.strengths)  # (B, C, inner) per layer, with autograd
        if self._mixer is None:
            self._mixer = ValueMixer(values, MixOptions(scale=1.0))
            self._mixer.attach(self.unet)
        else:
            self._mixer.set_values(values)
        prediction = self.unet(
            noisy, timesteps, encoder_hidden_states=batch.context, added_cond_kwargs=batch.added
        ).sample
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        return F.mse_loss(prediction.float(), target.float())

    def close(self) -> None:
        """Take VMix off the UNet (sampling without VMix, or the end of training)."""
        if self._mixer is not None:
            self._mixer.close()
            self._mixer = None
