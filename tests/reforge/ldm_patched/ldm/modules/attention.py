"""Stand-in for reForge's ``ldm_patched/ldm/modules/attention.py``: the attention function its UNet calls.

reForge picks one implementation at import (``attention_basic``, ``attention_sub_quad``, ``attention_split``,
``attention_xformers``, ``attention_pytorch``, ``attention_sage``, ``attention_sage3``, ``attention_flash``) and binds
it to the module attribute ``optimized_attention`` (L685-708). They share one signature, read here from
``attention_pytorch`` (L482): ``(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
skip_output_reshape=False)``. Its ``CrossAttention.forward`` passes ``attn_precision=self.attn_precision``.
"""

from __future__ import annotations

from forge_family import softmax_attention


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False):
    """Mirrors ``attention_pytorch`` (the family's shared contract; ``attn_precision`` only picks an upcast dtype for
    the logits on reForge's basic/split paths, which a float32 test does not need)."""
    del attn_precision
    return softmax_attention(q, k, v, heads, mask, skip_reshape, skip_output_reshape)


optimized_attention = attention_pytorch
optimized_attention_masked = optimized_attention
