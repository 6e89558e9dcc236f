"""AesEmb: each dimension's t_i and t̂_i, the text encoder's end-of-text states for its label text and identifier.

They must come from the same encoders and layers that make the UNet's context, or V_a is computed from vectors the
UNet never sees, so they are read off that very context (``BaseModel.end_of_text_states``): for SD 1.x the layer
A1111's "clip skip" picks, for SD 2.x OpenCLIP's penultimate layer, for SDXL both encoders' penultimate layers
concatenated (768 + 1280 = 2048 wide, as the context is). CLIP has no [CLS] token; the end-of-text state is its
pooled token, the role [CLS] plays in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from vmix_ext.adapter import Dimension


class TextSide(Protocol):
    def end_of_text_states(self, texts: list[str]) -> torch.Tensor: ...  # (N, d); vmix_train.model.BaseModel


def end_of_text_rows(context: torch.Tensor, input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """The row of ``context`` (N, 77, d) at each sequence's first end-of-text token, shape (N, d)."""
    is_eos = input_ids.to(context.device) == eos_token_id
    if not bool(is_eos.any(-1).all()):
        raise ValueError("a tokenized text has no end-of-text token; was it cut to the context length?")
    position = is_eos.int().argmax(-1)  # the first end-of-text token; padding may repeat it
    return context[torch.arange(context.shape[0], device=context.device), position]


def final_layer_norm(encoder: nn.Module) -> nn.Module:
    """The CLIP text model's final layer norm: ``encoder.text_model.final_layer_norm`` in transformers 4 (what
    A1111 ships), ``encoder.final_layer_norm`` in transformers 5."""
    return getattr(encoder, "text_model", encoder).final_layer_norm


def aesthetic_embeddings(dimensions: Sequence[Dimension], base: TextSide) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, t̂): the positive label texts' and the negative identifiers' end-of-text states, each (N, d)."""
    positive = base.end_of_text_states([d.positive for d in dimensions])
    negative = base.end_of_text_states([d.negative for d in dimensions])
    return positive.float().cpu(), negative.float().cpu()
