"""Stand-in for ComfyUI's ``comfy/ldm/modules/attention.py`` (0.8.0): the attention-function contract and the
cross-attention call site of ``BasicTransformerBlock.forward``. Written from the source, not copied.

Attention functions take ``(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
skip_output_reshape=False, **kwargs)`` with q, k, v of shape (batch, tokens, heads·dim_head) and return
(batch, tokens, heads·dim_head). Each is wrapped by ``wrap_attn``: when ``transformer_options`` (a keyword argument)
holds ``optimized_attention_override``, that callable is called as ``override(func, *args, **kwargs)`` instead.
The module attribute ``optimized_attention`` is the function ComfyUI chose at start-up; ``attention_basic`` (plain
softmax attention, fp32 scores when ``attn_precision`` is ``torch.float32``) stands in for all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def wrap_attn(func: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
        if "_inside_attn_wrapper" not in kwargs:
            transformer_options = kwargs.get("transformer_options")
            if transformer_options is not None and "optimized_attention_override" in transformer_options:
                override = transformer_options["optimized_attention_override"]
                return override(func, *args, **kwargs, _inside_attn_wrapper=True)
        kwargs.pop("_inside_attn_wrapper", None)
        return func(*args, **kwargs)

    return wrapper


@wrap_attn
def attention_basic(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None = None,
    attn_precision: torch.dtype | None = None,
    skip_reshape: bool = False,
    skip_output_reshape: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    if mask is not None or skip_reshape or skip_output_reshape:
        raise NotImplementedError("the stand-in's attention_basic covers the unmasked (b, n, h·d) layout only")
    b, _, inner = q.shape
    dim_head = inner // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, -1, heads, dim_head).permute(0, 2, 1, 3)

    q, k, v = split(q), split(k), split(v)
    if attn_precision == torch.float32:
        sim = (q.float() @ k.float().transpose(-1, -2)) * dim_head**-0.5
    else:
        sim = (q @ k.transpose(-1, -2)) * dim_head**-0.5
    out = sim.softmax(dim=-1).to(v.dtype) @ v
    return out.permute(0, 2, 1, 3).reshape(b, -1, heads * dim_head)


optimized_attention = attention_basic
optimized_attention_masked = optimized_attention


def cross_attention_forward(
    attn: nn.Module,
    x: torch.Tensor,
    context: torch.Tensor | None,
    value: torch.Tensor | None,
    transformer_options: dict,
) -> torch.Tensor:
    """``CrossAttention.forward``: the layer's projections, then ``optimized_attention`` (looked up at call time)
    with the layer's ``attn_precision`` and the full ``transformer_options``, then ``to_out``."""
    q = attn.to_q(x)
    context = x if context is None else context
    k = attn.to_k(context)
    v = attn.to_v(context if value is None else value)
    out = optimized_attention(
        q,
        k,
        v,
        attn.heads,
        attn_precision=getattr(attn, "attn_precision", None),
        transformer_options=transformer_options,
    )
    return attn.to_out(out)


def block_extra_options(block: nn.Module, transformer_options: dict) -> dict:
    """``BasicTransformerBlock.forward``'s ``extra_options``: every transformer option except ``patches`` and
    ``patches_replace`` (a shallow copy, so later changes to the options are not seen), plus ``n_heads``,
    ``dim_head`` and ``attn_precision`` of the block."""
    extra_options = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
    heads = block.attn2.heads
    extra_options["n_heads"] = heads
    extra_options["dim_head"] = block.attn2.to_q.out_features // heads
    extra_options["attn_precision"] = getattr(block, "attn_precision", None)
    return extra_options


def cross_attention_call(
    block: nn.Module, n: torch.Tensor, context: torch.Tensor, transformer_options: dict, extra_options: dict
) -> torch.Tensor:
    """The attn2 part of ``BasicTransformerBlock.forward`` (``n`` is ``norm2(x)``; the residual add follows).

    1. ``patches["attn2_patch"]``: ``n, context, value = p(n, context, value, extra_options)``.
    2. The replace patch under ``(block[0], block[1], block_index)``, else under ``block`` (2 parts). If there is
       one, the layer's own ``to_q``/``to_k``/``to_v`` project, ``patch(q, k, v, extra_options)`` attends, and
       ``to_out`` follows; otherwise ``CrossAttention.forward`` runs.
    3. ``patches["attn2_output_patch"]``: ``n = p(n, extra_options)``.
    """
    attn2 = block.attn2
    patches = transformer_options.get("patches", {})
    replace = transformer_options.get("patches_replace", {}).get("attn2", {})
    place = transformer_options.get("block")
    block_index = transformer_options.get("block_index", 0)
    value = None
    if "attn2_patch" in patches:
        value = context
        for p in patches["attn2_patch"]:
            n, context, value = p(n, context, value, extra_options)
    key = (place[0], place[1], block_index) if place is not None else None
    if key not in replace:
        key = place
    if key in replace:
        value = context if value is None else value
        q, k, v = attn2.to_q(n), attn2.to_k(context), attn2.to_v(value)
        n = attn2.to_out(replace[key](q, k, v, extra_options))
    else:
        n = cross_attention_forward(attn2, n, context, value, transformer_options)
    for p in patches.get("attn2_output_patch", []):
        n = p(n, extra_options)
    return n


def basic_transformer_block_forward(
    block: nn.Module, x: torch.Tensor, context: torch.Tensor, transformer_options: dict
):
    """``BasicTransformerBlock.forward`` for a Stability-ldm block: self-attention through ``CrossAttention.forward``
    (attn1 patches are not reproduced), the attn2 call site above, then the feed-forward; each with its residual."""
    extra_options = block_extra_options(block, transformer_options)
    n = block.norm1(x)
    x = cross_attention_forward(block.attn1, n, None, None, transformer_options) + x
    x = cross_attention_call(block, block.norm2(x), context, transformer_options, extra_options) + x
    return block.ff(block.norm3(x)) + x
