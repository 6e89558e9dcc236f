"""vmix_diffusers on tiny diffusers pipelines built in code: the helper gives what the web UI path (the script's
VMixRun on the equivalent ldm UNet, fed in A1111's row order) gives, leaves the pipeline bit-identical when it adds
nothing or is removed, and counts steps and finds the negative rows under diffusers' guidance batching."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from helpers import DIMENSIONS, random_adapter
from tiny_checkpoint import SDXL_UNET_PARAMS, TinyLdmModel, original_config, write_tokenizer
from transformers import CLIPTokenizer

from vmix_diffusers import apply_vmix
from vmix_ext.adapter import VMixAdapter
from vmix_ext.hooks import has_vmix_hooks
from vmix_ext.library import AdapterLibrary
from vmix_ext.session import VMixRun
from vmix_ext.settings import SettingsError, VMixSettings
from vmix_ext.weights import AdapterFileError, save_adapter
from vmix_train.checkpoint import load_single_file

STEPS = 4
GUIDANCE = 7.5
PROMPT = "a red fox"
SIZE = 16  # pixels; the tiny VAE halves each side, so latents are 8×8 as the tiny UNet was made for


@dataclass
class Tiny:
    model: TinyLdmModel  # the ldm twin (the web UI's UNet)
    pipe: object  # the diffusers pipeline built from the same checkpoint
    library: AdapterLibrary  # the web UI's adapter folder, holding "a" (a random adapter)
    adapter_path: str


def build(tmp_path_factory, family: str) -> Tiny:
    folder = tmp_path_factory.mktemp(family)
    model = TinyLdmModel(family=family)
    checkpoint = model.save(folder / "tiny.safetensors")
    tokenizer_folder = write_tokenizer(folder / "tokenizer")
    unet_params = SDXL_UNET_PARAMS if family == "sdxl" else None
    base = load_single_file(
        checkpoint, original_config=original_config(unet_params=unet_params, family=family), tokenizer=tokenizer_folder
    )
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_folder), model_max_length=77)
    scheduler = DDIMScheduler.from_config(
        base.scheduler.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    if family == "sdxl":
        tokenizer_2 = CLIPTokenizer.from_pretrained(str(tokenizer_folder), model_max_length=77, pad_token="a")
        pipe = StableDiffusionXLPipeline(
            vae=base.vae,
            text_encoder=base.text_encoder,
            text_encoder_2=base.text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=base.unet,
            scheduler=scheduler,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=base.vae,
            text_encoder=base.text_encoder,
            tokenizer=tokenizer,
            unet=base.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    (folder / "vmix").mkdir()
    adapter_path = folder / "vmix" / "a.safetensors"
    save_adapter(random_adapter(model.unet), adapter_path)
    return Tiny(model, pipe, AdapterLibrary(folder / "vmix"), str(adapter_path))


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return build(tmp_path_factory, "sd1")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return build(tmp_path_factory, "sdxl")


def start_latents(pipe, seed: int = 0) -> torch.Tensor:
    side = SIZE // pipe.vae_scale_factor
    return torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(seed))


def run_pipe(pipe, latents: torch.Tensor, guidance: float = GUIDANCE, output_type: str = "latent") -> torch.Tensor:
    with torch.no_grad():
        out = pipe(
            PROMPT,
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            latents=latents.clone(),
            output_type=output_type,
            return_dict=False,
        )
    return out[0]


@torch.no_grad()
def webui_latents(tiny: Tiny, settings: VMixSettings, latents: torch.Tensor) -> torch.Tensor:
    """The same DDIM + guidance loop on the ldm UNet with the script's VMixRun, fed as A1111 feeds it: prompt rows
    first, the negative prompt's rows last; the sampler's step and the negative context told every step."""
    pipe = tiny.pipe
    unet = tiny.model.unet
    sdxl = isinstance(pipe, StableDiffusionXLPipeline)
    if sdxl:
        cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(PROMPT, device="cpu")
        sizes = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=torch.float32)
        vector = tiny.model.sdxl_vector(torch.cat([pooled, uncond_pooled]), sizes)
    else:
        cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True)
        vector = None
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    run = VMixRun(settings, tiny.library)
    run.check_fits(unet)
    run.mixer.attach(unet)
    try:
        for i, t in enumerate(scheduler.timesteps):
            run.mixer.set_progress(i, STEPS)
            run.mixer.set_uncond_context(uncond)
            kwargs = {"y": vector} if sdxl else {}
            eps = unet(torch.cat([latents, latents]), t.repeat(2), context=torch.cat([cond, uncond]), **kwargs)
            eps_cond, eps_uncond = eps.chunk(2)
            latents = scheduler.step(eps_uncond + GUIDANCE * (eps_cond - eps_uncond), t, latents).prev_sample
    finally:
        run.close()
    return latents


CASES = {
    "all rows, every step": {"cond_only": False},
    "cond rows only": {"cond_only": True},
    "steps 1-2 of 4": {"start": 0.25, "end": 0.75},
    "cond only, second half": {"cond_only": True, "start": 0.5, "end": 1.0},
    "per-block λ": {"input_scale": 0.5, "middle_scale": 0.0, "output_scale": 2.0},
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_the_pipeline_with_vmix_equals_the_webui_path_on_the_ldm_unet(sd1, case):
    latents = start_latents(sd1.pipe)
    settings = VMixSettings(enabled=True, adapter="a", scale=0.8, dimensions="color, focus:0.5", **case)
    expected = webui_latents(sd1, settings, latents)
    with apply_vmix(sd1.pipe, sd1.adapter_path, scale=0.8, dimensions=["color", "focus:0.5"], **case) as vmix:
        got = run_pipe(sd1.pipe, latents)
        assert vmix.strengths == {"color": 1.0, "lighting": 0.0, "focus": 0.5}
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    plain = run_pipe(sd1.pipe, latents)
    assert (got - plain).abs().max() > 1e-2  # the adapter does change the result
    assert not has_vmix_hooks(sd1.pipe.unet)


def test_cond_only_and_the_window_change_what_is_mixed(sd1):
    latents = start_latents(sd1.pipe, seed=1)
    results = {}
    for name, case in CASES.items():
        with apply_vmix(sd1.pipe, sd1.adapter_path, **case):
            results[name] = run_pipe(sd1.pipe, latents)
    for a in CASES:
        for b in CASES:
            if a < b:
                assert (results[a] - results[b]).abs().max() > 1e-3, f"{a} and {b} must differ"


def test_without_guidance_every_row_is_conditional(sd1):
    """guidance_scale 1: diffusers makes no negative rows, so cond-only mixes the whole batch."""
    latents = start_latents(sd1.pipe, seed=2)
    with apply_vmix(sd1.pipe, sd1.adapter_path):
        all_rows = run_pipe(sd1.pipe, latents, guidance=1.0)
    with apply_vmix(sd1.pipe, sd1.adapter_path, cond_only=True):
        cond_only = run_pipe(sd1.pipe, latents, guidance=1.0)
    assert torch.equal(all_rows, cond_only)
    assert (all_rows - run_pipe(sd1.pipe, latents, guidance=1.0)).abs().max() > 1e-2


def test_untrained_adapter_zero_scale_and_removal_are_bit_identical(sd1):
    pipe = sd1.pipe
    latents = start_latents(pipe, seed=3)
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    plain = run_pipe(pipe, latents, output_type="pt")
    untrained = VMixAdapter.untrained(pipe.unet, DIMENSIONS, torch.randn(3, 768), torch.randn(3, 768), "sd1")
    with apply_vmix(pipe, untrained, cond_only=True, start=0.25):
        assert torch.equal(run_pipe(pipe, latents, output_type="pt"), plain)
    with apply_vmix(pipe, sd1.adapter_path, scale=0.0):
        assert torch.equal(run_pipe(pipe, latents, output_type="pt"), plain)
    vmix = apply_vmix(pipe, sd1.adapter_path, scale=2.0, cond_only=True, start=0.5)
    assert vmix.active and has_vmix_hooks(pipe.unet)
    assert not torch.equal(run_pipe(pipe, latents, output_type="pt"), plain)
    vmix.remove()
    vmix.remove()  # idempotent
    assert not vmix.active and not has_vmix_hooks(pipe.unet)
    assert torch.equal(run_pipe(pipe, latents, output_type="pt"), plain)
    assert all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())


def window_trace(pipe, vmix, call) -> list[bool]:
    """Whether each UNet call of ``call()`` was inside the step window (read after the helper's pre-hook)."""
    seen: list[bool] = []
    handle = pipe.unet.register_forward_pre_hook(lambda *_: seen.append(vmix.mixer.in_window()))
    try:
        call()
    finally:
        handle.remove()
    return seen


def test_the_step_window_counts_each_denoising_loop_from_its_start(sd1):
    pipe = sd1.pipe
    latents = start_latents(pipe)

    def interrupted() -> None:  # stopped by a step-end callback after 2 of 4 steps, as diffusers lets users stop
        def stop(pipeline, i, t, tensors):
            pipeline._interrupt = i == 1
            return tensors

        with torch.no_grad():
            pipe(
                PROMPT,
                height=SIZE,
                width=SIZE,
                num_inference_steps=STEPS,
                latents=latents.clone(),
                output_type="latent",
                callback_on_step_end=stop,
            )

    with apply_vmix(pipe, sd1.adapter_path, start=0.25, end=0.75) as vmix:
        twice = window_trace(pipe, vmix, lambda: (run_pipe(pipe, latents), run_pipe(pipe, latents)))
        assert twice == [False, True, True, False] * 2
        # The next loop starts from its own first step: the timestep goes up again.
        assert window_trace(pipe, vmix, lambda: (interrupted(), run_pipe(pipe, latents))) == [
            *(False, True),
            *(False, True, True, False),
        ]

    # img2img with strength 0.5 runs the last 2 of 4 steps: its loop is 2 steps long, as in A1111's img2img.
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)

    def edit() -> None:
        with torch.no_grad():
            image = torch.zeros(1, 3, SIZE, SIZE)
            img2img(PROMPT, image=image, strength=0.5, num_inference_steps=STEPS, output_type="latent")

    with apply_vmix(img2img, sd1.adapter_path, start=0.5) as vmix:
        assert window_trace(img2img, vmix, lambda: (edit(), edit())) == [False, True] * 2


def test_sdxl_pipeline_equals_the_webui_path(sdxl):
    latents = start_latents(sdxl.pipe)
    settings = VMixSettings(enabled=True, adapter="a", scale=1.2, dimensions="lighting", cond_only=True, end=0.75)
    expected = webui_latents(sdxl, settings, latents)
    with apply_vmix(sdxl.pipe, sdxl.adapter_path, scale=1.2, dimensions="lighting", cond_only=True, end=0.75):
        got = run_pipe(sdxl.pipe, latents)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (got - run_pipe(sdxl.pipe, latents)).abs().max() > 1e-2


def test_bad_requests_say_what_is_wrong(sd1, sdxl, tmp_path):
    with pytest.raises(AdapterFileError, match=r"a\.safetensors.*made for SDXL.*loaded model is SD 1\.x"):
        apply_vmix(sd1.pipe, sdxl.adapter_path)
    with pytest.raises(SettingsError, match=r"dimension.*texture.*not in this adapter; it has: color, lighting, focus"):
        apply_vmix(sd1.pipe, sd1.adapter_path, dimensions="texture")
    with pytest.raises(SettingsError, match="'start'"):
        apply_vmix(sd1.pipe, sd1.adapter_path, start=0.8, end=0.2)
    with pytest.raises(ValueError, match="need the pipeline"):
        apply_vmix(sd1.pipe.unet, sd1.adapter_path, cond_only=True)
    with pytest.raises(TypeError, match="needs a diffusers pipeline"):
        apply_vmix("pipe", sd1.adapter_path)
    with pytest.raises(AdapterFileError, match=r"missing\.safetensors.*not found"):
        apply_vmix(sd1.pipe, tmp_path / "missing.safetensors")
    sd1.pipe.fuse_qkv_projections()
    try:
        with pytest.raises(ValueError, match=r"fused.*unfuse_qkv_projections\(\)"):
            apply_vmix(sd1.pipe, sd1.adapter_path)
    finally:
        sd1.pipe.unfuse_qkv_projections()
    assert not has_vmix_hooks(sd1.pipe.unet)


def test_a_bare_unet_takes_scale_and_dimensions(sd1):
    unet = sd1.pipe.unet
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([500, 500]), torch.randn(2, 77, 768)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=context).sample
        with apply_vmix(unet, sd1.adapter_path, dimensions=[]):
            none_on = unet(x, t, encoder_hidden_states=context).sample
        with apply_vmix(sd1.pipe, sd1.adapter_path, dimensions=[]):  # the same through the pipeline
            assert torch.equal(unet(x, t, encoder_hidden_states=context).sample, none_on)
    assert (none_on - plain).abs().max() > 1e-3  # "off" is t̂_i, not nothing
