"""Stand-in for Forge Neo's ``backend/attention.py`` (ComfyUI v0.7.0's attention, ported): the function its UNet and
patches call.

Neo binds one implementation to the module attribute ``attention_function`` at import (``attention_sage``,
``attention_flash``, ``attention_xformers``, ``attention_pytorch`` or ``attention_basic``). They share one signature,
read from ``attention_pytorch`` (Haoming02/sd-webui-forge-classic, neo line, ``backend/attention.py`` @ 1fe65075):
``(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs)``.
"""

from __future__ import annotations

from forge_family import softmax_attention


def attention_pytorch(
    q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs
):
    """Mirrors ``attention_pytorch`` (the family's shared contract, with Neo's signature)."""
    del attn_precision, kwargs
    return softmax_attention(q, k, v, heads, mask, skip_reshape, skip_output_reshape)


attention_function = attention_pytorch
