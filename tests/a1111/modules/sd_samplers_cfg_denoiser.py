"""Stand-in for modules/sd_samplers_cfg_denoiser.py (CFGDenoiser.forward) plus a toy Euler sampler standing in
for modules/sd_samplers_kdiffusion.py / sd_samplers_common.py (launch_sampling, callback_state)."""

from __future__ import annotations

from typing import Any

import torch

from modules import script_callbacks, shared
from modules.prompt_parser import DictWithShape

SIGMA_MAX = 14.6
SIGMA_MIN = 0.03


def catenate_conds(conds: list[Any]) -> Any:
    """Mirrors catenate_conds: tensors are concatenated; SDXL's dicts key by key."""
    if not isinstance(conds[0], dict):
        return torch.cat(conds)
    return DictWithShape({key: torch.cat([c[key] for c in conds]) for key in conds[0]})


def subscript_cond(cond: Any, a: int, b: int) -> Any:
    """Mirrors subscript_cond: rows a..b of a tensor, or of every entry of SDXL's dict."""
    if not isinstance(cond, dict):
        return cond[a:b]
    return DictWithShape({key: value[a:b] for key, value in cond.items()})


class InterruptedException(BaseException):
    """Mirrors sd_samplers_common.InterruptedException (caught by launch_sampling)."""


class CFGDenoiser(torch.nn.Module):
    """Mirrors sd_samplers_cfg_denoiser.CFGDenoiser: classifier-free guidance around the UNet."""

    def __init__(self, sampler: StandinSampler) -> None:
        super().__init__()
        self.sampler = sampler
        self.p: Any = None
        self.step = 0
        self.steps = 0
        self.total_steps = 0
        self.model_calls: list[int] = []
        """Stand-in helper: batch rows of every inner-model call (tests can check one call vs split calls)."""

    def inner_model(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        """Stands in for k-diffusion CompVisDenoiser + LatentDiffusion.apply_model: eps-prediction through
        sd_model.model.diffusion_model(x, timesteps, context=cond['c_crossattn'][0]); for SDXL's dict conditioning
        as sgm's OpenAIWrapper calls it: diffusion_model(x, timesteps, context=cond['crossattn'], y=cond['vector'])."""
        self.model_calls.append(int(x.shape[0]))
        c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
        t = (sigma / SIGMA_MAX * 999.0).to(x.dtype)
        extra = {}
        if "crossattn" in cond:
            context = cond["crossattn"]
            if cond.get("vector") is not None:
                extra["y"] = cond["vector"]
        else:
            context = torch.cat(cond["c_crossattn"], 1)
        unet = self.sampler.sd_model.model.diffusion_model
        eps = unet(x * c_in[:, None, None, None], t, context=context, **extra)
        return x - eps * sigma[:, None, None, None]

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        uncond: torch.Tensor,
        cond: torch.Tensor,
        cond_scale: float,
        s_min_uncond: float,
        image_cond: torch.Tensor,
    ) -> torch.Tensor:
        """Mirrors CFGDenoiser.forward: cond rows first, uncond rows last; cfg_denoiser callback; skip-uncond
        (opts.skip_early_cond / NGMS); one call if opts.batch_cond_uncond, else per-batch_size chunks."""
        state, opts = shared.state, shared.opts
        if state.interrupted or state.skipped:
            raise InterruptedException
        batch_size = x.shape[0]
        conds_list = [[(i, 1.0)] for i in range(batch_size)]
        tensor = cond
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        image_cond_in = torch.cat([image_cond, image_cond])

        params = script_callbacks.CFGDenoiserParams(
            x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps, tensor, uncond, self
        )
        script_callbacks.cfg_denoiser_callback(params)
        x_in, image_cond_in, sigma_in = params.x, params.image_cond, params.sigma
        tensor, uncond = params.text_cond, params.text_uncond

        skip_uncond = False
        if opts.skip_early_cond != 0.0 and self.step / self.total_steps <= opts.skip_early_cond:
            skip_uncond = True
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            skip_uncond = True
            self.p.extra_generation_params["NGMS"] = s_min_uncond
        if skip_uncond:
            x_in = x_in[:-batch_size]
            sigma_in = sigma_in[:-batch_size]

        def make_cond(c_crossattn: Any, c_concat: torch.Tensor) -> dict:
            if isinstance(uncond, dict):  # SDXL: the dict's own keys plus the image conditioning
                return {**c_crossattn, "c_concat": [c_concat]}
            return {"c_crossattn": [c_crossattn], "c_concat": [c_concat]}

        if tensor.shape[1] == uncond.shape[1] or skip_uncond:
            cond_in = tensor if skip_uncond else catenate_conds([tensor, uncond])
            if opts.batch_cond_uncond:
                x_out = self.inner_model(x_in, sigma_in, cond=make_cond(cond_in, image_cond_in))
            else:
                x_out = torch.zeros_like(x_in)
                for a in range(0, x_out.shape[0], batch_size):
                    b = a + batch_size
                    x_out[a:b] = self.inner_model(
                        x_in[a:b], sigma_in[a:b], cond=make_cond(subscript_cond(cond_in, a, b), image_cond_in[a:b])
                    )
        else:
            x_out = torch.zeros_like(x_in)
            chunk = batch_size * 2 if opts.batch_cond_uncond else batch_size
            for a in range(0, tensor.shape[0], chunk):
                b = min(a + chunk, tensor.shape[0])
                c_crossattn = subscript_cond(tensor, a, b)
                x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b], cond=make_cond(c_crossattn, image_cond_in[a:b]))
            if not skip_uncond:
                n = uncond.shape[0]
                x_out[-n:] = self.inner_model(x_in[-n:], sigma_in[-n:], cond=make_cond(uncond, image_cond_in[-n:]))

        if skip_uncond:
            x_out = torch.cat([x_out, torch.cat([x_out[i : i + 1] for i in range(batch_size)])])

        script_callbacks.cfg_denoised_callback(
            script_callbacks.CFGDenoisedParams(x_out, state.sampling_step, state.sampling_steps, self.inner_model)
        )

        scale = 1.0 if skip_uncond else cond_scale
        denoised_uncond = x_out[-uncond.shape[0] :] if not skip_uncond else x_out[-batch_size:]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * scale)

        after = script_callbacks.AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        script_callbacks.cfg_after_cfg_callback(after)
        self.step += 1
        return after.x


class StandinSampler:
    """Stands in for sd_samplers_kdiffusion.KDiffusionSampler with an Euler loop; binds shared.sd_model at creation
    (host: sd_samplers.create_sampler(name, p.sd_model))."""

    def __init__(self, sd_model: Any) -> None:
        self.sd_model = sd_model
        self.model_wrap_cfg = CFGDenoiser(self)
        self.last_latent: torch.Tensor | None = None

    def launch_sampling(self, steps: int, x: torch.Tensor, sigmas: torch.Tensor, extra: dict, p: Any) -> torch.Tensor:
        """Mirrors Sampler.launch_sampling + callback_state: state.sampling_steps=steps, sampling_step=0 first,
        then sampling_step=i after step i — so the denoiser of step i>0 sees sampling_step == i-1."""
        shared.state.sampling_steps = steps
        shared.state.sampling_step = 0
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = steps
        self.last_latent = x
        try:
            for i in range(len(sigmas) - 1):
                if getattr(p, "_standin_fail_in_sampling", False) and i == (len(sigmas) - 1) // 2:
                    raise RuntimeError("stand-in sampler failure requested by p._standin_fail_in_sampling")
                s_in = sigmas[i] * x.new_ones([x.shape[0]])
                denoised = self.model_wrap_cfg(x, s_in, **extra)
                self.last_latent = denoised
                shared.state.sampling_step = i
                x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
            return x
        except InterruptedException:
            return self.last_latent

    @staticmethod
    def get_sigmas(steps: int) -> torch.Tensor:
        """A Karras-like decreasing schedule of steps+1 sigmas ending in 0."""
        ramp = torch.linspace(0, 1, steps)
        rho = 7.0
        sig = (SIGMA_MAX ** (1 / rho) + ramp * (SIGMA_MIN ** (1 / rho) - SIGMA_MAX ** (1 / rho))) ** rho
        return torch.cat([sig, sig.new_zeros([1])])

    def _extra(self, p: Any, c: Any, uc: Any, image_conditioning: Any) -> dict:
        return {
            "cond": c,
            "uncond": uc,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": p.s_min_uncond or 0.0,
            "image_cond": image_conditioning,
        }

    def sample(
        self, p: Any, x: torch.Tensor, c: Any, uc: Any, steps: int | None = None, image_conditioning: Any = None
    ) -> torch.Tensor:
        """Mirrors KDiffusionSampler.sample: x is unit noise scaled by sigma_max."""
        steps = steps or p.steps
        sigmas = self.get_sigmas(steps)
        return self.launch_sampling(steps, x * sigmas[0], sigmas, self._extra(p, c, uc, image_conditioning), p)

    def sample_img2img(
        self,
        p: Any,
        x: torch.Tensor,
        noise: torch.Tensor,
        c: Any,
        uc: Any,
        steps: int | None = None,
        image_conditioning: Any = None,
    ) -> torch.Tensor:
        """Mirrors KDiffusionSampler.sample_img2img + setup_img2img_steps: t_enc+1 steps from a truncated schedule."""
        if shared.opts.img2img_fix_steps or steps is not None:
            requested = steps or p.steps
            steps = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
            t_enc = requested - 1
        else:
            steps = p.steps
            t_enc = int(min(p.denoising_strength, 0.999) * steps)
        sigmas = self.get_sigmas(steps)
        sigma_sched = sigmas[steps - t_enc - 1 :]
        xi = x + noise * sigma_sched[0]
        return self.launch_sampling(t_enc + 1, xi, sigma_sched, self._extra(p, c, uc, image_conditioning), p)
