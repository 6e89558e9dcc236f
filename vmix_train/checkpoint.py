"""Loading a WebUI single-file checkpoint (``.safetensors``) offline, as diffusers/transformers modules.

SD 1.x, SD 2.x and SDXL base checkpoints all load into the same implementation: diffusers' UNet2DConditionModel and
AutoencoderKL, transformers' CLIP text models. The conversion of the ldm/sgm key names is diffusers' own
(``diffusers.loaders.single_file_utils``); what this module adds is that nothing is fetched: the model config is
built in (Stability's ``v1-inference.yaml``, ``v2-inference(-v).yaml`` and ``sd_xl_base.yaml`` values) or read
from a local YAML file, the text encoder's config is read off the checkpoint's tensor shapes, and the tokenizer comes
from a local folder or the Hugging Face cache the WebUI already filled. ``.ckpt`` files are refused: loading them
runs pickle.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vmix_ext.families import family_label
from vmix_ext.weights import short_hash
from vmix_train.model import BaseModel

SD1_CLIP_TOKENIZER = "openai/clip-vit-large-patch14"  # the tokenizer A1111 loads for SD 1.x (kept in the HF cache)
_CLIP_PREFIX = "cond_stage_model.transformer."
_SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."  # SDXL's CLIP ViT-L, transformers' names
_SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."  # SDXL's OpenCLIP ViT-bigG, OpenCLIP's names
_FAMILY_MARKERS = {  # a key only that family's checkpoints hold
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": "sd1",
    "cond_stage_model.model.token_embedding.weight": "sd2",
    "conditioner.embedders.1.model.token_embedding.weight": "sdxl",
    "conditioner.embedders.0.model.token_embedding.weight": "sdxl_refiner",
}

# The parts of Stability's configs/stable-diffusion/v1-inference.yaml that diffusers' converters read.
SD1_ORIGINAL_CONFIG: dict[str, Any] = {
    "model": {
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.012,
            "timesteps": 1000,
            "scale_factor": 0.18215,
            "parameterization": "eps",
            "unet_config": {
                "params": {
                    "image_size": 32,
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "attention_resolutions": [4, 2, 1],
                    "num_res_blocks": 2,
                    "channel_mult": [1, 2, 4, 4],
                    "num_heads": 8,
                    "use_spatial_transformer": True,
                    "transformer_depth": 1,
                    "context_dim": 768,
                    "legacy": False,
                }
            },
            "first_stage_config": {
                "params": {
                    "embed_dim": 4,
                    "ddconfig": {
                        "double_z": True,
                        "z_channels": 4,
                        "resolution": 256,
                        "in_channels": 3,
                        "out_ch": 3,
                        "ch": 128,
                        "ch_mult": [1, 2, 4, 4],
                        "num_res_blocks": 2,
                        "attn_resolutions": [],
                        "dropout": 0.0,
                    },
                }
            },
        }
    }
}


def sd2_original_config(parameterization: str) -> dict[str, Any]:
    """Stability's v2-inference(-v).yaml values: OpenCLIP-H context (1024 wide), 64-channel heads, linear
    projections in the transformers; "v" for the 768-v models, "eps" for 512-base."""
    config = copy.deepcopy(SD1_ORIGINAL_CONFIG)
    params = config["model"]["params"]
    params["parameterization"] = parameterization
    unet = params["unet_config"]["params"]
    del unet["num_heads"]
    unet.update(num_head_channels=64, use_linear_in_transformer=True, context_dim=1024, image_size=96)
    return config


def sdxl_original_config() -> dict[str, Any]:
    """Stability's sd_xl_base.yaml values: 2048-wide context (CLIP ViT-L ‖ OpenCLIP ViT-bigG), no attention at the
    first level, 2 and 10 transformer blocks per layer below it, the pooled-text-and-sizes vector (2816 wide) added
    to the time embedding, and SDXL's VAE scale factor. diffusers reads this UNet section as ``unet_config`` or as
    sgm's ``network_config``."""
    config = copy.deepcopy(SD1_ORIGINAL_CONFIG)
    params = config["model"]["params"]
    params["scale_factor"] = 0.13025
    unet = params["unet_config"]["params"]
    del unet["num_heads"]
    unet.update(
        image_size=128,
        attention_resolutions=[4, 2],
        channel_mult=[1, 2, 4],
        num_head_channels=64,
        use_linear_in_transformer=True,
        transformer_depth=[1, 2, 10],
        context_dim=2048,
        num_classes="sequential",
        adm_in_channels=2816,
    )
    return config


# Each family's built-in config, used when no YAML is given (SD 2.x's prediction type is set from [model] then).
_STANDARD_CONFIGS: dict[str, Callable[[], dict[str, Any]]] = {
    "sd1": lambda: copy.deepcopy(SD1_ORIGINAL_CONFIG),
    "sd2": lambda: sd2_original_config("v"),
    "sdxl": sdxl_original_config,
}
PREDICTIONS = {"epsilon": "eps", "v": "v"}  # [model] prediction -> the ldm config's parameterization
_OPEN_CLIP_PREFIX = "cond_stage_model.model."


class CheckpointError(ValueError):
    """A base model that cannot be loaded; the message names the file and what to do."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"base model '{path}': {problem}")


def load_single_file(
    path: str | Path,
    *,
    original_config: str | Path | dict[str, Any] | None = None,
    tokenizer: str | Path | None = None,
    clip_skip: int = 1,
    text_encoder_heads: int | None = None,
    prediction: str | None = None,
) -> BaseModel:
    """Load an SD 1.x, SD 2.x or SDXL base single-file checkpoint on the CPU in float32, frozen.

    ``original_config``: the ldm/sgm YAML (the WebUI's ``configs/v1-inference.yaml``, or the ``.yaml`` next to a
    checkpoint) or its parsed dict; the family's standard values when omitted. ``tokenizer``: a folder with CLIP's
    ``vocab.json`` and ``merges.txt`` (every family's tokenizers share CLIP's vocabulary); when omitted, the copy in
    the Hugging Face cache that the WebUI downloaded. ``text_encoder_heads``: attention heads of the text encoders
    (width / 64 when omitted, as in every CLIP). ``prediction``: "epsilon" or "v", overriding the config; SD 2.x
    needs it (or a config) because its weights do not say whether the model is a v-prediction one (768-v) or not
    (512-base).
    """
    path = Path(path)
    checkpoint = _read_checkpoint(path)
    try:
        return _build(checkpoint, path, original_config, tokenizer, clip_skip, text_encoder_heads, prediction)
    except CheckpointError:
        raise
    except (KeyError, IndexError, ValueError, RuntimeError, TypeError, AttributeError) as exc:
        # A file with the right markers but parts missing or malformed (a pruned or merged file gone wrong).
        raise CheckpointError(
            path, f"is not a complete checkpoint this trainer can load ({type(exc).__name__}: {exc})"[:600]
        ) from None


def _build(
    checkpoint: dict[str, torch.Tensor],
    path: Path,
    original_config: str | Path | dict[str, Any] | None,
    tokenizer: str | Path | None,
    clip_skip: int,
    text_encoder_heads: int | None,
    prediction: str | None,
) -> BaseModel:
    family = detect_family(checkpoint, path)
    if family == "sdxl_refiner":
        raise CheckpointError(
            path,
            "is an SDXL refiner checkpoint; the trainer trains base models (SD 1.x, SD 2.x, SDXL base). Train on the "
            "SDXL base checkpoint; an adapter for the refiner would need the refiner's own 1280-wide context",
        )
    if prediction is not None and prediction not in PREDICTIONS:
        raise CheckpointError(path, f"prediction must be one of {list(PREDICTIONS)}, not {prediction!r}")
    if family == "sd2" and original_config is None and prediction is None:
        raise CheckpointError(
            path,
            "is an SD 2.x checkpoint, which is either v-prediction (768-v models) or ε-prediction (512-base): "
            'set [model] prediction = "v" or "epsilon" (or give its YAML as [model] config)',
        )
    if family != "sd1" and clip_skip != 1:
        layers = (
            "both text encoders' penultimate layers" if family == "sdxl" else "its text encoder's penultimate layer"
        )
        raise CheckpointError(path, f"{family_label(family)} always uses {layers}; leave clip_skip at 1")
    if original_config is not None:
        config = _original_config(original_config, path)
    else:
        config = _STANDARD_CONFIGS[family]()
    params = config["model"]["params"]
    if prediction is not None:
        params["parameterization"] = PREDICTIONS[prediction]
    unet = _load_unet(checkpoint, config, path)
    vae = _load_vae(checkpoint, config, path)
    # Every family tokenizes with CLIP's vocabulary. OpenCLIP's towers (SD 2.x, SDXL's second encoder) pad with
    # token 0 after the end of text, as A1111 pads them; CLIP ViT-L pads with the end-of-text token.
    tokenize, bos, eos = _tokenizer(tokenizer, path)
    tokenize_2 = None
    text_encoder_2 = None
    if family == "sd2":
        tokenize = _pad_with_zero(tokenize, eos)
        text_encoder = _load_open_clip(checkpoint, path, text_encoder_heads, bos, eos)
    elif family == "sdxl":
        text_encoder = _load_clip(checkpoint, path, text_encoder_heads, bos, eos, _SDXL_CLIP_PREFIX)
        tokenize_2 = _pad_with_zero(tokenize, eos)
        text_encoder_2 = _load_open_clip(
            checkpoint, path, text_encoder_heads, bos, eos, _SDXL_OPEN_CLIP_PREFIX, with_projection=True
        )
    else:
        text_encoder = _load_clip(checkpoint, path, text_encoder_heads, bos, eos)
    scheduler = noise_schedule(params)
    base = BaseModel(
        unet=unet,
        text_encoder=text_encoder,
        tokenize=tokenize,
        eos_token_id=eos,
        scheduler=scheduler,
        family=family,
        vae=vae,
        clip_skip=clip_skip,
        name=path.name,
        hash=short_hash(path),
        text_encoder_2=text_encoder_2,
        tokenize_2=tokenize_2,
    )
    return base.freeze()


def detect_family(checkpoint: dict[str, torch.Tensor], path: str | Path) -> str:
    if not any(key.startswith("model.diffusion_model.") for key in checkpoint):
        raise CheckpointError(
            path, "is not a Stable Diffusion checkpoint (no model.diffusion_model.* weights; a LoRA, VAE or embedding?)"
        )
    for key, family in _FAMILY_MARKERS.items():
        if key in checkpoint:
            return family
    raise CheckpointError(path, "holds a UNet but no text encoder this trainer knows (SD 1.x, SD 2.x or SDXL)")


def noise_schedule(params: dict[str, Any]) -> Any:
    """The training noise schedule the ldm config describes (SD's scaled-linear betas; ε or v prediction)."""
    from diffusers import DDPMScheduler

    prediction = {"eps": "epsilon", "v": "v_prediction"}.get(params.get("parameterization", "eps"))
    if prediction is None:
        raise ValueError(f"unknown parameterization {params.get('parameterization')!r} (eps or v)")
    return DDPMScheduler(
        num_train_timesteps=int(params.get("timesteps", 1000)),
        beta_start=float(params.get("linear_start", 0.00085)),
        beta_end=float(params.get("linear_end", 0.012)),
        beta_schedule="scaled_linear",
        prediction_type=prediction,
        clip_sample=False,
    )


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise CheckpointError(
            path,
            "is a pickle file; the trainer reads .safetensors only (loading pickle can run code). "
            "Convert it to .safetensors first, or use the .safetensors release of the model.",
        )
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(path, f"is not a readable .safetensors file ({exc})") from None


def _original_config(source: str | Path | dict[str, Any] | None, path: Path) -> dict[str, Any]:
    if source is None:
        return copy.deepcopy(SD1_ORIGINAL_CONFIG)
    if isinstance(source, dict):
        return copy.deepcopy(source)
    import yaml  # a dependency of huggingface_hub, which diffusers needs

    try:
        loaded = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(path, f"its model config '{source}' cannot be read ({exc})") from None
    if not isinstance(loaded, dict) or "model" not in loaded:
        raise CheckpointError(path, f"its model config '{source}' is not an ldm config (no 'model' section)")
    return loaded


def _strict_load(module: torch.nn.Module, state: dict[str, torch.Tensor], part: str, path: Path) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ from the config's
        detail = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise CheckpointError(path, f"its {part} does not match the model config ({detail})") from None
    missing = list(result.missing_keys)
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
    if missing or unexpected:
        shown = ", ".join((missing + unexpected)[:3])
        raise CheckpointError(
            path,
            f"its {part} does not match the model config ({len(missing)} missing, {len(unexpected)} unexpected "
            f"weights, e.g. {shown}); is the config for this model?",
        )


def _load_unet(checkpoint: dict[str, torch.Tensor], config: dict[str, Any], path: Path) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    parts = (create_unet_diffusers_config_from_ldm, UNet2DConditionModel, convert_ldm_unet_checkpoint)
    return _load_part("UNet", *parts, checkpoint, config, path)


def _load_vae(checkpoint: dict[str, torch.Tensor], config: dict[str, Any], path: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    parts = (create_vae_diffusers_config_from_ldm, AutoencoderKL, convert_ldm_vae_checkpoint)
    return _load_part("VAE", *parts, checkpoint, config, path)


def _load_part(
    part: str,
    make_config: Callable[..., dict[str, Any]],
    model_class: Callable[..., torch.nn.Module],
    convert: Callable[..., dict[str, torch.Tensor]],
    checkpoint: dict[str, torch.Tensor],
    config: dict[str, Any],
    path: Path,
) -> torch.nn.Module:
    """One diffusers model from the ldm config and weights, with diffusers' own config builder and key converter."""
    try:
        part_config = make_config(config, checkpoint)
        model = model_class(**part_config)
        state = convert(checkpoint, part_config)
    except (KeyError, IndexError, RuntimeError) as exc:
        raise CheckpointError(path, f"its {part} does not match the model config ({exc!r})") from None
    _strict_load(model, state, part, path)
    return model


def _load_clip(
    checkpoint: dict[str, torch.Tensor],
    path: Path,
    heads: int | None,
    bos: int,
    eos: int,
    prefix: str = _CLIP_PREFIX,
) -> torch.nn.Module:
    """The CLIP ViT-L text encoder, stored with transformers' own names under ``prefix``
    (``cond_stage_model.transformer.`` in SD 1.x, ``conditioner.embedders.0.transformer.`` in SDXL)."""
    state = {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}
    vocab, width = state["text_model.embeddings.token_embedding.weight"].shape
    shape = _TextShape(
        vocab=vocab,
        width=width,
        inner=state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        layers=1 + max(int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")),
        positions=state["text_model.embeddings.position_embedding.weight"].shape[0],
        activation="quick_gelu",
    )
    return _text_model(shape, state, path, heads, bos, eos)


def _load_open_clip(
    checkpoint: dict[str, torch.Tensor],
    path: Path,
    heads: int | None,
    bos: int,
    eos: int,
    prefix: str = _OPEN_CLIP_PREFIX,
    with_projection: bool = False,
) -> torch.nn.Module:
    """An OpenCLIP text tower as a transformers CLIP text model.

    SD 2.x (``with_projection`` False): the UNet context is the penultimate block's output through the final layer
    norm (ldm's FrozenOpenCLIPEmbedder, layer "penultimate", which A1111 uses), so the last block is dropped and
    ``last_hidden_state`` is that context. SDXL (``with_projection`` True): the whole tower with its text projection,
    a CLIPTextModelWithProjection; the context is ``hidden_states[-2]`` (sgm's "penultimate", without the final
    layer norm) and ``text_embeds`` is the pooled vector (the final layer norm's end-of-text row, projected).
    """
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    block_keys = [k for k in checkpoint if k.startswith(prefix + "transformer.resblocks.")]
    blocks = {int(k[len(prefix) :].split(".")[2]) for k in block_keys}
    if not blocks:
        raise CheckpointError(path, "its OpenCLIP text encoder has no transformer blocks")
    last = max(blocks)
    kept = checkpoint
    if not with_projection:
        kept = {k: v for k, v in checkpoint.items() if not k.startswith(f"{prefix}transformer.resblocks.{last}.")}
    projection = checkpoint.get(prefix + "text_projection")
    if with_projection and projection is None:
        raise CheckpointError(path, f"its OpenCLIP text encoder has no {prefix}text_projection (the pooled output)")
    vocab, width = checkpoint[prefix + "token_embedding.weight"].shape
    shape = _TextShape(
        vocab=vocab,
        width=width,
        inner=checkpoint[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        layers=last + 1 if with_projection else last,  # SD 2.x: all but the last block
        positions=checkpoint[prefix + "positional_embedding"].shape[0],
        activation="gelu",
        projection=int(projection.shape[1]) if with_projection else None,
    )

    def convert(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        state = convert_open_clip_checkpoint(model, kept, prefix=prefix)
        if not with_projection:
            state.pop("text_projection.weight", None)  # the pooled projection; SD 2.x's context does not use it
        return state

    return _text_model(shape, convert, path, heads, bos, eos)


@dataclass(frozen=True)
class _TextShape:
    """What a CLIP text model's config needs, read off a checkpoint's tensors."""

    vocab: int
    width: int
    inner: int
    layers: int
    positions: int
    activation: str
    projection: int | None = None  # the pooled output's projection width; None = no projection (CLIPTextModel)


def _text_model(
    shape: _TextShape,
    weights: dict[str, torch.Tensor] | Callable[[torch.nn.Module], dict[str, torch.Tensor]],
    path: Path,
    heads: int | None,
    bos: int,
    eos: int,
) -> torch.nn.Module:
    """A transformers CLIPTextModel (CLIPTextModelWithProjection when ``shape.projection`` is set) of ``shape``
    loaded with ``weights`` (named as in transformers 4, with the ``text_model.`` prefix; or a function of the new
    model that returns them)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.width,
        intermediate_size=shape.inner,
        num_hidden_layers=shape.layers,
        num_attention_heads=heads or max(1, shape.width // 64),  # 64-wide heads in every CLIP
        max_position_embeddings=shape.positions,
        hidden_act=shape.activation,
        bos_token_id=bos,
        eos_token_id=eos,  # only the pooled output reads it; the context does not
        projection_dim=shape.projection or shape.width,
    )
    model = CLIPTextModelWithProjection(config) if shape.projection else CLIPTextModel(config)
    state = weights(model) if callable(weights) else weights
    if not hasattr(model, "text_model"):  # transformers 5 dropped the text_model wrapper
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    _strict_load(model, state, "text encoder", path)
    return model


def _tokenizer(source: str | Path | None, path: Path) -> tuple[Any, int, int]:
    from transformers import CLIPTokenizer

    try:
        if source is not None:
            files = {p.name for p in Path(source).iterdir()} if Path(source).is_dir() else set()
            if not ({"vocab.json", "merges.txt"} <= files or "tokenizer.json" in files):
                raise OSError("vocab.json and merges.txt are not there")
            tokenizer = CLIPTokenizer.from_pretrained(str(source), local_files_only=True)
        else:
            tokenizer = CLIPTokenizer.from_pretrained(SD1_CLIP_TOKENIZER, local_files_only=True)
        if tokenizer.eos_token_id is None or len(tokenizer) < 3:  # an empty vocabulary loads without complaint
            raise ValueError("the tokenizer has no vocabulary")
    except (OSError, ValueError) as exc:
        where = f"'{source}'" if source is not None else f"the Hugging Face cache ({SD1_CLIP_TOKENIZER})"
        raise CheckpointError(
            path,
            f"no CLIP tokenizer found in {where} ({type(exc).__name__}). Give [model] tokenizer = a folder with "
            "vocab.json and merges.txt; a WebUI that has run SD 1.x keeps one under "
            "~/.cache/huggingface/hub/models--openai--clip-vit-large-patch14/snapshots/.",
        ) from None

    def tokenize(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return batch.input_ids

    return tokenize, int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)


def _pad_with_zero(tokenize: Callable[[list[str]], torch.Tensor], eos: int) -> Callable[[list[str]], torch.Tensor]:
    """``tokenize`` with everything after the first end-of-text token set to 0, OpenCLIP's padding."""

    def padded(texts: list[str]) -> torch.Tensor:
        ids = tokenize(texts)
        ends_so_far = (ids == eos).int().cumsum(-1)
        after_end = (ends_so_far > 1) | ((ends_so_far == 1) & (ids != eos))
        return ids.masked_fill(after_end, 0)

    return padded
