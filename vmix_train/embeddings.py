"""AesEmb: each dimension's t_i and t̂_i, the text encoder's end-of-text states for its label text and identifier.

They must come from the same encoder and layer that make the UNet's context, or V_a is computed from vectors the
UNet never sees. For a CLIP text encoder that layer is A1111's "clip skip": 1 is the last layer after the final
layer norm, n > 1 is ``hidden_states[-n]`` through the final layer norm (A1111's own SD 1.x code path). CLIP has no
[CLS] token; the end-of-text state is its pooled token, the role [CLS] plays in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from vmix_ext.adapter import Dimension

Tokenize = Callable[[list[str]], torch.Tensor]  # texts -> input_ids (N, 77), padded as the UNet context is


@torch.no_grad()
def end_of_text_states(
    encoder: nn.Module, input_ids: torch.Tensor, eos_token_id: int, clip_skip: int = 1
) -> torch.Tensor:
    """The context row at each sequence's first end-of-text token, shape (N, d)."""
    if clip_skip < 1:
        raise ValueError(f"clip_skip counts from 1 (the last layer), got {clip_skip}")
    is_eos = input_ids == eos_token_id
    if not bool(is_eos.any(-1).all()):
        raise ValueError("a tokenized text has no end-of-text token; was it cut to the context length?")
    output = encoder(input_ids, output_hidden_states=True)
    hidden = final_layer_norm(encoder)(output.hidden_states[-clip_skip])
    position = is_eos.int().argmax(-1)  # the first end-of-text token; padding may repeat it
    return hidden[torch.arange(hidden.shape[0]), position]


def final_layer_norm(encoder: nn.Module) -> nn.Module:
    """The CLIP text model's final layer norm: ``encoder.text_model.final_layer_norm`` in transformers 4 (what
    A1111 ships), ``encoder.final_layer_norm`` in transformers 5."""
    return getattr(encoder, "text_model", encoder).final_layer_norm


def aesthetic_embeddings(
    dimensions: Sequence[Dimension],
    tokenize: Tokenize,
    encoder: nn.Module,
    eos_token_id: int,
    clip_skip: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, t̂): the positive label texts' and the negative identifiers' end-of-text states, each (N, d)."""
    positive = end_of_text_states(encoder, tokenize([d.positive for d in dimensions]), eos_token_id, clip_skip)
    negative = end_of_text_states(encoder, tokenize([d.negative for d in dimensions]), eos_token_id, clip_skip)
    return positive.float().cpu(), negative.float().cpu()
