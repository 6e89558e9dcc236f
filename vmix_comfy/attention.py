"""VMix's attention call for ComfyUI: the host's own ``optimized_attention`` on the projected q, k and (mixed) v.

ComfyUI's ``CrossAttention.forward`` calls ``optimized_attention(q, k, v, heads, attn_precision=...,
transformer_options=...)``; a replace patch gets ``extra_options`` (the transformer options without the patch
tables, plus ``n_heads``, ``dim_head`` and ``attn_precision``) and passes them the same way, so the user's attention
choice (``--use-pytorch-cross-attention``, sage, flash, an attention-override node) stays in force under VMix.
"""

from __future__ import annotations

from typing import Any

import torch
from comfy.ldm.modules import attention as comfy_attention


def optimized_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]
) -> torch.Tensor:
    """An ``AttentionCall`` for ``vmix_ext.patcher``. The function is looked up on every call: ComfyUI picks it when
    its attention module is imported, and tools may swap the module attribute later."""
    return comfy_attention.optimized_attention(
        q,
        k,
        v,
        extra_options["n_heads"],
        attn_precision=extra_options.get("attn_precision"),
        transformer_options=extra_options,
    )
