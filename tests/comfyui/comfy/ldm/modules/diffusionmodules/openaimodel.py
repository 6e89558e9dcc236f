"""Stand-in for ComfyUI's ``comfy/ldm/modules/diffusionmodules/openaimodel.py`` (0.8.0): how ComfyUI's UNet
threads ``transformer_options`` through a forward pass, applied to a real Stability-ldm ``UNetModel`` (same module
tree and ``…transformer_blocks.i.attn2`` paths as ComfyUI's own).

``forward(unet, x, timesteps, context, transformer_options)`` runs the ldm UNet while, as ComfyUI's does:

- ``UNetModel._forward`` sets ``original_shape = list(x.shape)`` and ``transformer_index = 0``, then ``block`` to
  ``("input", id)`` before ``input_blocks[id]``, ``("middle", 0)`` before the middle block and ``("output", id)``
  before ``output_blocks[id]``;
- ``forward_timestep_embed`` adds 1 to ``transformer_index`` after every SpatialTransformer;
- ``SpatialTransformer.forward`` sets ``activations_shape`` and, before its i-th block, ``block_index = i``, and
  gives every block the same context (a list gives one per block);
- every ``BasicTransformerBlock`` runs ``attention.basic_transformer_block_forward`` (the attn2 call site).

The overrides live on the module instances only while ``forward`` runs (any instance ``forward`` that was there, such
as the tests' sgm one, is put back).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from ldm.modules.attention import SpatialTransformer
from torch import nn

from .. import attention


def _spatial_transformer_forward(options: dict):
    def forward(self: SpatialTransformer, x: torch.Tensor, context: torch.Tensor | list | None = None) -> torch.Tensor:
        contexts = context if isinstance(context, list) else [context] * len(self.transformer_blocks)
        options["activations_shape"] = list(x.shape)
        h, w = x.shape[-2:]
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.movedim(1, 3).flatten(1, 2).contiguous()
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            options["block_index"] = i
            x = attention.basic_transformer_block_forward(block, x, contexts[i], options)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(x.shape[0], h, w, x.shape[-1]).movedim(3, 1).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        options["transformer_index"] = options.get("transformer_index", 0) + 1
        return x + x_in

    return forward


@contextlib.contextmanager
def _comfy_threading(unet: nn.Module, options: dict) -> Iterator[None]:
    saved: list[tuple[nn.Module, object]] = []
    handles = []

    def set_block(place: tuple[str, int]):
        def hook(module: nn.Module, args: tuple) -> None:
            options["block"] = place

        return hook

    try:
        for i, module in enumerate(unet.input_blocks):
            handles.append(module.register_forward_pre_hook(set_block(("input", i))))
        handles.append(unet.middle_block.register_forward_pre_hook(set_block(("middle", 0))))
        for i, module in enumerate(unet.output_blocks):
            handles.append(module.register_forward_pre_hook(set_block(("output", i))))
        for module in unet.modules():
            if isinstance(module, SpatialTransformer):
                saved.append((module, module.__dict__.get("forward")))
                module.forward = types.MethodType(_spatial_transformer_forward(options), module)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, previous in saved:
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous


def forward(
    unet: nn.Module, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None, transformer_options: dict
) -> torch.Tensor:
    transformer_options["original_shape"] = list(x.shape)
    transformer_options["transformer_index"] = 0
    with _comfy_threading(unet, transformer_options):
        return unet(x, timesteps, context)
