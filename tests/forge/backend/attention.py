"""Stand-in for Forge's ``backend/attention.py``: the attention function patches are expected to call.

Forge picks one implementation at import (``attention_xformers``, ``attention_pytorch``, ``attention_split`` or
``attention_sub_quad``) and binds it to the module attribute ``attention_function``. All of them share one
signature and one tensor layout; this stand-in implements that contract once, in plain torch.
"""

from __future__ import annotations

from forge_family import softmax_attention


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    """Mirrors ``backend/attention.py: attention_pytorch`` (the default on CUDA): Forge's signature around the
    family's shared attention contract (``forge_family.softmax_attention``, explicit softmax).

    Layout: with ``skip_reshape=False`` q is (batch, query tokens, heads·dim_head) and k, v are
    (batch, context tokens, heads·dim_head); the heads are split from the last axis with ``.view``. With
    ``skip_reshape=True`` the inputs are already (batch, heads, tokens, dim_head). The result is always
    (batch, query tokens, heads·dim_head), i.e. what goes into ``to_out``. ``attn_precision`` is accepted and
    ignored, as in Forge's PyTorch path.
    """
    del attn_precision
    return softmax_attention(q, k, v, heads, mask=mask, skip_reshape=skip_reshape)


# Forge: ``attention_function = attention_xformers | attention_pytorch | attention_split | attention_sub_quad``,
# chosen once from the launch flags. Patches should read ``backend.attention.attention_function`` at call time.
attention_function = attention_pytorch
