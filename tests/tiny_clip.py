"""A tiny transformers CLIPModel whose embeddings are known in closed form, saved the way ``save_pretrained`` writes
a real one (weights, config, tokenizer, image processor), so vmix_train.clip_models.load_clip's real path runs.

Real weights, no patched forward: both towers have one transformer block with zero query/key weights (uniform
attention) and identity value/output projections, zero MLPs, and balanced embeddings (v, −v), so the LayerNorms
only rescale. Then:

- image embedding = normalise(mean R, G, B of the image, in 0..1) (the processor does not re-centre),
- text embedding = normalise(how many r, g, b letters the text has); other letters count nothing,
- CLIP's logit scale is ``LOGIT_SCALE``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny_checkpoint import tokenizer_vocab, write_tokenizer
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from vmix_train.aesthetic import AestheticHead

LOGIT_SCALE = 10.0
_WIDTH = 8
_SIZE = 8  # the image size: one 8×8 patch


def _balanced() -> torch.Tensor:
    """(width, 3): column c is +1 at row c and −1 at row c+3, so every embedding has mean 0."""
    out = torch.zeros(_WIDTH, 3)
    out[:3] = torch.eye(3)
    out[3:6] = -torch.eye(3)
    return out


def tiny_clip_model() -> CLIPModel:
    vocab = tokenizer_vocab()
    eos = vocab["<|endoftext|>"]
    tower = {"hidden_size": _WIDTH, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}
    config = CLIPConfig(
        text_config=tower
        | {"vocab_size": len(vocab), "max_position_embeddings": 77, "bos_token_id": vocab["<|startoftext|>"]}
        | {"eos_token_id": eos, "pad_token_id": eos},
        vision_config=tower | {"image_size": _SIZE, "patch_size": _SIZE},
        projection_dim=3,
        logit_scale_init_value=math.log(LOGIT_SCALE),
    )
    model = CLIPModel(config)
    balanced = _balanced()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for part in (model.vision_model, model.text_model):
            block = part.encoder.layers[0]
            block.self_attn.v_proj.weight.copy_(torch.eye(_WIDTH))
            block.self_attn.out_proj.weight.copy_(torch.eye(_WIDTH))
            block.layer_norm1.weight.fill_(1)
            block.layer_norm2.weight.fill_(1)
        for norm in (model.vision_model.pre_layrnorm, model.vision_model.post_layernorm):
            norm.weight.fill_(1)
        model.text_model.final_layer_norm.weight.fill_(1)
        # One patch: each output channel averages one colour channel (+ and −); class and position embeddings are
        # zero, so the class token reads the patch through the uniform attention of the single block.
        model.vision_model.embeddings.patch_embedding.weight.copy_((balanced / _SIZE**2)[:, :, None, None])
        model.visual_projection.weight.copy_(balanced.T / 2)
        model.text_projection.weight.copy_(balanced.T / 2)
        tokens = model.text_model.embeddings.token_embedding.weight
        for column, letter in enumerate("rgb"):
            tokens[vocab[letter]] = balanced[:, column]
            tokens[vocab[letter + "</w>"]] = balanced[:, column]
        model.logit_scale.fill_(math.log(LOGIT_SCALE))
    return model.eval()


def write_tiny_clip(folder: Path) -> Path:
    """The model, CLIP's tokenizer files (character vocabulary) and an image processor that only resizes and
    scales to 0..1 (mean 0, std 1), in one folder as ``save_pretrained`` writes them."""
    vocabulary = write_tokenizer(folder / "tokenizer-files")
    tokenizer = CLIPTokenizer(str(vocabulary / "vocab.json"), str(vocabulary / "merges.txt"))
    images = CLIPImageProcessor(
        size={"shortest_edge": _SIZE},
        crop_size={"height": _SIZE, "width": _SIZE},
        image_mean=[0, 0, 0],
        image_std=[1, 1, 1],
    )
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    tiny_clip_model().save_pretrained(folder)
    return folder


def image_embedding(rgb: tuple[int, int, int]) -> torch.Tensor:
    """What the tiny CLIP gives for a flat image of colour ``rgb``."""
    return torch.nn.functional.normalize(torch.tensor(rgb, dtype=torch.float32) / 255, dim=0)


def text_embedding(text: str) -> torch.Tensor:
    """What the tiny CLIP gives for ``text``."""
    counts = torch.tensor([float(text.count(c)) for c in "rgb"])
    return torch.nn.functional.normalize(counts, dim=0)


def zero_shot_reference(rgb: tuple[int, int, int], positive: str, contrast: str) -> float:
    image = image_embedding(rgb)
    margin = float(image @ text_embedding(positive) - image @ text_embedding(contrast))
    return 1 / (1 + math.exp(-LOGIT_SCALE * margin))


def write_red_aesthetic_head(path: Path, scale: float = 10.0) -> Path:
    """A LAION-layout head for the 3-wide tiny CLIP whose score is ``scale`` × the red component of the image
    embedding (the head is linear: each Linear passes component 0 on)."""
    head = AestheticHead(3)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        linears = [m for m in head.layers if isinstance(m, torch.nn.Linear)]
        for layer in linears:
            layer.weight[0, 0] = 1.0
        linears[-1].weight[0, 0] = scale
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path))
    return path


def aesthetic_reference(rgb: tuple[int, int, int], scale: float = 10.0) -> float:
    return scale * float(image_embedding(rgb)[0])
