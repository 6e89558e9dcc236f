"""Helpers that run a real ldm UNet the way Forge runs its own UNet (tests only; not a file of Forge).

Forge (lllyasviel/stable-diffusion-webui-forge, ``backend/``) does not use ldm's modules: its UNet is
``backend/nn/unet.py: IntegratedUNet2DConditionModel``, with the same module tree and names as ldm's ``UNetModel``
(``input_blocks.N.1.transformer_blocks.i.attn2`` ...). What differs is the cross-attention call: Forge's
``BasicTransformerBlock._forward`` looks up an attn2 *replace* patch by key, computes q, k, v with the layer's own
projections, hands them to the patch together with ``extra_options`` and sends the result through ``to_out``.

That call is the same on every host of the Forge family and is written once, in ``tests/forge_family.py`` (keys,
row roles, the call site); :data:`FORGE` holds Forge's part of it (its attention function and its
``extra_options`` keys), and the ``forge_*`` functions here are that call site for Forge. What is Forge's alone
(the sampler's batching, ``ForgeOperations.Linear``, the engines behind ``p.sd_model``) stays here.
"""

from __future__ import annotations

import functools
import math

import torch
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.operations import ForgeOperations
from backend.patcher.unet import UnetPatcher
from forge_family import (
    COND,
    UNCOND,
    compute_cond_indices,
    compute_cond_mark,
    cross_attention,
    forge_key,
    forge_layers,
    host_attention,
    ip_adapter_keys,
    ldm_path,
    random_image_tokens,
    random_ip_adapter,
    reset_before_sampling,
    spatial_transformer_order,
    transformer_options,
    unet_forward,
)
from forge_hosts import HOSTS
from torch import nn

FORGE_COMMIT = "dfdcbab685e57677014f05a3309b48cc87383167"  # 2025-06-26, the Forge source these stand-ins were read from

__all__ = [
    "COND",
    "UNCOND",
    "compute_cond_indices",
    "compute_cond_mark",
    "forge_key",
    "forge_layers",
    "ldm_path",
    "reset_before_sampling",
    "spatial_transformer_order",
]

# Forge's attn2 call: backend/nn/unet.py (BasicTransformerBlock._forward; CrossAttention.forward calls
# backend.attention.attention_function, rebound at start-up, so it is read at call time), with the extra options of
# backend/sampling/sampling_function.py: calc_cond_uncond_batch (cond_mark, cond_indices, uncond_indices).
FORGE = HOSTS["Forge"].site


# The shared call site with Forge's data: forge_transformer_options(model_options, cond_or_uncond, sigmas) is
# calc_cond_uncond_batch's per-call transformer_options; forge_cross_attention(layer, x, context, transformer_options,
# block, block_index, transformer_index) one attn2 call of BasicTransformerBlock._forward; forge_attention(unet,
# transformer_options) a context in which every attn2 of an ldm UNet makes that call; forge_unet_forward(unet, x,
# timesteps, context, model_options, cond_or_uncond, sigmas=None) one call of IntegratedUNet2DConditionModel.forward.
forge_transformer_options = functools.partial(transformer_options, FORGE)
forge_cross_attention = functools.partial(cross_attention, FORGE)
forge_attention = functools.partial(host_attention, FORGE)
forge_unet_forward = functools.partial(unet_forward, FORGE)


def _lcm_concat(contexts: list[torch.Tensor]) -> torch.Tensor:
    """Mirrors ``backend/sampling/condition.py: ConditionCrossAttn.concat``: repeat each context along tokens up to
    the least common multiple of the lengths, then concatenate along the batch."""
    length = 1
    for c in contexts:
        length = length * c.shape[1] // math.gcd(length, c.shape[1])
    return torch.cat([c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in contexts])


def _can_concat(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Mirrors ``ConditionCrossAttn.can_concat``: same batch and width, and lcm/min of the lengths at most 4."""
    if a.shape == b.shape:
        return True
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        return False
    lcm = a.shape[1] * b.shape[1] // math.gcd(a.shape[1], b.shape[1])
    return lcm // min(a.shape[1], b.shape[1]) <= 4


def forge_cfg_batches(
    cond_contexts: torch.Tensor | list[torch.Tensor],
    uncond_context: torch.Tensor | None,
    cond_scale: float = 7.0,
    split: bool = False,
    disable_cfg1_optimization: bool = False,
) -> list[tuple[torch.Tensor, list[int]]]:
    """The UNet calls Forge makes for one denoising step: ``[(context, cond_or_uncond), ...]`` in call order.

    Mirrors ``sampling_function.py``: ``sampling_function_inner`` drops the uncond when ``cond_scale`` is 1 (unless
    ``disable_cfg1_optimization``), and ``calc_cond_uncond_batch`` queues the cond entries (several with AND
    prompts) then the uncond, and pops the concatenable ones in *reverse* order, so a joint call is
    ``[UNCOND, COND, ...]`` (uncond rows first). ``split=True`` stands for the low-memory case where only one
    entry fits per call (again uncond first). Contexts of different token lengths are repeated to their lcm when
    joined. Each context is (latent batch, tokens, width).
    """
    conds = [cond_contexts] if isinstance(cond_contexts, torch.Tensor) else list(cond_contexts)
    to_run = [(c, COND) for c in conds]
    if uncond_context is not None and (not math.isclose(cond_scale, 1.0) or disable_cfg1_optimization):
        to_run.append((uncond_context, UNCOND))
    calls = []
    while to_run:
        first = to_run[0][0]
        joinable = [i for i, (c, _) in enumerate(to_run) if _can_concat(c, first)]
        joinable.reverse()
        chosen = joinable[:1] if split else joinable
        picked = [to_run.pop(i) for i in chosen]
        calls.append((_lcm_concat([c for c, _ in picked]), [role for _, role in picked]))
    return calls


def forge_calc_cond_uncond_batch(
    unet_patcher: UnetPatcher,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    cond_context: torch.Tensor | list[torch.Tensor],
    uncond_context: torch.Tensor | None,
    cond_scale: float = 7.0,
    sigmas: torch.Tensor | None = None,
    split: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's UNet work as Forge does it: ``(cond_pred, uncond_pred)`` as raw UNet outputs.

    Mirrors the batching and accumulation of ``sampling_function.py: calc_cond_uncond_batch`` (without areas, masks,
    ControlNet or ``KModel.apply_model``'s input scaling): calls planned by :func:`forge_cfg_batches`, each run by
    :func:`forge_unet_forward` on ``unet_patcher.model.diffusion_model`` with ``unet_patcher.model_options``.
    Several cond contexts (AND prompts) are averaged; ``uncond_pred`` is zeros when the uncond is skipped.
    """
    unet = unet_patcher.model.diffusion_model
    out_cond, n_cond = torch.zeros_like(x), 0
    out_uncond, n_uncond = torch.zeros_like(x), 0
    for context, roles in forge_cfg_batches(cond_context, uncond_context, cond_scale, split=split):
        chunks = len(roles)
        x_in, t_in = x.repeat(chunks, 1, 1, 1), timesteps.repeat(chunks)
        output = forge_unet_forward(unet, x_in, t_in, context, unet_patcher.model_options, roles, sigmas)
        for role, out in zip(roles, output.chunk(chunks), strict=True):
            if role == COND:
                out_cond, n_cond = out_cond + out, n_cond + 1
            else:
                out_uncond, n_uncond = out_uncond + out, n_uncond + 1
    return out_cond / max(n_cond, 1), out_uncond / max(n_uncond, 1)


def forge_linears(unet: nn.Module) -> nn.Module:
    """Make ``unet`` look like a Forge-built one: every ``nn.Linear`` becomes a ``ForgeOperations.Linear``
    (``backend/operations.py``) sharing the same weight and bias tensors. Changes ``unet`` in place; returns it.

    Outputs are unchanged; what changes is that ``isinstance(attn2.to_v, nn.Linear)`` is False, as in Forge.
    """
    for module in list(unet.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                forge_linear = ForgeOperations.Linear(child.in_features, child.out_features)
                forge_linear.weight = child.weight
                forge_linear.bias = child.bias
                setattr(module, child_name, forge_linear)
    return unet


# --- p.sd_model ------------------------------------------------------------------------------------------------------


class StableDiffusion(ForgeDiffusionEngine):
    """Mirrors ``backend/diffusion_engine/sd15.py: StableDiffusion`` (flag only)."""

    def __init__(self):
        super().__init__()
        self.is_sd1 = True


class StableDiffusion2(ForgeDiffusionEngine):
    """Mirrors ``backend/diffusion_engine/sd20.py: StableDiffusion2`` (flag only)."""

    def __init__(self):
        super().__init__()
        self.is_sd2 = True


class StableDiffusionXL(ForgeDiffusionEngine):
    """Mirrors ``backend/diffusion_engine/sdxl.py: StableDiffusionXL`` (flag only)."""

    def __init__(self):
        super().__init__()
        self.is_sdxl = True


class StableDiffusionXLRefiner(ForgeDiffusionEngine):
    """Mirrors ``backend/diffusion_engine/sdxl.py: StableDiffusionXLRefiner``: also ``is_sdxl = True``."""

    def __init__(self):
        super().__init__()
        self.is_sdxl = True


class StableDiffusion3(ForgeDiffusionEngine):
    """Mirrors ``backend/diffusion_engine/sd35.py: StableDiffusion3`` (flag only; its model is an MMDiT)."""

    def __init__(self):
        super().__init__()
        self.is_sd3 = True


class Flux(ForgeDiffusionEngine):
    """Mirrors ``backend/diffusion_engine/flux.py: Flux``: no legacy flag is set."""


class Chroma(ForgeDiffusionEngine):
    """Mirrors ``backend/diffusion_engine/chroma.py: Chroma``: no legacy flag is set."""


ENGINES = {
    "sd1": StableDiffusion,
    "sd2": StableDiffusion2,
    "sdxl": StableDiffusionXL,
    "sdxl_refiner": StableDiffusionXLRefiner,
    "sd3": StableDiffusion3,
    "flux": Flux,
    "chroma": Chroma,
}


def make_forge_sd_model(unet: nn.Module, family: str = "sd1") -> ForgeDiffusionEngine:
    """A ``p.sd_model`` as Forge builds it: the family's engine with ``forge_objects``, ``forge_objects_original``
    and ``forge_objects_after_applying_lora`` all pointing at one ``UnetPatcher`` around ``unet``.

    Mirrors the constructors in ``backend/diffusion_engine/*.py``. For sd3/flux/chroma pass any module: Forge's
    real models there (MMDiTX, IntegratedFluxTransformer2DModel, IntegratedChromaTransformer2DModel) have no attn2.
    """
    engine = ENGINES[family]()
    engine.forge_objects = ForgeObjects(unet=UnetPatcher.from_model(unet), clip=None, vae=None, clipvision=None)
    engine.forge_objects_original = engine.forge_objects.shallow_copy()
    engine.forge_objects_after_applying_lora = engine.forge_objects.shallow_copy()
    return engine


# --- Forge's built-in IP-Adapter (the shared stand-in tests/lib_ipadapter), registered first ------------------------


class CallLog(list):
    """A list of calls that survives ``UnetPatcher.clone()``'s deep copy as the same object."""

    def __deepcopy__(self, memo):
        return self


def register_fake_ipadapter(
    unet_patcher: UnetPatcher,
    two_part_keys: bool = True,
    tokens: int = 4,
    weight: float = 1.0,
    seed: int = 7,
    log: CallLog | None = None,
) -> UnetPatcher:
    """Apply the built-in IP-Adapter's stand-in (``lib_ipadapter.IPAdapterPlus.IPAdapterApply``) to every attn2 of the
    patcher's UNet with random projections and image tokens, and return its new patcher (a clone: Forge's
    ``apply_ipadapter`` writes into ``work_model = model.clone()`` in place, or calls ``set_new_condition`` on a patch
    already under a key). SD 1.x/2.x use the 2-part keys ``("input", id)``, ``("middle", 0)``, ``("output", id)``
    (``two_part_keys=True``); SDXL uses 3-part keys. Each new patch appends ``(number, sorted extra_options keys)``
    to ``log`` per call.
    """
    from lib_ipadapter.IPAdapterPlus import IPAdapterApply

    unet = unet_patcher.model.diffusion_model
    keys = ip_adapter_keys(unet, three_part=not two_part_keys)
    width = next(iter(forge_layers(unet).values()))["layer"].to_k.in_features
    state = random_ip_adapter(unet, keys, seed)
    before = unet_patcher.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    (work_model,) = IPAdapterApply().apply_ipadapter(
        state, unet_patcher, weight, embeds=random_image_tokens(width, tokens, seed + 1), keys=keys
    )
    shared_log = CallLog() if log is None else log
    for key, patch in work_model.model_options["transformer_options"]["patches_replace"]["attn2"].items():
        if key not in before:
            patch.calls = shared_log
    return work_model
