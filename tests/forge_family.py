"""What the Forge family's UNets and samplers share, written once for every host stand-in (tests only; no host file).

Forge (``backend/nn/unet.py``), reForge and Forge Classic (``ldm_patched/ldm/modules/attention.py``) and Forge Neo
(``backend/nn/unet.py``) all took ComfyUI's ``BasicTransformerBlock._forward``: the attn2 *replace* patch is looked up
under ``(block[0], block[1], block_index)`` and then under ``block``; if found, q, k and v are projected with the
layer's own ``to_q``/``to_k``/``to_v`` (v from ``value`` or the context), ``out = patch(q, k, v, extra_options)`` and
``to_out(out)``; ``extra_options`` is every ``transformer_options`` key but ``patches``/``patches_replace``, plus
``n_heads`` and ``dim_head``. The hosts differ only in data, which a :class:`CallSite` holds: which keys their sampler
and UNet add to ``transformer_options`` and which attention function a layer without a patch calls. The functions
here run a real ldm UNet (``stable-diffusion-sdkit``) as each host's UNet would, around its real projections.

Read from: Forge lllyasviel/stable-diffusion-webui-forge @ dfdcbab685e5 (``backend/nn/unet.py`` L183-267,
``backend/sampling/sampling_function.py`` L240-257); reForge Panchovix/stable-diffusion-webui-reForge @ 3b56b268
(``ldm_patched/ldm/modules/attention.py`` L802-900 and L960-980, ``ldm_patched/modules/samplers.py`` L279-324,
``ldm_patched/ldm/modules/diffusionmodules/openaimodel.py`` L33-48 and L869-916); Forge Classic
Haoming02/sd-webui-forge-classic @ 1f95d717 (``ldm_patched/ldm/modules/attention.py`` L627-736,
``ldm_patched/modules/samplers.py`` L150-265); Forge Neo (same repository, neo line: ``backend/sampling/
sampling_function.py`` @ 000feeed, ``backend/nn/unet.py`` as in its forks).

Key convention, ldm module path -> replace key (the middle block is number 0)::

    input_blocks.N.1.transformer_blocks.i.attn2   -> ("input", N, i)
    middle_block.1.transformer_blocks.i.attn2     -> ("middle", 0, i)
    output_blocks.N.1.transformer_blocks.i.attn2  -> ("output", N, i)

``transformer_index`` is another number: the running count of SpatialTransformers in execution order, reset to 0 at
the start of every UNet call.
"""

from __future__ import annotations

import contextlib
import copy
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

COND, UNCOND = 0, 1  # the values in cond_or_uncond, one per chunk of rows

_ATTN2_PATH = re.compile(
    r"^(input_blocks|middle_block|output_blocks)\.(?:(\d+)\.)?\d+\.transformer_blocks\.(\d+)\.attn2$"
)
_BLOCK_NAMES = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}


# --- attention ---------------------------------------------------------------------------------------------------


def softmax_attention(q, k, v, heads, mask=None, skip_reshape=False, skip_output_reshape=False):
    """The contract every host attention function shares, computed with an explicit softmax.

    With ``skip_reshape=False`` q is (batch, query tokens, heads·dim_head) and k, v are (batch, context tokens,
    heads·dim_head) (split with ``.view``, as the hosts' PyTorch paths do, so inputs must be viewable); with
    ``skip_reshape=True`` they are already (batch, heads, tokens, dim_head). The result is (batch, query tokens,
    heads·dim_head), or (batch, heads, tokens, dim_head) with ``skip_output_reshape``. A bool ``mask`` keeps True
    positions, a float mask is added to the logits (``scaled_dot_product_attention``'s meaning).
    """
    if skip_reshape:
        batch, _, _, dim_head = q.shape
    else:
        batch, _, width = q.shape
        dim_head = width // heads
        q, k, v = (t.view(batch, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    logits = (q @ k.transpose(-1, -2)) * dim_head**-0.5
    if mask is not None:
        if mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, -torch.finfo(logits.dtype).max)
        else:
            logits = logits + mask
    out = logits.softmax(dim=-1) @ v
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(batch, -1, heads * dim_head)


# --- the patch registry of ComfyUI's ModelPatcher ----------------------------------------------------------------


def set_model_options_patch_replace(model_options, patch, name, block_name, number, transformer_index=None):
    """ComfyUI's ``set_model_options_patch_replace``, as Forge, reForge and Forge Neo carry it.

    Stores ``patch`` under ``model_options["transformer_options"]["patches_replace"][name][key]`` where ``key`` is
    ``(block_name, number, transformer_index)`` or, when ``transformer_index`` is None, ``(block_name, number)``.
    Shallow copies of ``transformer_options``, of ``patches_replace`` and of the ``name`` dict are made before writing,
    so a dict shared with another patcher is never written to; other patches are kept by reference.
    """
    options = dict(model_options["transformer_options"])
    replace = dict(options.get("patches_replace", {}))
    by_key = dict(replace.get(name, {}))
    key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    by_key[key] = patch
    replace[name] = by_key
    options["patches_replace"] = replace
    model_options["transformer_options"] = options
    return model_options


class ModelPatcherRegistry:
    """The patch registry of ComfyUI's ``ModelPatcher``, as reForge and Classic (``ldm_patched/modules/
    model_patcher.py``) and Forge Neo (``backend/patcher/base.py``, ComfyUI v0.7.0) carry it: only the surface patches
    use (no weights, LoRA, memory management or device moves). Each host's stand-in subclasses it.

    ``model`` is what the host wraps (for a UNet, an object whose ``diffusion_model`` is the UNet); ``model_options``
    starts as ``{"transformer_options": {}}``; ``clone()`` keeps the model and deep-copies ``model_options``.
    """

    def __init__(self, model, load_device=None, offload_device=None, size=0, **kwargs):
        del kwargs
        self.model = model
        self.load_device = torch.device("cpu") if load_device is None else load_device
        self.offload_device = torch.device("cpu") if offload_device is None else offload_device
        self.size = size
        self.patches = {}
        self.object_patches = {}
        self.model_options = {"transformer_options": {}}
        self.parent = None

    def clone(self):
        """``ModelPatcher.clone``: a patcher of the same class on the same model, ``copy.deepcopy`` of
        ``model_options`` (patch objects stored there are copied; functions and closures are kept)."""
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.object_patches = dict(self.object_patches)
        n.model_options = copy.deepcopy(self.model_options)
        n.parent = self
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def set_model_patch(self, patch, name):
        """Appends to ``transformer_options["patches"][name]`` (a new list)."""
        options = self.model_options["transformer_options"]
        patches = options.setdefault("patches", {})
        patches[name] = [*patches.get(name, []), patch]

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        self.model_options = set_model_options_patch_replace(
            self.model_options, patch, name, block_name, number, transformer_index=transformer_index
        )

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        """``patch(q, k, v, extra_options)`` under ``(block_name, number[, transformer_index])``; the UNet passes a
        layer's index inside its SpatialTransformer (``block_index``) as the third key element."""
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)


class ForgeObjects:
    """What ``p.sd_model.forge_objects`` is on every host (Forge and Neo ``backend/diffusion_engine/base.py:
    ForgeObjects``, reForge ``modules_forge/forge_loader.py: ForgeSD``, Classic ``ForgeObjects`` there)."""

    def __init__(self, unet, clip, vae, clipvision):
        self.unet = unet
        self.clip = clip
        self.vae = vae
        self.clipvision = clipvision

    def shallow_copy(self):
        """A new holder of the same class pointing at the same patchers."""
        return type(self)(self.unet, self.clip, self.vae, self.clipvision)


class DiffusionEngine:
    """What Forge's and Neo's ``backend/diffusion_engine/base.py: ForgeDiffusionEngine`` (``p.sd_model`` there) hold
    for a web-UI script, before an engine sets its flags: the three ``forge_objects`` holders and the LoRA hash."""

    def __init__(self, estimated_config=None, huggingface_components=None):
        del huggingface_components
        self.model_config = estimated_config
        self.is_inpaint = False
        self.forge_objects = None
        self.forge_objects_original = None
        self.forge_objects_after_applying_lora = None
        self.current_lora_hash = str([])


# --- keys --------------------------------------------------------------------------------------------------------


def forge_key(path: str) -> tuple[str, int, int]:
    """The attn2 replace key ``(block_name, number, block_index)`` of an ldm ``...attn2`` module path.

    The UNet's forward sets ``transformer_options["block"]`` (name and number) and the SpatialTransformer's forward
    ``block_index`` (position in ``transformer_blocks``) on every host of the family.
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
    """ldm path of each SpatialTransformer -> the ``transformer_index`` the hosts' UNets show while it runs (set to 0
    in the UNet's forward, incremented after every SpatialTransformer in execution order)."""
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
    """Every attn2 of an ldm UNet with what the hosts know about it while it runs.

    Returns ``{ldm path: {"layer", "key", "block", "block_index", "transformer_index", "n_heads", "dim_head"}}``.
    """
    order = spatial_transformer_order(unet)
    layers = {}
    for path, module in unet.named_modules():
        if not path.endswith(".attn2"):
            continue
        key = forge_key(path)
        layers[path] = {
            "layer": module,
            "key": key,
            "block": key[:2],
            "block_index": key[2],
            "transformer_index": order[path.split(".transformer_blocks.")[0]],
            "n_heads": module.heads,
            "dim_head": module.to_q.out_features // module.heads,
        }
    return layers


def ip_adapter_keys(unet: nn.Module, three_part: bool) -> list[tuple]:
    """The keys the built-in IP-Adapter would register on ``unet``, in its order (input blocks, output blocks, then
    the middle block): 2-part ``(name, number)`` per layer on SD 1.x, 3-part per transformer block on SDXL. The real
    ``IPAdapterApply`` has the SD 1.5/SDXL block numbers written in; the tiny test UNets have other numbers."""
    keys: list[tuple] = []
    for group in ("input", "output", "middle"):
        for info in forge_layers(unet).values():
            key = info["key"] if three_part else info["block"]
            if key[0] == group and key not in keys:
                keys.append(key)
    return keys


# --- the sampler's row roles -------------------------------------------------------------------------------------


def compute_cond_mark(cond_or_uncond, sigmas):
    """``compute_cond_mark`` (Forge, Classic, Neo samplers): one 0/1 per row (1 = uncond)."""
    rows = int(sigmas.shape[0])
    return torch.tensor([float(role) for role in cond_or_uncond for _ in range(rows)]).to(sigmas)


def compute_cond_indices(cond_or_uncond, sigmas):
    """``compute_cond_indices``: row indices of the cond chunks and of the uncond chunks."""
    rows = int(sigmas.shape[0])
    cond_indices, uncond_indices = [], []
    for chunk, role in enumerate(cond_or_uncond):
        (cond_indices if role == COND else uncond_indices).extend(range(chunk * rows, (chunk + 1) * rows))
    return cond_indices, uncond_indices


# --- one host's call site ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallSite:
    """What one host puts around an attn2 call; the code that uses it is the same for all of them.

    ``attention(q, k, v, heads)`` is what a layer without a replace patch computes (looked up in the host's module at
    call time). ``cond_marks``: the sampler adds ``cond_mark``, ``cond_indices``, ``uncond_indices``. ``uuids``: it
    adds ``uuids`` (one per chunk). ``activations_shape``: every SpatialTransformer writes its input's shape.
    ``attn_precision``: every transformer block adds its ``attn_precision`` (None unless the model sets one).
    """

    host: str
    attention: Callable[..., torch.Tensor]
    cond_marks: bool = True
    uuids: bool = False
    activations_shape: bool = False
    attn_precision: bool = False

    def extra_option_keys(self) -> set[str]:
        """The keys of ``extra_options`` a replace patch receives on this host (without patches of other kinds)."""
        keys = {"block", "block_index", "transformer_index", "original_shape", "cond_or_uncond", "sigmas"}
        keys |= {"n_heads", "dim_head"}
        if self.cond_marks:
            keys |= {"cond_mark", "cond_indices", "uncond_indices"}
        if self.uuids:
            keys.add("uuids")
        if self.activations_shape:
            keys.add("activations_shape")
        if self.attn_precision:
            keys.add("attn_precision")
        return keys


def transformer_options(site: CallSite, model_options: dict, cond_or_uncond: list[int], sigmas: torch.Tensor) -> dict:
    """The per-call ``transformer_options`` the sampler hands to the UNet: a shallow copy of
    ``model_options["transformer_options"]`` plus ``cond_or_uncond`` (one role per chunk), ``sigmas`` (the sampler's
    sigma, one per latent, NOT repeated per chunk) and the host's own extras."""
    options = dict(model_options.get("transformer_options", {}))
    options["cond_or_uncond"] = list(cond_or_uncond)
    if site.uuids:
        options["uuids"] = [uuid.UUID(int=chunk) for chunk in range(len(cond_or_uncond))]
    options["sigmas"] = sigmas
    if site.cond_marks:
        options["cond_mark"] = compute_cond_mark(cond_or_uncond, sigmas)
        options["cond_indices"], options["uncond_indices"] = compute_cond_indices(cond_or_uncond, sigmas)
    return options


def cross_attention(
    site: CallSite,
    layer: nn.Module,
    x: torch.Tensor,
    context: torch.Tensor,
    transformer_options: dict,
    block: tuple[str, int] = ("input", 1),
    block_index: int = 0,
    transformer_index: int | None = None,
) -> torch.Tensor:
    """One attn2 call as the host makes it; the layer's output after ``to_out`` (before the residual add).

    1. ``block`` / ``block_index`` (and ``transformer_index`` when given) are written into ``transformer_options``,
       as the UNet and SpatialTransformer do; ``extra_options`` is a shallow copy of every key but ``patches`` and
       ``patches_replace``, plus ``n_heads``, ``dim_head`` (and ``attn_precision`` on reForge).
    2. ``patches["attn2_patch"]`` functions run first: ``n, context, value = p(n, context, value, extra_options)``.
    3. The replace patch is looked up under ``(block[0], block[1], block_index)``, then under ``block``. If found:
       ``out = patch(to_q(n), to_k(context), to_v(value or context), extra_options)``, else the host's attention.
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
    if site.attn_precision:
        extra_options["attn_precision"] = None

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
        out = site.attention(q, k, v, layer.heads)
    n = layer.to_out(out)

    for p in patches.get("attn2_output_patch", []):
        n = p(n, extra_options)
    return n


@contextlib.contextmanager
def host_attention(site: CallSite, unet: nn.Module, transformer_options: dict) -> Iterator[dict[str, dict]]:
    """Within the block, every attn2 of ``unet`` runs :func:`cross_attention` with ``transformer_options``.

    Each layer's ``forward`` is replaced on the instance (and restored on exit); keys, ``block_index`` and
    ``transformer_index`` come from :func:`forge_layers`. On reForge each SpatialTransformer also records
    ``activations_shape``. Yields the layer table.
    """
    layers = forge_layers(unet)
    handles = []
    if site.activations_shape:

        def record_shape(module, args):
            transformer_options["activations_shape"] = list(args[0].shape)

        transformers = {path.split(".transformer_blocks.")[0] for path in layers}
        for path in sorted(transformers):
            handles.append(unet.get_submodule(path).register_forward_pre_hook(record_shape))
    for info in layers.values():
        layer = info["layer"]

        def forward(x, context=None, mask=None, _layer=layer, _info=info):
            del mask
            return cross_attention(
                site,
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
        for handle in handles:
            handle.remove()


def unet_forward(
    site: CallSite,
    unet: nn.Module,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    context: torch.Tensor | list[torch.Tensor],
    model_options: dict,
    cond_or_uncond: list[int],
    sigmas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run an ldm UNet for one host UNet call: ``x`` holds ``len(cond_or_uncond)`` chunks of equal size.

    ``model_options`` is a host patcher's ``model_options``; ``cond_or_uncond`` gives each chunk's role in row order
    (``[1, 0]`` = uncond rows then cond rows, the usual joint call). ``sigmas`` is one sigma per latent (the chunk
    size); it defaults to ones. ``original_shape`` and ``transformer_index`` are set as the UNets' forward does.
    """
    chunks = len(cond_or_uncond)
    if x.shape[0] % chunks:
        raise ValueError(f"batch {x.shape[0]} is not a multiple of {chunks} chunks")
    if sigmas is None:
        sigmas = torch.ones(x.shape[0] // chunks, dtype=x.dtype)
    options = transformer_options(site, model_options, cond_or_uncond, sigmas)
    options["original_shape"] = list(x.shape)
    options["transformer_index"] = 0
    with host_attention(site, unet, options):
        return unet(x, timesteps, context)


# --- test data for the built-in IP-Adapter's stand-in (tests/lib_ipadapter) -------------------------------------


def random_ip_adapter(unet: nn.Module, keys: list[tuple], seed: int = 7, scale: float = 0.1) -> dict:
    """An IP-Adapter state dict for ``unet``: random ``"{2n+1}.to_k_ip.weight"`` / ``to_v_ip`` for the n-th key (the
    numbering ``CrossAttentionPatch`` reads), each (layer inner width, context width)."""
    generator = torch.Generator().manual_seed(seed)
    layers = list(forge_layers(unet).values())
    state = {}
    for number, key in enumerate(keys):
        layer = next(info["layer"] for info in layers if key in (info["key"], info["block"]))
        shape = (layer.to_k.out_features, layer.to_k.in_features)
        for name in ("to_k_ip", "to_v_ip"):
            state[f"{number * 2 + 1}.{name}.weight"] = torch.randn(shape, generator=generator) * scale
    return {"ip_adapter": state}


def random_image_tokens(width: int, tokens: int = 4, seed: int = 8) -> torch.Tensor:
    """``embeds`` for the IP-Adapter stand-in: random cond image tokens, zero uncond tokens, each (1, tokens, width)."""
    cond = torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(seed))
    return torch.stack((cond, torch.zeros_like(cond)))


def reset_before_sampling(sd_model) -> None:
    """Every host's ``modules/processing.py`` before ``process_before_every_sampling`` (txt2img, img2img and the hires
    pass): ``sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()``, which drops
    whatever UNet patcher a script assigned during the previous pass."""
    sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()
