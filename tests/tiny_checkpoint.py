"""A tiny SD 1.x single-file checkpoint, built in code from the real ldm modules (UNet, VAE encoder/decoder) and a
transformers CLIP text encoder, with the key names WebUI checkpoints use; plus CLIP tokenizer files for it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from vmix_train.checkpoint import SD1_ORIGINAL_CONFIG

# The two dimensions of the trainer tests' run configs, as TOML tables.
DIMENSIONS_TOML = """
[[dimensions]]
name = "color"
positive = "vivid colour"
negative = "sks1"

[[dimensions]]
name = "lighting"
positive = "natural lighting"
negative = "sks2"
"""
CONTEXT_DIM = 768  # SD 1.x's width, so the family is recognised as it is for real checkpoints
_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
UNET_PARAMS = {
    "image_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "attention_resolutions": [1, 2],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_heads": 2,
    "use_spatial_transformer": True,
    "transformer_depth": 1,
    "context_dim": CONTEXT_DIM,
    "use_linear_in_transformer": True,
    "legacy": False,
}
# SD 2.x: OpenCLIP's 1024-wide context, 64-channel heads in the real model (16 here), linear projections.
SD2_UNET_PARAMS = {k: v for k, v in UNET_PARAMS.items() if k != "num_heads"} | {
    "num_head_channels": 16,
    "context_dim": 1024,
}
VAE_PARAMS = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 32,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def original_config(parameterization: str = "eps", unet_params: dict | None = None) -> dict:
    """The ldm YAML of the tiny model, as a dict: SD 1.x's v1-inference values (the trainer's built-in copy) with the
    tiny UNet and VAE. ``unet_params``: the UNet's, when the model was built with other ones."""
    config = copy.deepcopy(SD1_ORIGINAL_CONFIG)
    params = config["model"]["params"]
    params["parameterization"] = parameterization
    params["unet_config"]["params"] = dict(unet_params or UNET_PARAMS)
    params["first_stage_config"]["params"]["ddconfig"] = dict(VAE_PARAMS)
    return config


class TinyLdmModel(nn.Module):
    """The parts of an ldm LatentDiffusion a WebUI checkpoint stores, under the same names."""

    def __init__(self, seed: int = 0, unet_params: dict | None = None, family: str = "sd1") -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.family = family
        if family == "sd2":
            unet_params = unet_params or SD2_UNET_PARAMS
        self.unet = UNetModel(**(unet_params or UNET_PARAMS))  # other params: e.g. SD's 2 ResNets per level
        self.encoder = Encoder(**VAE_PARAMS)
        self.decoder = Decoder(**VAE_PARAMS)
        self.quant_conv = nn.Conv2d(8, 8, 1)
        self.post_quant_conv = nn.Conv2d(4, 4, 1)
        sd2 = family == "sd2"
        self.clip = CLIPTextModel(  # SD 2.x: OpenCLIP's text tower, GELU, one block more than the context uses
            CLIPTextConfig(
                vocab_size=len(tokenizer_vocab()),
                hidden_size=1024 if sd2 else CONTEXT_DIM,
                intermediate_size=128,
                num_hidden_layers=4 if sd2 else 3,
                num_attention_heads=16 if sd2 else 12,
                max_position_embeddings=77,
                hidden_act="gelu" if sd2 else "quick_gelu",
                bos_token_id=tokenizer_vocab()["<|startoftext|>"],
                eos_token_id=tokenizer_vocab()["<|endoftext|>"],
            )
        )
        with torch.no_grad():  # ldm zero-initialises output layers; random weights make every part count
            for p in self.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.05)
        self.eval()

    def state_dict_ldm(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for k, v in self.unet.state_dict().items():
            state["model.diffusion_model." + k] = v
        for part in ("encoder", "decoder", "quant_conv", "post_quant_conv"):
            for k, v in getattr(self, part).state_dict().items():
                state[f"first_stage_model.{part}.{k}"] = v
        if self.family == "sd2":
            state.update(open_clip_state(self.clip, "cond_stage_model.model."))
        else:
            for k, v in self.clip.state_dict().items():
                key = k if k.startswith("text_model.") else "text_model." + k
                state["cond_stage_model.transformer." + key] = v
        return {k: v.contiguous() for k, v in state.items()}

    def save(self, path: Path) -> Path:
        save_file(self.state_dict_ldm(), str(path))
        return path


def tokenizer_vocab() -> dict[str, int]:
    """Single characters (with and without the end-of-word mark) and CLIP's two special tokens."""
    tokens = [*_LETTERS, *(c + "</w>" for c in _LETTERS), "<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def write_tokenizer(folder: Path) -> Path:
    """vocab.json and merges.txt in CLIP's format (no merges: every word is spelled out by characters)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tokenizer_vocab()), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


def open_clip_state(clip: CLIPTextModel, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model's weights under OpenCLIP's names, as SD 2.x checkpoints store its text tower
    (fused q/k/v ``in_proj``, ``resblocks``, ``ln_final``, a ``text_projection``)."""
    weights = {k.removeprefix("text_model."): v for k, v in clip.state_dict().items()}
    out = {
        "token_embedding.weight": weights["embeddings.token_embedding.weight"],
        "positional_embedding": weights["embeddings.position_embedding.weight"],
        "ln_final.weight": weights["final_layer_norm.weight"],
        "ln_final.bias": weights["final_layer_norm.bias"],
        "text_projection": torch.randn(clip.config.hidden_size, clip.config.hidden_size),
    }
    for i in range(clip.config.num_hidden_layers):
        layer, block = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            qkv = [weights[f"{layer}self_attn.{p}_proj.{part}"] for p in "qkv"]
            out[f"{block}attn.in_proj_{part}"] = torch.cat(qkv)
            out[f"{block}attn.out_proj.{part}"] = weights[f"{layer}self_attn.out_proj.{part}"]
            out[f"{block}ln_1.{part}"] = weights[f"{layer}layer_norm1.{part}"]
            out[f"{block}ln_2.{part}"] = weights[f"{layer}layer_norm2.{part}"]
            out[f"{block}mlp.c_fc.{part}"] = weights[f"{layer}mlp.fc1.{part}"]
            out[f"{block}mlp.c_proj.{part}"] = weights[f"{layer}mlp.fc2.{part}"]
    return {prefix + k: v for k, v in out.items()}
