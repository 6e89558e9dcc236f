"""Finding the cross-attention layers of an ldm-style UNet."""

from __future__ import annotations

from torch import nn


def cross_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """Every ``attn2`` module that owns a ``to_v`` projection, keyed by its ldm path.

    The keys (``input_blocks.1.1.transformer_blocks.0.attn2`` and so on) are the layer names of the
    adapter file, so they must stay the plain ``named_modules`` paths of the ldm UNet.
    """
    layers: dict[str, nn.Module] = {}
    for name, module in unet.named_modules():
        if name.rsplit(".", 1)[-1] == "attn2" and isinstance(getattr(module, "to_v", None), nn.Module):
            layers[name] = module
    return layers


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


def unet_context_dim(unet: nn.Module) -> int:
    """The context width the UNet's cross-attention layers expect; all layers must agree."""
    dims = {width[0] for width in layer_widths(unet).values()}
    if not dims:
        raise ValueError("this UNet has no cross-attention layers (attn2.to_v)")
    if len(dims) > 1:
        raise ValueError(f"this UNet's cross-attention layers disagree on the context width: {sorted(dims)}")
    return dims.pop()
