"""The training step: base UNet frozen, only the adapter learns, zero start, ε and v targets."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from helpers import DIMENSIONS, tiny_diffusers_unet

from vmix_ext.adapter import VMixAdapter
from vmix_ext.hooks import has_vmix_hooks
from vmix_train.step import Batch, VMixTrainingStep


def setup(prediction_type: str = "epsilon"):
    unet = tiny_diffusers_unet()
    generator = torch.Generator().manual_seed(0)
    adapter = VMixAdapter.untrained(
        unet, DIMENSIONS, torch.randn(3, 768, generator=generator), torch.randn(3, 768, generator=generator), "sd1"
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    batch = Batch(
        latents=torch.randn(4, 4, 8, 8, generator=generator),
        context=torch.randn(4, 77, 768, generator=generator),
        strengths=torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]),
    )
    return unet, adapter, scheduler, batch


def base_loss(unet, scheduler, batch, seed, prediction_type="epsilon"):
    """The same loss computed by hand without VMix."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch.latents.shape, generator=generator)
    t = torch.randint(0, 1000, (batch.latents.shape[0],), generator=generator)
    with torch.no_grad():
        pred = unet(scheduler.add_noise(batch.latents, noise, t), t, encoder_hidden_states=batch.context).sample
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(batch.latents, noise, t)
    return torch.nn.functional.mse_loss(pred, target)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_zero_start_gives_the_base_models_loss(prediction_type):
    unet, adapter, scheduler, batch = setup(prediction_type)
    step = VMixTrainingStep(unet, adapter, scheduler)
    loss = step.loss(batch, torch.Generator().manual_seed(5))
    step.close()
    assert torch.equal(loss.detach(), base_loss(unet, scheduler, batch, 5, prediction_type))


def test_only_the_adapter_learns_and_the_loss_falls():
    unet, adapter, scheduler, batch = setup()
    frozen = {k: v.clone() for k, v in unet.state_dict().items()}
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    step = VMixTrainingStep(unet, adapter, scheduler)
    optimizer = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(25):  # the same noise and timesteps every step: the adapter can only fit this batch
        loss = step.loss(batch, torch.Generator().manual_seed(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is None for p in unet.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in unet.state_dict().items())
    changed = [k for k, v in adapter.state_dict().items() if not torch.equal(v, before[k])]
    assert "zero_proj.weight" in changed and "token_proj.weight" in changed and "value_projs.0.weight" in changed
    assert "aes_positive" not in changed and "aes_negative" not in changed  # AesEmb is fixed
    assert losses[-1] < 0.9 * losses[0], losses
    step.close()
    assert not has_vmix_hooks(unet)


def test_per_row_labels_reach_the_rows():
    unet, adapter, scheduler, batch = setup()
    with torch.no_grad():
        for p in adapter.zero_proj.parameters():
            p.normal_(0, 0.1)  # a trained-looking Z, so the labels matter
    step = VMixTrainingStep(unet, adapter, scheduler)
    same = step.loss(Batch(batch.latents, batch.context, batch.strengths), torch.Generator().manual_seed(2))
    flipped = step.loss(Batch(batch.latents, batch.context, 1 - batch.strengths), torch.Generator().manual_seed(2))
    step.close()
    assert not torch.equal(same, flipped)


def test_unsupported_prediction_type():
    unet, adapter, _, _ = setup()
    with pytest.raises(ValueError, match="unsupported prediction type 'sample'"):
        VMixTrainingStep(unet, adapter, DDPMScheduler(prediction_type="sample"))
