"""A tiny SD 1.x single-file checkpoint, built in code from the real ldm modules (UNet, VAE encoder/decoder) and a
transformers CLIP text encoder, with the key names WebUI checkpoints use; plus CLIP tokenizer files for it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

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
    """The ldm YAML of the tiny model, as a dict (the shape of configs/v1-inference.yaml). ``unet_params``: the
    UNet's, when the model was built with other ones."""
    return {
        "model": {
            "params": {
                "linear_start": 0.00085,
                "linear_end": 0.012,
                "timesteps": 1000,
                "scale_factor": 0.18215,
                "parameterization": parameterization,
                "unet_config": {"params": dict(unet_params or UNET_PARAMS)},
                "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": dict(VAE_PARAMS)}},
            }
        }
    }


class TinyLdmModel(nn.Module):
    """The parts of an ldm LatentDiffusion a WebUI checkpoint stores, under the same names."""

    def __init__(self, seed: int = 0, unet_params: dict | None = None) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.unet = UNetModel(**(unet_params or UNET_PARAMS))  # other params: e.g. SD's 2 ResNets per level
        self.encoder = Encoder(**VAE_PARAMS)
        self.decoder = Decoder(**VAE_PARAMS)
        self.quant_conv = nn.Conv2d(8, 8, 1)
        self.post_quant_conv = nn.Conv2d(4, 4, 1)
        self.clip = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer_vocab()),
                hidden_size=CONTEXT_DIM,
                intermediate_size=128,
                num_hidden_layers=3,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
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
