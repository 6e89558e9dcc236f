"""Stand-in for Forge's ``backend/attention.py``: the attention function patches are expected to call.

Forge picks one implementation at import (``attention_xformers``, ``attention_pytorch``, ``attention_split`` or
``attention_sub_quad``) and binds it to the module attribute ``attention_function``. All of them share one
signature and one tensor layout; this stand-in implements that contract once, in plain torch.
"""

from __future__ import annotations

import torch


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    """Mirrors ``backend/attention.py: attention_pytorch`` (the default on CUDA), computed with explicit softmax.

    Layout: with ``skip_reshape=False`` q is (batch, query tokens, heads·dim_head) and k, v are
    (batch, context tokens, heads·dim_head); the heads are split from the last axis. With ``skip_reshape=True`` the
    inputs are already (batch, heads, tokens, dim_head). The result is always (batch, query tokens, heads·dim_head),
    i.e. what goes into ``to_out``. ``mask`` follows ``scaled_dot_product_attention``: a bool mask keeps True
    positions, a float mask is added to the logits. ``attn_precision`` is accepted and ignored, as in Forge's
    PyTorch path.
    """
    del attn_precision
    if skip_reshape:
        batch, _, _, dim_head = q.shape
    else:
        batch, _, width = q.shape
        dim_head = width // heads
        # Forge uses .view here, so inputs must be viewable (a fresh tensor, or an expand along batch/tokens).
        q, k, v = (t.view(batch, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    logits = (q @ k.transpose(-1, -2)) * dim_head**-0.5
    if mask is not None:
        if mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, -torch.finfo(logits.dtype).max)
        else:
            logits = logits + mask
    out = logits.softmax(dim=-1) @ v
    return out.transpose(1, 2).reshape(batch, -1, heads * dim_head)


# Forge: ``attention_function = attention_xformers | attention_pytorch | attention_split | attention_sub_quad``,
# chosen once from the launch flags. Patches should read ``backend.attention.attention_function`` at call time.
attention_function = attention_pytorch
