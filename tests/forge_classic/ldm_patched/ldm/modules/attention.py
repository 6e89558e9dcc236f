"""Stand-in for Forge Classic's ``ldm_patched/ldm/modules/attention.py``: the attention function its UNet calls.

Classic picks one implementation at import (``attention_basic``, ``attention_sage``, ``attention_xformers``,
``attention_pytorch``, ``attention_split``, ``attention_sub_quad``) and binds it to the module attribute
``optimized_attention`` (L441-458). They share the short signature of ``attention_pytorch`` (L393):
``(q, k, v, heads, mask=None)`` — no ``attn_precision``, no reshape flags.
"""

from __future__ import annotations

from forge_family import softmax_attention


def attention_pytorch(q, k, v, heads, mask=None):
    """Mirrors ``attention_pytorch`` (the family's shared contract, with Classic's signature)."""
    return softmax_attention(q, k, v, heads, mask)


optimized_attention = attention_pytorch
optimized_attention_masked = optimized_attention
