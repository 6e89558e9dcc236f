"""Tiny real ldm UNets, random adapters and a literal Eq. 9 reference, shared by the tests."""

from __future__ import annotations

import copy
import math
import types
from collections.abc import Callable

import torch
from einops import rearrange
from ldm.modules.attention import CrossAttention, SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from torch import nn

from vmix_ext.adapter import Dimension, VMixAdapter
from vmix_ext.families import family_for_context_dim
from vmix_ext.layers import cross_attention_layers
from vmix_train.checkpoint import SD1_ORIGINAL_CONFIG

# SD 1.5's UNet (v1-inference.yaml, as the trainer builds it in), for structure checks and the benchmark.
SD15_UNET_CONFIG = copy.deepcopy(SD1_ORIGINAL_CONFIG["model"]["params"]["unet_config"]["params"])

DIMENSIONS = (
    Dimension("color", "vivid colour", "sks1"),
    Dimension("lighting", "natural lighting", "sks2"),
    Dimension("focus", "sharp focus", "sks3"),
)


def tiny_unet(context_dim: int = 768, depth: int = 1, seed: int = 0) -> UNetModel:
    """A real ldm UNetModel small enough for CPU tests; same layer naming as SD's.

    With ``depth > 1`` (SDXL's several transformer blocks per layer, ``…transformer_blocks.1.attn2``) the pip ldm
    (Stability's SD2 code) needs a list of context widths to build, and its forward would want one context per
    block; the SpatialTransformers then get sgm's forward, which feeds every block the same context, as A1111's
    SDXL code (sgm) does.
    """
    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=8,
        in_channels=4,
        model_channels=32,
        out_channels=4,
        num_res_blocks=1,
        attention_resolutions=[1, 2],
        channel_mult=[1, 2],
        num_heads=2,
        use_spatial_transformer=True,
        transformer_depth=depth,
        context_dim=context_dim if depth == 1 else [context_dim] * depth,
        legacy=False,
        use_linear_in_transformer=True,
    )
    if depth > 1:
        share_context(unet)
    # ldm zero-initialises the output convolutions; give them weights so every layer affects the result.
    with torch.no_grad():
        for p in unet.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return unet.eval()


def share_context(unet: nn.Module) -> None:
    """Give every SpatialTransformer sgm's forward: all its transformer blocks see the same context."""
    for module in unet.modules():
        if isinstance(module, SpatialTransformer):
            module.forward = types.MethodType(sgm_spatial_transformer_forward, module)


def sgm_spatial_transformer_forward(
    self: SpatialTransformer, x: torch.Tensor, context: torch.Tensor | None = None
) -> torch.Tensor:
    """ldm's SpatialTransformer.forward with every block given the same context (sgm's SDXL code); the pip ldm
    indexes ``context[i]`` per block, which only works for depth 1."""
    h, w = x.shape[-2:]
    x_in = x
    x = self.norm(x)
    if not self.use_linear:
        x = self.proj_in(x)
    x = rearrange(x, "b c h w -> b (h w) c").contiguous()
    if self.use_linear:
        x = self.proj_in(x)
    for block in self.transformer_blocks:
        x = block(x, context=context)
    if self.use_linear:
        x = self.proj_out(x)
    x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w).contiguous()
    if not self.use_linear:
        x = self.proj_out(x)
    return x + x_in


def tiny_diffusers_unet(seed: int = 0) -> nn.Module:
    """The diffusers twin of tests/helpers.tiny_unet: same levels, widths and attention placement."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=16,
        norm_num_groups=32,
    ).eval()


def random_adapter(unet: nn.Module, seed: int = 1, dims: tuple[Dimension, ...] = DIMENSIONS) -> VMixAdapter:
    """An adapter with every weight random (Z included), so V_a is far from zero."""
    context_dim = next(iter(cross_attention_layers(unet).values())).to_v.in_features
    generator = torch.Generator().manual_seed(seed)
    pos = torch.randn(len(dims), context_dim, generator=generator)
    neg = torch.randn(len(dims), context_dim, generator=generator)
    family = family_for_context_dim(context_dim) or "sd1"
    adapter = VMixAdapter.untrained(unet, dims, pos, neg, family)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return adapter


def literal_eq9_unet(
    unet: nn.Module,
    adapter: VMixAdapter,
    strengths: dict[str, float] | None,
    scale: float,
    rows_to_mix: Callable[[torch.Tensor], torch.Tensor] | None = None,
    blocks: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> nn.Module:
    """A copy of ``unet`` whose cross-attention computes the paper's Eq. 9 with two separate terms.

    out = softmax(QK_cᵀ/√d)·V_c + λ·softmax(QK_cᵀ/√d)·V_a, V_a = W_Va·f_a tiled to the context length.
    ``rows_to_mix(context)`` returns a 0/1 float per row (the rows that get the second term); ``blocks`` multiplies
    λ in the input, middle and output blocks (the per-block control).
    """
    reference = copy.deepcopy(unet)
    f_a = adapter.aesthetic_context(strengths).detach()
    w_va = {path: proj.weight.detach() for path, proj in zip(adapter.layer_paths, adapter.value_projs, strict=True)}
    part = {"input_blocks": 0, "middle_block": 1, "output_blocks": 2}
    for path, layer in cross_attention_layers(reference).items():
        layer_scale = scale * blocks[part[path.split(".")[0]]]
        layer.forward = literal_eq9_forward(layer, f_a, w_va[path], layer_scale, rows_to_mix)
    return reference


def literal_eq9_forward(layer: CrossAttention, f_a, w_va, scale, rows_to_mix=None):
    """A forward for one ldm CrossAttention computing Eq. 9's two terms separately (also timed by benchmarks/)."""

    def forward(x, context=None, mask=None):
        h = layer.heads
        q, k, v_c = layer.to_q(x), layer.to_k(context), layer.to_v(context)
        tokens = context.shape[1]
        f_a_tiled = torch.cat([f_a] * math.ceil(tokens / f_a.shape[0]))[:tokens]
        v_a = (f_a_tiled @ w_va.T).unsqueeze(0).expand_as(v_c)

        def heads(t):
            b, n, _ = t.shape
            return t.reshape(b, n, h, -1).permute(0, 2, 1, 3)

        q, k, v_c, v_a = map(heads, (q, k, v_c, v_a))
        attention = (q @ k.transpose(-1, -2) * layer.scale).softmax(-1)
        content = attention @ v_c
        aesthetic = attention @ v_a
        weight = torch.ones(x.shape[0]) if rows_to_mix is None else rows_to_mix(context)
        out = content + scale * weight.view(-1, 1, 1, 1) * aesthetic
        b, _, n, _ = out.shape
        return layer.to_out(out.permute(0, 2, 1, 3).reshape(b, n, -1))

    return forward


def unet_inputs(batch: int = 2, tokens: int = 77, context_dim: int = 768, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=generator)
    t = torch.tensor([500] * batch)
    context = torch.randn(batch, tokens, context_dim, generator=generator)
    return x, t, context
