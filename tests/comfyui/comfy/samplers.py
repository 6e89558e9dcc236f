"""Stand-in for ComfyUI's ``comfy/samplers.py`` (0.8.0): how one denoising step batches its UNet calls.

``calc_cond_batch`` mirrors ``_calc_cond_batch``: the conds are queued in order (index 0 = positive, 1 = negative);
each call takes the first queued cond and every cond that can be concatenated with it, *in reverse queue order*, so
a joint call is ``[negative, positive]`` (uncond rows first). When memory is short only one fits per call (again the
negative first); ``split=True`` stands for that. Each call gets ``transformer_options``: a nested copy of the model's
``model_options["transformer_options"]`` (patch objects themselves are shared) plus ``cond_or_uncond`` (the index of
each chunk), ``uuids`` and ``sigmas`` (the step's sigma, one per latent, not repeated per chunk).

``sampling_function`` drops the negative when ``cond_scale`` is 1 (unless ``disable_cfg1_optimization``), then
combines ``uncond + (cond - uncond) · cond_scale``.

Simplifications: no areas, masks, hooks, ControlNet or model function wrappers; conds are plain contexts.
"""

from __future__ import annotations

import math
import uuid

import torch

KSAMPLER_NAMES = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2m", "dpmpp_sde"]
SAMPLER_NAMES = [*KSAMPLER_NAMES, "ddim", "uni_pc", "uni_pc_bh2"]  # a subset of ComfyUI's list, in its order
SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal"]


class KSampler:
    SCHEDULERS = SCHEDULER_NAMES
    SAMPLERS = SAMPLER_NAMES


def _nested_copy(options: dict) -> dict:
    return {k: _nested_copy(v) if isinstance(v, dict) else v for k, v in options.items()}


def _can_concat(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Contexts of lengths whose lcm is at most 4 times the shorter one are repeated to the lcm and joined."""
    if a.shape == b.shape:
        return True
    lcm = math.lcm(a.shape[1], b.shape[1])
    return a.shape[0] == b.shape[0] and a.shape[2] == b.shape[2] and lcm // min(a.shape[1], b.shape[1]) <= 4


def _cat(contexts: list[torch.Tensor]) -> torch.Tensor:
    length = math.lcm(*(c.shape[1] for c in contexts))
    return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in contexts])


def batches(conds: list[torch.Tensor | None], split: bool = False) -> list[list[int]]:
    """The chunk order of each UNet call: ``[[1, 0]]`` for a joint call, ``[[1], [0]]`` when split."""
    to_run = [(c, i) for i, c in enumerate(conds) if c is not None]
    calls = []
    while to_run:
        first = to_run[0][0]
        joinable = [x for x in range(len(to_run)) if _can_concat(to_run[x][0], first)]
        joinable.reverse()
        chosen = joinable[:1] if split else joinable
        calls.append([to_run.pop(x)[1] for x in chosen])
    return calls


def calc_cond_batch(
    model, conds: list[torch.Tensor | None], x: torch.Tensor, sigma: torch.Tensor, model_options: dict, split=False
) -> list[torch.Tensor]:
    """Denoised predictions for each cond (positive, negative) from ``model.apply_model``, batched as ComfyUI does."""
    outputs = [torch.zeros_like(x) for _ in conds]
    for roles in batches(conds, split):
        chunks = len(roles)
        transformer_options = _nested_copy(model_options.get("transformer_options", {}))
        transformer_options["cond_or_uncond"] = list(roles)
        transformer_options["uuids"] = [uuid.uuid4() for _ in roles]
        transformer_options["sigmas"] = sigma
        out = model.apply_model(
            torch.cat([x] * chunks),
            torch.cat([sigma] * chunks),
            c_crossattn=_cat([conds[r] for r in roles]),
            transformer_options=transformer_options,
        )
        for role, chunk in zip(roles, out.chunk(chunks), strict=True):
            outputs[role] = chunk
    return outputs


def sampling_function(model, x, sigma, uncond, cond, cond_scale, model_options, split=False) -> torch.Tensor:
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond = None
    cond_pred, uncond_pred = calc_cond_batch(model, [cond, uncond], x, sigma, model_options, split)
    if uncond is None:
        return cond_pred
    return uncond_pred + (cond_pred - uncond_pred) * cond_scale
