"""VMix through Forge's UNet patcher: one attn2 *replace* patch per cross-attention layer.

Forge rebuilds its UNet patcher before every sampling pass and its ``to_v`` is not an ``nn.Linear``, so the forward
hooks of ``hooks.py`` do not fit there. The replace patch is the one place that receives the projected q, k, v: it
adds λ·V_a to v and computes attention with the function Forge provides, or hands the mixed v to a patch that was
already on the layer (Forge's IP-Adapter), so both work together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .hooks import ValueMixer

AttentionFunction = Callable[..., torch.Tensor]
ReplacePatch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor]

_PATH = re.compile(r"^(input_blocks|middle_block|output_blocks)(?:\.(\d+))?\.1\.transformer_blocks\.(\d+)\.attn2$")
_BLOCK_NAMES = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
COND, UNCOND = 0, 1  # the values of Forge's extra_options["cond_or_uncond"]
PATCH_MARKER = "_vmix_patch"


def forge_key(path: str) -> tuple[str, int, int]:
    """``input_blocks.7.1.transformer_blocks.3.attn2`` -> ("input", 7, 3), Forge's attn2 replace-patch key.

    The third element is the block's index inside its SpatialTransformer (Forge's ``block_index``), which matters
    for SDXL's several blocks per layer; the middle block is number 0.
    """
    match = _PATH.match(path)
    if match is None:
        raise ValueError(f"'{path}' is not an ldm cross-attention layer path")
    group, number, index = match.groups()
    return _BLOCK_NAMES[group], int(number or 0), int(index)


def cond_rows(extra_options: Mapping[str, Any], rows: int) -> torch.Tensor | None:
    """Indices of the conditional rows of this call, from Forge's ``cond_or_uncond`` (one entry per chunk of rows)."""
    roles = extra_options.get("cond_or_uncond")
    if not roles or rows % len(roles):
        return None  # unknown layout: treat every row alike
    chunk = rows // len(roles)
    picked = [i for n, role in enumerate(roles) if role == COND for i in range(n * chunk, (n + 1) * chunk)]
    return torch.tensor(picked, dtype=torch.long)


def make_replace_patch(
    mixer: ValueMixer,
    path: str,
    attention: AttentionFunction,
    previous: ReplacePatch | None = None,
) -> ReplacePatch:
    """The attn2 replace patch for one layer. A closure, because Forge deep-copies patch objects on every clone."""
    previous = unwrap(previous)

    def patch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]) -> torch.Tensor:
        rows = cond_rows(extra_options, v.shape[0]) if mixer.options.cond_only else None
        mixed = mixer.mix(path, v, rows=rows)
        if mixed is not None:
            v = mixed
        if previous is not None:
            return previous(q, k, v, extra_options)
        return attention(q, k, v, extra_options["n_heads"])

    setattr(patch, PATCH_MARKER, True)
    patch.previous = previous  # type: ignore[attr-defined]
    return patch


def unwrap(patch: ReplacePatch | None) -> ReplacePatch | None:
    """The patch VMix wrapped, if ``patch`` is a VMix patch (so a second install never stacks the term twice)."""
    while patch is not None and getattr(patch, PATCH_MARKER, False):
        patch = patch.previous  # type: ignore[attr-defined]
    return patch


def install(
    patcher: Any,
    mixer: ValueMixer,
    attention: AttentionFunction,
    layer_paths: list[str] | tuple[str, ...],
) -> None:
    """Register VMix on every layer of a (cloned) Forge UnetPatcher, wrapping any replace patch already there.

    Forge looks a layer up under its 3-part key first and the 2-part key second, and its IP-Adapter uses 2-part
    keys on SD 1.x/2.x, so both are searched for a patch to wrap.
    """
    replace = patcher.model_options.setdefault("transformer_options", {}).setdefault("patches_replace", {})
    existing = replace.get("attn2", {})
    for path in layer_paths:
        name, number, index = forge_key(path)
        previous = existing.get((name, number, index)) or existing.get((name, number))
        patch = make_replace_patch(mixer, path, attention, previous)
        patcher.set_model_attn2_replace(patch, name, number, index)
