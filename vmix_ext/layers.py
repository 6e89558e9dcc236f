"""Finding the cross-attention layers of a UNet, named by their ldm paths."""

from __future__ import annotations

import re

from torch import nn


def cross_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """Every ``attn2`` module that owns a ``to_v`` projection, keyed by its ldm path.

    The keys (``input_blocks.1.1.transformer_blocks.0.attn2`` and so on) are the layer names of the adapter file.
    ldm, sgm, A1111 and Forge UNets use these paths themselves; a diffusers ``UNet2DConditionModel`` names the same
    layers differently (``down_blocks.0.attentions.0.transformer_blocks.0.attn2``), and its paths are translated.
    """
    layers: dict[str, nn.Module] = {}
    blocks_per_level: int | None = None
    for name, module in unet.named_modules():
        if name.rsplit(".", 1)[-1] != "attn2" or not isinstance(getattr(module, "to_v", None), nn.Module):
            continue
        if name.startswith(("down_blocks.", "mid_block.", "up_blocks.")):
            if blocks_per_level is None:
                blocks_per_level = diffusers_layers_per_block(unet)
            name = diffusers_to_ldm_path(name, blocks_per_level)
        layers[name] = module
    return layers


_DIFFUSERS_PATH = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.(transformer_blocks\.\d+\.attn2)$")
_DIFFUSERS_MID = re.compile(r"^mid_block\.attentions\.0\.(transformer_blocks\.\d+\.attn2)$")


def diffusers_layers_per_block(unet: nn.Module) -> int:
    """ResNet blocks per down level of a diffusers UNet (ldm's ``num_res_blocks``)."""
    return len(unet.down_blocks[0].resnets)  # type: ignore[index, union-attr, arg-type]


def diffusers_to_ldm_path(path: str, layers_per_block: int) -> str:
    """``down_blocks.1.attentions.0.transformer_blocks.0.attn2`` -> ``input_blocks.4.1.transformer_blocks.0.attn2``
    (with 2 layers per block). ldm counts ``input_blocks`` from the input convolution, with one extra entry per level
    for the downsampler, and ``output_blocks`` with ``layers_per_block + 1`` entries per level."""
    match = _DIFFUSERS_PATH.match(path)
    if match:
        group, level, index, rest = match.groups()
        if group == "down_blocks":
            number = 1 + int(level) * (layers_per_block + 1) + int(index)
            return f"input_blocks.{number}.1.{rest}"
        number = int(level) * (layers_per_block + 1) + int(index)
        return f"output_blocks.{number}.1.{rest}"
    match = _DIFFUSERS_MID.match(path)
    if match:
        return f"middle_block.1.{match.group(1)}"
    raise ValueError(f"'{path}' is not a diffusers cross-attention layer path")


def value_projection(layer: nn.Module) -> nn.Module:
    """The layer's ``to_v``: an ``nn.Linear`` in ldm and A1111, a Linear-like module with ``in_features`` and
    ``out_features`` in Forge (whose operations are not ``nn.Linear`` subclasses, and may hold packed weights)."""
    to_v = layer.to_v
    if not isinstance(getattr(to_v, "in_features", None), int) or not isinstance(
        getattr(to_v, "out_features", None), int
    ):
        raise TypeError(f"{type(layer).__name__}.to_v ({type(to_v).__name__}) has no in_features/out_features")
    return to_v


def layer_widths(unet: nn.Module) -> dict[str, tuple[int, int]]:
    """(context width, inner width) of each cross-attention layer's value projection."""
    widths = {}
    for path, layer in cross_attention_layers(unet).items():
        to_v = value_projection(layer)
        widths[path] = (to_v.in_features, to_v.out_features)
    return widths
