"""Tiny SD 1.x, SD 2.x and SDXL single-file checkpoints, built in code from the real ldm modules (UNet, VAE
encoder/decoder) and transformers CLIP text encoders, with the key names WebUI checkpoints use; plus CLIP tokenizer
files for them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from helpers import share_context
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.diffusionmodules.util import timestep_embedding
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from vmix_ext.adapter import Dimension
from vmix_train.checkpoint import SD1_ORIGINAL_CONFIG, load_single_file, sdxl_original_config
from vmix_train.config import RunConfig, TrainingOptions
from vmix_train.dataset import load_dataset

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
TWO_DIMENSIONS = (Dimension("light", "natural lighting", "sks1"), Dimension("color", "vivid colour", "sks2"))
# A tiny run's [train]: 16-px images in 8-px buckets up to 3:1 (8x24, 16x16, 24x8), no sample grids.
TINY_OPTIONS = TrainingOptions(
    steps=2,
    batch_size=2,
    resolution=16,
    bucket_step=8,
    bucket_max_aspect=3.0,
    learning_rate=1e-3,
    sample_count=0,
    num_workers=0,
)
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
# SDXL: the 2048-wide context of CLIP ViT-L (768) and OpenCLIP ViT-bigG (1280), two transformer blocks per layer,
# and the vector conditioning: the pooled bigG text (1280) and six sizes embedded 256 wide each.
SDXL_UNET_PARAMS = SD2_UNET_PARAMS | {
    "context_dim": 2048,
    "transformer_depth": 2,
    "num_classes": "sequential",
    "adm_in_channels": 1280 + 6 * 256,
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


def original_config(parameterization: str = "eps", unet_params: dict | None = None, family: str = "sd1") -> dict:
    """The ldm YAML of the tiny model, as a dict: the trainer's built-in values for the family (SD 1.x's
    v1-inference, or sd_xl_base with its VAE scale) with the tiny UNet and VAE. ``unet_params``: the UNet's, when
    the model was built with other ones."""
    config = sdxl_original_config() if family == "sdxl" else copy.deepcopy(SD1_ORIGINAL_CONFIG)
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
        unet_params = unet_params or {"sd2": SD2_UNET_PARAMS, "sdxl": SDXL_UNET_PARAMS}.get(family, UNET_PARAMS)
        self.unet = sgm_unet(unet_params) if family == "sdxl" else UNetModel(**unet_params)
        self.encoder = Encoder(**VAE_PARAMS)
        self.decoder = Decoder(**VAE_PARAMS)
        self.quant_conv = nn.Conv2d(8, 8, 1)
        self.post_quant_conv = nn.Conv2d(4, 4, 1)
        # SD 2.x: OpenCLIP's text tower (GELU, one block more than the context uses); SD 1.x and SDXL's first
        # encoder: CLIP ViT-L; SDXL's second: OpenCLIP ViT-bigG, whose text projection gives the pooled vector.
        self.clip = clip_text_model(1024 if family == "sd2" else CONTEXT_DIM, open_clip=family == "sd2")
        self.clip_g = clip_text_model(1280, open_clip=True) if family == "sdxl" else None
        self.text_projection = nn.Parameter(torch.randn(1280, 1280) / 1280**0.5) if family == "sdxl" else None
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
        elif self.family == "sdxl":
            state.update(clip_state(self.clip, "conditioner.embedders.0.transformer."))
            state.update(open_clip_state(self.clip_g, "conditioner.embedders.1.model.", self.text_projection.detach()))
        else:
            state.update(clip_state(self.clip, "cond_stage_model.transformer."))
        return {k: v.contiguous() for k, v in state.items()}

    @torch.no_grad()
    def sdxl_vector(self, pooled: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """sgm's vector conditioning ``y``: the pooled text, then each of the six size numbers (original size, crop
        corner, target size) as a 256-wide sinusoidal embedding (sgm's ConcatTimestepEmbedderND)."""
        embedded = timestep_embedding(sizes.flatten(), 256).reshape(sizes.shape[0], -1)
        return torch.cat([pooled, embedded], dim=-1)

    def save(self, path: Path) -> Path:
        save_file(self.state_dict_ldm(), str(path))
        return path


def clip_text_model(width: int, open_clip: bool) -> CLIPTextModel:
    vocab = tokenizer_vocab()
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=width,
            intermediate_size=128,
            num_hidden_layers=4 if open_clip else 3,
            num_attention_heads=width // 64,
            max_position_embeddings=77,
            hidden_act="gelu" if open_clip else "quick_gelu",
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
        )
    )


def sgm_unet(params: dict) -> UNetModel:
    """An SDXL-shaped UNet as sgm builds it, from the pip ldm's UNetModel: every transformer block sees the same
    context, and ``label_emb`` (Linear, SiLU, Linear) adds the vector conditioning to the time embedding; the pip
    ldm knows neither, so both are added here the way sgm's openaimodel.py has them."""
    ldm_params = {k: v for k, v in params.items() if k not in ("num_classes", "adm_in_channels")}
    ldm_params["context_dim"] = [params["context_dim"]] * params["transformer_depth"]
    unet = UNetModel(**ldm_params)
    share_context(unet)
    width = unet.time_embed[0].out_features
    unet.num_classes = "sequential"
    unet.label_emb = nn.Sequential(
        nn.Sequential(nn.Linear(params["adm_in_channels"], width), nn.SiLU(), nn.Linear(width, width))
    )
    return unet


def clip_state(clip: CLIPTextModel, prefix: str) -> dict[str, torch.Tensor]:
    """transformers' names with the ``text_model.`` prefix (transformers 4), as checkpoints store CLIP ViT-L."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in clip.state_dict().items()}


def write_dataset(folder: Path, sizes: list[tuple[int, int]], dimensions: list[str]) -> Path:
    """A training dataset: one flat-colour image per (width, height), captioned "a dog <i>"; image i has dimension
    j when (i + j) is even, so every dimension is on for some images and off for others."""
    folder.mkdir(parents=True)
    lines = []
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (60 * i % 256, 90, 30)).save(folder / f"{i}.png")
        labels = {name: (i + j) % 2 == 0 for j, name in enumerate(dimensions)}
        lines.append(json.dumps({"file_name": f"{i}.png", "caption": f"a dog {i}", "labels": labels}))
    (folder / "metadata.jsonl").write_text("\n".join(lines))
    return folder


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


def open_clip_state(
    clip: CLIPTextModel, prefix: str, projection: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model's weights under OpenCLIP's names, as SD 2.x and SDXL checkpoints store its
    text tower (fused q/k/v ``in_proj``, ``resblocks``, ``ln_final``, a ``text_projection``, random when not
    given: SD 2.x does not use it)."""
    weights = {k.removeprefix("text_model."): v for k, v in clip.state_dict().items()}
    out = {
        "token_embedding.weight": weights["embeddings.token_embedding.weight"],
        "positional_embedding": weights["embeddings.position_embedding.weight"],
        "ln_final.weight": weights["final_layer_norm.weight"],
        "ln_final.bias": weights["final_layer_norm.bias"],
        "text_projection": torch.randn(clip.config.hidden_size, clip.config.hidden_size)
        if projection is None
        else projection,
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


def tiny_trainer(model: tuple[Path, Path], data: Path, out: Path, options: TrainingOptions = TINY_OPTIONS, **config):
    """A Trainer for the tiny SD 1.x checkpoint ``model`` = (checkpoint, tokenizer folder) on the dataset ``data``
    (dimensions ``TWO_DIMENSIONS``), writing to ``out``; ``config``: other RunConfig fields."""
    from vmix_train.loop import Trainer

    checkpoint, tokenizer = model
    base = load_single_file(checkpoint, original_config=original_config(), tokenizer=tokenizer)
    run = RunConfig(checkpoint, data, out, TWO_DIMENSIONS, options, **config)
    examples = load_dataset(data, [d.name for d in TWO_DIMENSIONS])
    return Trainer(run, base, examples, device="cpu", progress=False, log=lambda _: None)
