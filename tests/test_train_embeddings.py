"""AesEmb comes from the same encoder and layer as the UNet context, at the end-of-text position."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from vmix_ext.adapter import Dimension
from vmix_train.embeddings import aesthetic_embeddings, end_of_text_rows, final_layer_norm
from vmix_train.model import BaseModel

BOS, EOS = 62, 63
WORDS = {w: i for i, w in enumerate("vivid colour natural lighting sharp focus sks1 sks2 sks3 a cat".split(), 1)}
DIMS = (Dimension("color", "vivid colour", "sks1"), Dimension("lighting", "natural lighting", "sks2"))


def tokenize(texts: list[str]) -> torch.Tensor:
    """Like CLIP's tokenizer with padding="max_length": BOS, the words, EOS, then EOS as padding up to 77."""
    rows = [[BOS, *(WORDS[w] for w in text.split()), EOS] for text in texts]
    return torch.tensor([row + [EOS] * (77 - len(row)) for row in rows])


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    return CLIPTextModel(config).eval()


def text_side(encoder: nn.Module, clip_skip: int = 1) -> BaseModel:
    """A base model of which only the text side is used."""
    return BaseModel(nn.Identity(), encoder, tokenize, EOS, scheduler=None, family="sd1", clip_skip=clip_skip)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_embedding_is_the_context_row_at_end_of_text(encoder, clip_skip):
    positive, negative = aesthetic_embeddings(DIMS, text_side(encoder, clip_skip))
    assert positive.shape == negative.shape == (2, 32)
    with torch.no_grad():
        out = encoder(tokenize(["natural lighting"]), output_hidden_states=True)
        # What an SD 1.x pipeline feeds the UNet at this clip skip (A1111: sd_hijack_clip).
        context = out.last_hidden_state if clip_skip == 1 else final_layer_norm(encoder)(out.hidden_states[-clip_skip])
    torch.testing.assert_close(positive[1], context[0, 3], atol=1e-6, rtol=0)  # BOS natural lighting EOS
    assert not torch.allclose(positive, negative)


def test_first_end_of_text_is_used_not_the_padding(encoder):
    ids = tokenize(["sharp focus", "a"])
    states = text_side(encoder).end_of_text_states(["sharp focus", "a"])
    with torch.no_grad():
        hidden = encoder(ids).last_hidden_state
    torch.testing.assert_close(states, torch.stack([hidden[0, 3], hidden[1, 2]]), atol=1e-6, rtol=0)


def test_cut_texts_and_bad_clip_skip_are_refused(encoder):
    with pytest.raises(ValueError, match="no end-of-text token"):
        end_of_text_rows(torch.zeros(1, 77, 32), torch.full((1, 77), 5), EOS)
    with pytest.raises(ValueError, match="clip_skip counts from 1"):
        text_side(encoder, clip_skip=0)
