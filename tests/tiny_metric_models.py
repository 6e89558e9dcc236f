"""Tiny random metric models written as local files, for the metric and evaluation tests: a CLIP model folder (as
``save_pretrained`` writes it), a LAION-layout aesthetic head and FID's Inception weights as safetensors, and a
small feature network that stands in for Inception where speed matters."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny_checkpoint import tokenizer_vocab, write_tokenizer
from torch import nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from vmix_train.aesthetic import AestheticHead
from vmix_train.inception import FidInception

CLIP_WIDTH = 16  # the projected embedding's width


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A CLIP model with 2-layer towers, 32 px images and 16-wide embeddings, and its processor."""
    torch.manual_seed(seed)
    vocab = tokenizer_vocab()
    write_tokenizer(folder)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=CLIP_WIDTH,
    )
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model = CLIPModel(config)
    with torch.no_grad():  # a direction both towers share, so cosines spread over (0, 1) rather than around 0
        for norm in (model.vision_model.post_layernorm, model.text_model.final_layer_norm):
            norm.weight[0], norm.bias[0] = 0.0, 1.0
        model.visual_projection.weight[0, 0] = 3.0
        model.text_projection.weight[0, 0] = 3.0
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def write_tiny_aesthetic_head(path: Path, embed_dim: int = CLIP_WIDTH, seed: int = 0) -> Path:
    """An aesthetic head with the LAION layout and random weights (scores spread around 5)."""
    torch.manual_seed(seed)
    head = AestheticHead(embed_dim)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.1)
        head.layers[7].bias.fill_(5.0)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path))
    return path


def write_random_inception(path: Path, seed: int = 0) -> Path:
    """FID's Inception-v3 with random weights under the published file's names (with the classifier ``fc``)."""
    torch.manual_seed(seed)
    state = FidInception().state_dict()
    state["fc.weight"] = torch.randn(1008, 2048) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


class ColourFeatures(nn.Module):
    """uint8 images -> 6 features (each channel's mean and its mean square): a fast stand-in for Inception."""

    num_features = 6

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        return torch.cat([x.mean(dim=(2, 3)), x.square().mean(dim=(2, 3))], dim=1)
