"""Helpers that run a real ldm UNet the way Forge runs its own UNet (tests only; not a file of Forge).

Forge (lllyasviel/stable-diffusion-webui-forge, ``backend/``) does not use ldm's modules: its UNet is
``backend/nn/unet.py: IntegratedUNet2DConditionModel``, with the same module tree and names as ldm's ``UNetModel``
(``input_blocks.N.1.transformer_blocks.i.attn2`` ...). What differs is the cross-attention call: Forge's
``BasicTransformerBlock._forward`` looks up an attn2 *replace* patch by key, computes q, k, v with the layer's own
projections, hands them to the patch together with ``extra_options`` and sends the result through ``to_out``.

This module reproduces that call around the projections of a real ``ldm.modules.attention.CrossAttention``, so a
whole ldm UNet can be run "as Forge would" for a given ``UnetPatcher.model_options`` and batch of row roles.

Key convention (``backend/nn/unet.py``): the UNet sets ``transformer_options["block"]`` to ``("input", id)`` for
``input_blocks[id]``, ``("middle", 0)`` for ``middle_block`` and ``("output", id)`` for ``output_blocks[id]``; the
SpatialTransformer sets ``transformer_options["block_index"]`` to the index of the BasicTransformerBlock inside it.
The replace key is ``(block[0], block[1], block_index)``, with a fallback to the 2-tuple ``block``. Hence::

    input_blocks.N.1.transformer_blocks.i.attn2   -> ("input", N, i)
    middle_block.1.transformer_blocks.i.attn2     -> ("middle", 0, i)
    output_blocks.N.1.transformer_blocks.i.attn2  -> ("output", N, i)

``transformer_index`` is a different number: a running count of SpatialTransformer modules in execution order
(input blocks, middle, output blocks), reset to 0 at the start of every UNet call.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator

import torch
from backend import attention
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.operations import ForgeOperations
from backend.patcher.unet import UnetPatcher
from torch import nn

FORGE_COMMIT = "dfdcbab685e57677014f05a3309b48cc87383167"  # 2025-06-26, the Forge source these stand-ins were read from
COND, UNCOND = 0, 1  # values in cond_or_uncond (backend/sampling/sampling_function.py: calc_cond_uncond_batch)

_ATTN2_PATH = re.compile(
    r"^(input_blocks|middle_block|output_blocks)\.(?:(\d+)\.)?\d+\.transformer_blocks\.(\d+)\.attn2$"
)
_BLOCK_NAMES = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}


# --- keys --------------------------------------------------------------------------------------------------------


def forge_key(path: str) -> tuple[str, int, int]:
    """The Forge attn2 replace key ``(block_name, number, block_index)`` of an ldm ``...attn2`` module path.

    Derived from ``backend/nn/unet.py``: ``IntegratedUNet2DConditionModel.forward`` (block name and number) and
    ``SpatialTransformer.forward`` (block_index = position in ``transformer_blocks``).
    """
    match = _ATTN2_PATH.match(path)
    if match is None:
        raise ValueError(f"not an ldm UNet cross-attention path: {path!r}")
    part, number, index = match.groups()
    return _BLOCK_NAMES[part], 0 if part == "middle_block" else int(number), int(index)


def ldm_path(key: tuple) -> str:
    """Inverse of :func:`forge_key` for 3-tuple keys (the SpatialTransformer sits at position 1 of its block)."""
    name, number, index = key
    if name == "middle":
        return f"middle_block.1.transformer_blocks.{index}.attn2"
    return f"{name}_blocks.{number}.1.transformer_blocks.{index}.attn2"


def spatial_transformer_order(unet: nn.Module) -> dict[str, int]:
    """ldm path of each SpatialTransformer → the ``transformer_index`` Forge's UNet shows while it runs.

    Mirrors the counter of ``backend/nn/unet.py``: set to 0 in ``IntegratedUNet2DConditionModel.forward`` and
    incremented by ``TimestepEmbedSequential.forward`` after every SpatialTransformer, in execution order.
    """
    order: dict[str, int] = {}
    blocks = [(f"input_blocks.{i}", b) for i, b in enumerate(unet.input_blocks)]
    blocks.append(("middle_block", unet.middle_block))
    blocks += [(f"output_blocks.{i}", b) for i, b in enumerate(unet.output_blocks)]
    for prefix, block in blocks:
        for j, layer in enumerate(block):
            if hasattr(layer, "transformer_blocks"):
                order[f"{prefix}.{j}"] = len(order)
    return order


def forge_layers(unet: nn.Module) -> dict[str, dict]:
    """Every attn2 of an ldm UNet with what Forge knows about it while it runs.

    Returns ``{ldm path: {"layer", "key", "block", "block_index", "transformer_index", "n_heads", "dim_head"}}``.
    """
    order = spatial_transformer_order(unet)
    layers = {}
    for path, module in unet.named_modules():
        if not path.endswith(".attn2"):
            continue
        key = forge_key(path)
        transformer_path = path.split(".transformer_blocks.")[0]
        layers[path] = {
            "layer": module,
            "key": key,
            "block": key[:2],
            "block_index": key[2],
            "transformer_index": order[transformer_path],
            "n_heads": module.heads,
            "dim_head": module.to_q.out_features // module.heads,
        }
    return layers


# --- sampling_function: row roles --------------------------------------------------------------------------------


def compute_cond_mark(cond_or_uncond, sigmas):
    """Mirrors ``backend/sampling/sampling_function.py: compute_cond_mark``: one 0/1 per row (1 = uncond)."""
    rows = int(sigmas.shape[0])
    marks = [float(role) for role in cond_or_uncond for _ in range(rows)]
    return torch.tensor(marks).to(sigmas)


def compute_cond_indices(cond_or_uncond, sigmas):
    """Mirrors ``sampling_function.py: compute_cond_indices``: row indices of cond chunks and of uncond chunks."""
    rows = int(sigmas.shape[0])
    cond_indices, uncond_indices = [], []
    for chunk, role in enumerate(cond_or_uncond):
        (cond_indices if role == COND else uncond_indices).extend(range(chunk * rows, (chunk + 1) * rows))
    return cond_indices, uncond_indices


def forge_transformer_options(model_options: dict, cond_or_uncond: list[int], sigmas: torch.Tensor) -> dict:
    """The per-call ``transformer_options`` that ``calc_cond_uncond_batch`` hands to the UNet.

    Mirrors ``sampling_function.py: calc_cond_uncond_batch``: a shallow copy of ``model_options["transformer_options"]``
    plus ``cond_or_uncond`` (one role per chunk), ``sigmas`` (the sampler's sigma, one per latent, NOT repeated per
    chunk), ``cond_mark`` and ``cond_indices`` / ``uncond_indices`` (per row).
    """
    options = dict(model_options.get("transformer_options", {}))
    options["cond_or_uncond"] = list(cond_or_uncond)
    options["sigmas"] = sigmas
    options["cond_mark"] = compute_cond_mark(cond_or_uncond, sigmas)
    options["cond_indices"], options["uncond_indices"] = compute_cond_indices(cond_or_uncond, sigmas)
    return options


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


# --- BasicTransformerBlock: the attn2 call ------------------------------------------------------------------------


def forge_cross_attention(
    layer: nn.Module,
    x: torch.Tensor,
    context: torch.Tensor,
    transformer_options: dict,
    block: tuple[str, int] = ("input", 1),
    block_index: int = 0,
    transformer_index: int | None = None,
) -> torch.Tensor:
    """One attn2 call as Forge makes it; returns the layer's output after ``to_out`` (before the residual add).

    Mirrors ``backend/nn/unet.py: BasicTransformerBlock._forward`` (attn2 part) with ``CrossAttention.forward``:

    1. ``block`` / ``block_index`` (and ``transformer_index`` when given) are written into ``transformer_options``,
       as the UNet and SpatialTransformer do; ``extra_options`` is a shallow copy of every key except ``patches``
       and ``patches_replace``, plus ``n_heads`` and ``dim_head``.
    2. ``patches["attn2_patch"]`` functions run first: ``n, context, value = p(n, context, value, extra_options)``.
    3. The replace patch is looked up under ``(block[0], block[1], block_index)``, then under ``block``. If found:
       ``q = to_q(n)``, ``k = to_k(context)``, ``v = to_v(value or context)``, ``out = patch(q, k, v, extra_options)``.
       Otherwise ``out = attention_function(q, k, v, heads)``.
    4. ``to_out(out)``, then ``patches["attn2_output_patch"]``: ``n = p(n, extra_options)``.

    ``layer`` is anything with ``to_q``, ``to_k``, ``to_v``, ``to_out`` and ``heads`` (e.g. ldm's CrossAttention).
    """
    transformer_options["block"] = block
    transformer_options["block_index"] = block_index
    if transformer_index is not None:
        transformer_options["transformer_index"] = transformer_index
    patches = transformer_options.get("patches", {})
    replace = transformer_options.get("patches_replace", {})
    extra_options = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
    extra_options["n_heads"] = layer.heads
    extra_options["dim_head"] = layer.to_q.out_features // layer.heads

    n, value = x, None
    if "attn2_patch" in patches:
        value = context
        for p in patches["attn2_patch"]:
            n, context, value = p(n, context, value, extra_options)

    attn2_replace = replace.get("attn2", {})
    key = (block[0], block[1], block_index)
    if key not in attn2_replace:
        key = block
    q = layer.to_q(n)
    k = layer.to_k(context)
    v = layer.to_v(context if value is None else value)
    if key in attn2_replace:
        out = attn2_replace[key](q, k, v, extra_options)
    else:
        out = attention.attention_function(q, k, v, layer.heads, None)
    n = layer.to_out(out)

    for p in patches.get("attn2_output_patch", []):
        n = p(n, extra_options)
    return n


@contextlib.contextmanager
def forge_attention(unet: nn.Module, transformer_options: dict) -> Iterator[dict[str, dict]]:
    """Within the block, every attn2 of ``unet`` runs :func:`forge_cross_attention` with ``transformer_options``.

    Each layer's ``forward`` is replaced on the instance (and restored on exit); the keys, ``block_index`` and
    ``transformer_index`` come from :func:`forge_layers`. Yields that table.
    """
    layers = forge_layers(unet)
    for info in layers.values():
        layer = info["layer"]

        def forward(x, context=None, mask=None, _layer=layer, _info=info):
            del mask
            return forge_cross_attention(
                _layer,
                x,
                x if context is None else context,
                transformer_options,
                block=_info["block"],
                block_index=_info["block_index"],
                transformer_index=_info["transformer_index"],
            )

        layer.forward = forward
    try:
        yield layers
    finally:
        for info in layers.values():
            info["layer"].__dict__.pop("forward", None)


def forge_unet_forward(
    unet: nn.Module,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    context: torch.Tensor | list[torch.Tensor],
    model_options: dict,
    cond_or_uncond: list[int],
    sigmas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run an ldm UNet for one Forge UNet call: ``x`` holds ``len(cond_or_uncond)`` chunks of equal size.

    ``model_options`` is a ``UnetPatcher.model_options``; ``cond_or_uncond`` gives each chunk's role in row order
    (``[1, 0]`` = uncond rows then cond rows, Forge's usual joint call). ``sigmas`` is one sigma per latent (the
    chunk size); it defaults to ones. ``transformer_options`` is built by :func:`forge_transformer_options`, and
    ``original_shape`` / ``transformer_index`` are set as ``IntegratedUNet2DConditionModel.forward`` does.
    A list ``context`` is passed through (ldm wants one context per transformer block when depth > 1).
    """
    chunks = len(cond_or_uncond)
    if x.shape[0] % chunks:
        raise ValueError(f"batch {x.shape[0]} is not a multiple of {chunks} chunks")
    if sigmas is None:
        sigmas = torch.ones(x.shape[0] // chunks, dtype=x.dtype)
    transformer_options = forge_transformer_options(model_options, cond_or_uncond, sigmas)
    transformer_options["original_shape"] = list(x.shape)
    transformer_options["transformer_index"] = 0
    with forge_attention(unet, transformer_options):
        return unet(x, timesteps, context)


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


def reset_before_sampling(sd_model: ForgeDiffusionEngine) -> None:
    """Mirrors ``modules/processing.py`` before every ``process_before_every_sampling`` call (txt2img, img2img and
    the hires pass): ``sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()``, which
    drops whatever UnetPatcher a script assigned during the previous pass."""
    sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()


# --- a pre-existing attn2 replace patch, shaped like Forge's IP-Adapter ----------------------------------------------


class CallLog(list):
    """A list of calls that survives ``UnetPatcher.clone()``'s deep copy as the same object."""

    def __deepcopy__(self, memo):
        return self


class FakeIPAdapterPatch:
    """Shaped like ``extensions-builtin/sd_forge_ipadapter/lib_ipadapter/IPAdapterPlus.py: CrossAttentionPatch``.

    A callable object ``patch(q, k, v, extra_options) -> out`` (no ``to_out``): ``out`` is the host attention of
    q, k, v plus ``weight`` × attention of q over extra image tokens whose keys/values come from its own
    projections, one set for cond rows and one for uncond rows, laid out by ``extra_options["cond_or_uncond"]``.
    It is inactive when ``extra_options["sigmas"][0]`` is outside ``[sigma_end, sigma_start]``. A second
    registration on the same key is stored with :meth:`set_new_condition`, as in Forge. ``log`` records
    ``(key, sorted extra_options keys)`` for each call.
    """

    def __init__(
        self, key, to_k_ip, to_v_ip, cond, uncond, weight=1.0, sigma_start=999999999.9, sigma_end=0.0, log=None
    ):
        self.key = key
        self.to_k_ip, self.to_v_ip = to_k_ip, to_v_ip
        self.conditions = [(cond, uncond, weight, sigma_start, sigma_end)]
        self.log = CallLog() if log is None else log

    def set_new_condition(self, cond, uncond, weight=1.0, sigma_start=999999999.9, sigma_end=0.0):
        """Like ``CrossAttentionPatch.set_new_condition``: one more image condition on the same layer."""
        self.conditions.append((cond, uncond, weight, sigma_start, sigma_end))

    def __call__(self, q, k, v, extra_options):
        self.log.append((self.key, sorted(extra_options)))
        heads = extra_options["n_heads"]
        roles = extra_options["cond_or_uncond"]
        sigma = extra_options["sigmas"][0].item() if "sigmas" in extra_options else 999999999.9
        rows_per_chunk = q.shape[0] // len(roles)
        out = attention.attention_function(q, k, v, heads)
        for cond, uncond, weight, sigma_start, sigma_end in self.conditions:
            if sigma > sigma_start or sigma < sigma_end:
                continue
            tokens = {COND: cond, UNCOND: uncond}
            ip_k = torch.cat([self.to_k_ip(tokens[r]).expand(rows_per_chunk, -1, -1) for r in roles])
            ip_v = torch.cat([self.to_v_ip(tokens[r]).expand(rows_per_chunk, -1, -1) for r in roles])
            out = out + weight * attention.attention_function(q, ip_k.to(q.dtype), ip_v.to(q.dtype), heads)
        return out.to(q.dtype)


def register_fake_ipadapter(
    unet_patcher: UnetPatcher,
    two_part_keys: bool = True,
    tokens: int = 4,
    weight: float = 1.0,
    seed: int = 7,
    log: CallLog | None = None,
) -> UnetPatcher:
    """Register a :class:`FakeIPAdapterPatch` on every attn2 the way ``IPAdapterApply.apply_ipadapter`` does, and
    return the new patcher.

    Like Forge: ``work_model = unet_patcher.clone()``, then for each key write straight into
    ``work_model.model_options["transformer_options"]["patches_replace"]["attn2"][key]`` (in place, not through
    ``set_model_attn2_replace``), or call ``set_new_condition`` on a patch already there. SD1.x/SD2.x use the
    2-part keys ``("input", id)``, ``("middle", 0)``, ``("output", id)`` (``two_part_keys=True``); SDXL uses
    3-part keys ``(name, id, index)``.
    """
    unet = unet_patcher.model.diffusion_model
    generator = torch.Generator().manual_seed(seed)
    work_model = unet_patcher.clone()
    options = work_model.model_options["transformer_options"]
    by_key = options.setdefault("patches_replace", {}).setdefault("attn2", {})
    shared_log = CallLog() if log is None else log
    for info in forge_layers(unet).values():
        layer = info["layer"]
        width, inner = layer.to_k.in_features, layer.to_k.out_features
        key = info["block"] if two_part_keys else info["key"]
        cond = torch.randn(tokens, width, generator=generator)
        uncond = torch.zeros(tokens, width)
        if key in by_key:
            by_key[key].set_new_condition(cond, uncond, weight)
            continue
        to_k_ip, to_v_ip = nn.Linear(width, inner, bias=False), nn.Linear(width, inner, bias=False)
        with torch.no_grad():
            to_k_ip.weight.copy_(torch.randn(inner, width, generator=generator) * 0.1)
            to_v_ip.weight.copy_(torch.randn(inner, width, generator=generator) * 0.1)
        by_key[key] = FakeIPAdapterPatch(key, to_k_ip, to_v_ip, cond, uncond, weight, log=shared_log)
    return work_model
