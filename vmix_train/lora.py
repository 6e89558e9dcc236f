"""Optional LoRA on the trainer's UNet, saved as a separate standard LoRA file (kohya's "LoRA", ``networks.lora``).

A1111's built-in Lora extension and Forge load that file with their own LoRA support, so a run can hand out a VMix
adapter and a LoRA of the same base model side by side. One pair of low-rank matrices sits on every ``nn.Linear``
of the UNet's transformers: self- and cross-attention ``to_q``/``to_k``/``to_v``/``to_out.0``, the feed-forward
``ff.net.0.proj``/``ff.net.2``, and ``proj_in``/``proj_out`` where those are linear (SD 2.x/SDXL style; SD 1.x has
1x1 convolutions there, which are left alone).

The pairs act through forward hooks that add ``scale·up(down(x))`` to a layer's output. Nothing is replaced and no
weight is edited: the VMix mixer already hooks every ``attn2.to_v`` the same way, and additive hooks compose in
either order. The pairs are float32 whatever the UNet runs in (the hook casts on the way in and out), so an
optimizer keeps full-precision weights under bf16 training.

File layout, as the hosts read it: ``lora_unet_<diffusers module path, '.' -> '_'>`` followed by
``.lora_down.weight`` (rank × in), ``.lora_up.weight`` (out × rank) and ``.alpha`` (0-dim); a host adds
``multiplier · alpha/rank · up @ down`` to the layer's weight. Only safetensors is written or read (no pickle).
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from vmix_train.files import save_safetensors

PREFIX = "lora_unet_"  # kohya's prefix for UNet modules (text-encoder ones would be lora_te_)
DOWN = "lora_down.weight"
UP = "lora_up.weight"
ALPHA = "alpha"
NETWORK_MODULE = "networks.lora"  # kohya's name for a plain LoRA; the hosts' UIs show it
SAVE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# Every nn.Linear of a transformer inside the UNet's down, mid and up blocks: the layers kohya's networks.lora
# trains there (it also adapts the 1x1 conv projections of SD 1.x, which this trainer leaves alone).
_TARGET = re.compile(
    r"^(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+\."
    r"(?:proj_in|proj_out"
    r"|transformer_blocks\.\d+\.(?:attn[12]\.(?:to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2))$"
)

# ss_base_model_version by the UNet's context width: A1111's network.py (NetworkOnDisk.detect_version) sorts LoRAs
# into SD1/SD2/SDXL by this key (and ss_v2) to hide the ones that do not fit the loaded model.
_BASE_MODEL_VERSIONS = {768: "sd_v1", 1024: "sd_v2", 2048: "sdxl_base_v1-0"}


class LoraError(ValueError):
    """A LoRA file that cannot be read into this UNet's LoRA; the message names the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"LoRA file '{path}': {problem}")


def lora_targets(unet: nn.Module) -> dict[str, nn.Linear]:
    """The layers a LoRA adapts, by their diffusers module path, in the UNet's module order."""
    return {name: m for name, m in unet.named_modules() if isinstance(m, nn.Linear) and _TARGET.match(name)}


def lora_name(path: str) -> str:
    """``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` ->
    ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`` (kohya's key for the module)."""
    return PREFIX + path.replace(".", "_")


def merged_weight(
    weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, alpha: float, multiplier: float = 1.0
) -> torch.Tensor:
    """``weight + multiplier·(alpha/rank)·up @ down``, computed in float32 and returned in ``weight``'s dtype: what
    the hosts do to a layer when they apply a LoRA file (A1111: extensions-builtin/Lora/network.py
    ``NetworkModule.calc_scale``/``finalize_updown``; Forge: backend/patcher/lora.py ``merge_lora_to_weight``)."""
    rank = down.shape[0]
    delta = up.float().reshape(up.shape[0], -1) @ down.float().reshape(rank, -1)
    return (weight.float() + delta.reshape(weight.shape) * (multiplier * alpha / rank)).to(weight.dtype)


def webui_layout_problem(unet: nn.Module) -> str | None:
    """Why A1111 would not find this UNet's layers under the file's keys, or None when it would.

    A1111 (extensions-builtin/Lora/networks.py, ``convert_diffusers_name_to_compvis``) turns diffusers block numbers
    into ldm ones as if every level held two ResNets and a downsampler, which every SD 1.x/2.x/SDXL UNet does. Forge
    (packages_3rdparty/comfyui_lora_collection/utils.py, ``unet_to_diffusers``) numbers from the model's own config
    and places any layout.
    """
    blocks = getattr(unet, "down_blocks", None)
    if blocks is None:
        return "the UNet is not a diffusers UNet2DConditionModel (no down_blocks)"
    per_level = sorted({len(block.resnets) for block in blocks})
    if per_level != [2]:
        return (
            f"the UNet has {'/'.join(map(str, per_level))} ResNet block(s) per level; A1111 maps LoRA keys as for "
            "2 (SD 1.x/2.x/SDXL), so it would skip or misplace layers (Forge places them right)"
        )
    return None


class LoraPair(nn.Module):
    """One layer's ``lora_down`` (rank × in) and ``lora_up`` (out × rank), named as in the file."""

    def __init__(self, in_features: int, out_features: int, rank: int, generator: torch.Generator | None) -> None:
        super().__init__()
        # skip_init: nn.Linear's own initialisation would draw from the global generator only to be overwritten.
        # float32 always, whatever the UNet's dtype or torch's default dtype: these are the weights the optimizer keeps.
        self.lora_down = nn.utils.skip_init(nn.Linear, in_features, rank, bias=False, dtype=torch.float32)
        self.lora_up = nn.utils.skip_init(nn.Linear, rank, out_features, bias=False, dtype=torch.float32)
        with torch.no_grad():
            # kohya's initialisation: down like an nn.Linear (Kaiming uniform, a=√5), up zero, so that a fresh LoRA
            # adds exactly nothing and training starts from the base model.
            nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5), generator=generator)
            nn.init.zeros_(self.lora_up.weight)

    @property
    def shape(self) -> tuple[int, int]:
        """(in_features, out_features) of the layer this pair adapts."""
        return self.lora_down.in_features, self.lora_up.out_features


class _LoraHook:
    """Forward hook on one target layer: returns its output plus the pair's term."""

    def __init__(self, owner: LoraSet, name: str) -> None:
        # A weak reference, so a LoraSet dropped without detach() stops acting instead of living on in the hooks.
        self.owner = weakref.ref(owner)
        self.name = name

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        owner = self.owner()
        if owner is None or owner.multiplier == 0:
            return None
        return output + owner.delta(self.name, inputs[0]).to(output.dtype)


class LoraSet(nn.Module):
    """A LoRA pair on every target layer of one diffusers ``UNet2DConditionModel``, applied through forward hooks.

    ``rank``: the inner width of each pair; ``alpha``: the scale numerator (scale = alpha/rank; 0 or None means
    alpha = rank, as in kohya); ``seed``: seeds the initialisation of the down matrices (the global generator when
    None). Parameter names are the file's keys (``lora_unet_….lora_down.weight``), stable across runs, so a training
    state can store them and ``load_state_dict`` restore them.
    """

    def __init__(self, unet: nn.Module, rank: int = 4, alpha: float | None = None, *, seed: int | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, not {rank}")
        if alpha is not None and (not math.isfinite(alpha) or alpha < 0):
            raise ValueError(f"LoRA alpha must be a number >= 0 (0 meaning alpha = rank), not {alpha}")
        targets = lora_targets(unet)
        if not targets:
            raise ValueError("the UNet has no transformer Linear layers to put a LoRA on")
        self.rank = int(rank)
        self.alpha = float(alpha) if alpha else float(rank)
        self.multiplier = 1.0  # the hosts' LoRA weight; 0 switches the hooks off without detaching
        self.paths: dict[str, str] = {}  # kohya name -> diffusers module path
        self.context_dim: int | None = None  # the cross-attention context width, for ss_base_model_version
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for path, linear in targets.items():
            name = lora_name(path)
            # Built on the CPU, where the generator lives, in float32 whatever the UNet's dtype (moved below).
            self.add_module(name, LoraPair(linear.in_features, linear.out_features, self.rank, generator))
            self.paths[name] = path
            if self.context_dim is None and path.endswith(".attn2.to_k"):
                self.context_dim = linear.in_features
        device = next(unet.parameters()).device
        self.to(device)
        self._handles: list[RemovableHandle] = []
        self._unet: weakref.ReferenceType[nn.Module] | None = None

    # -- the pairs ---------------------------------------------------------------------------------------------

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def pairs(self) -> dict[str, LoraPair]:
        """The pairs by kohya name, in the UNet's module order."""
        return {name: self.pair(name) for name in self.paths}

    def pair(self, name: str) -> LoraPair:
        return cast(LoraPair, self._modules[name])

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The term the pair ``name`` adds to its layer's output for input ``x``, in the pair's dtype."""
        pair = self.pair(name)
        # Cast to the pair's float32; under autocast the two products still run in the autocast dtype (mixed
        # precision as usual), while the weights, their gradients and the optimizer state stay float32.
        hidden = F.linear(x.to(pair.lora_down.weight.dtype), pair.lora_down.weight)
        return F.linear(hidden, pair.lora_up.weight) * (self.scale * self.multiplier)

    def delta_weight(self, name: str) -> torch.Tensor:
        """``scale·multiplier·up @ down`` (out × in, float32): what a host adds to the layer's weight."""
        pair = self.pair(name)
        return (pair.lora_up.weight.float() @ pair.lora_down.weight.float()) * (self.scale * self.multiplier)

    # -- attaching ---------------------------------------------------------------------------------------------

    @property
    def attached_unet(self) -> nn.Module | None:
        return self._unet() if self._unet is not None else None

    def attach(self, unet: nn.Module) -> LoraSet:
        """Hook every target layer of ``unet`` (the UNet this set was made for, or one of the same structure, such
        as a copy in another dtype). Idempotent for the same UNet; attaching elsewhere detaches first."""
        if self._handles and self.attached_unet is unet:
            return self
        self.detach()
        modules = dict(unet.named_modules())
        handles: list[RemovableHandle] = []
        try:
            for name, path in self.paths.items():
                module = modules.get(path)
                want = self.pair(name).shape
                if not isinstance(module, nn.Linear) or (module.in_features, module.out_features) != want:
                    raise ValueError(
                        f"the UNet has no Linear layer {path} of {want[0]} -> {want[1]} features; "
                        "this LoRA was made for a UNet of another structure"
                    )
                handles.append(module.register_forward_hook(_LoraHook(self, name)))
        except Exception:
            for handle in handles:
                handle.remove()
            raise
        self._handles = handles
        self._unet = weakref.ref(unet)
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._unet = None

    def __enter__(self) -> LoraSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- the file ----------------------------------------------------------------------------------------------

    def tensors(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        """The file's tensors: each pair's weights in ``dtype`` and its alpha, on the CPU."""
        if dtype not in SAVE_DTYPES:
            raise ValueError(f"a LoRA file holds float16, bfloat16 or float32 weights, not {dtype}")
        tensors: dict[str, torch.Tensor] = {}
        for name, pair in self.pairs().items():
            tensors[f"{name}.{DOWN}"] = pair.lora_down.weight.detach().to("cpu", dtype).contiguous()
            tensors[f"{name}.{UP}"] = pair.lora_up.weight.detach().to("cpu", dtype).contiguous()
            # float32 whatever the weights' dtype: an alpha such as 0.3 is not exact in fp16, and both hosts read it
            # with .item() (A1111 network.py NetworkModule, Forge comfyui_lora_collection/lora.py load_lora).
            tensors[f"{name}.{ALPHA}"] = torch.tensor(self.alpha, dtype=torch.float32)
        return tensors

    def metadata(self) -> dict[str, str]:
        """kohya's header keys the hosts read for a plain LoRA."""
        meta = {
            "ss_network_module": NETWORK_MODULE,
            "ss_network_dim": str(self.rank),
            "ss_network_alpha": str(self.alpha),
            "ss_v2": str(self.context_dim == 1024),  # A1111 takes "True" here for an SD 2.x LoRA
        }
        version = _BASE_MODEL_VERSIONS.get(self.context_dim or 0)
        if version is not None:
            meta["ss_base_model_version"] = version
        return meta

    def save(
        self, path: str | Path, metadata: Mapping[str, str] | None = None, dtype: torch.dtype = torch.float16
    ) -> Path:
        """Write the kohya-format file to ``path`` atomically (``<path>.tmp``, then a rename), so a run killed while
        saving leaves the previous file whole. ``metadata`` adds header entries (e.g. ``ss_output_name``,
        ``ss_sd_model_name``); the network keys of ``metadata()`` always describe the tensors and win."""
        extra = dict(metadata or {})
        wrong = [k for k, v in extra.items() if not isinstance(k, str) or not isinstance(v, str)]
        if wrong:
            raise ValueError(f"LoRA metadata must map strings to strings; {wrong[0]!r} does not")
        return save_safetensors(self.tensors(dtype), path, {**extra, **self.metadata()})

    @classmethod
    def load(cls, path: str | Path, unet: nn.Module) -> LoraSet:
        """Read a kohya-format LoRA file made for ``unet`` (or a UNet of the same structure) into a new LoraSet with
        float32 weights on the UNet's device, not attached. The file must cover exactly this set's targets."""
        path = Path(path)
        tensors, _ = read_lora_file(path)
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            base, _, part = key.partition(".")
            groups.setdefault(base, {})[part] = value
        foreign = sorted(base for base in groups if not base.startswith(PREFIX))
        if len(foreign) == len(groups):
            raise LoraError(path, f"is not a kohya-format UNet LoRA (no {PREFIX}* weights; e.g. {foreign[0]!r})")
        if foreign:
            raise LoraError(path, f"holds weights this trainer does not load ({len(foreign)}, e.g. {foreign[0]!r})")
        odd = sorted({part for parts in groups.values() for part in parts} - {DOWN, UP, ALPHA})
        if odd:
            raise LoraError(path, f"is not a plain LoRA (it holds {odd[0]!r} weights: LoCon/LoHa/DoRA or similar)")
        incomplete = sorted(base for base, parts in groups.items() if DOWN not in parts or UP not in parts)
        if incomplete:
            raise LoraError(path, f"lacks {DOWN} or {UP} for {incomplete[0]} ({len(incomplete)} layer(s) in all)")

        ranks = {parts[DOWN].shape[0] for parts in groups.values()}
        if len(ranks) != 1:
            raise LoraError(path, f"mixes ranks {sorted(ranks)}; this trainer loads one rank for all layers")
        rank = ranks.pop()
        # A missing alpha means scale 1 in both hosts (A1111 NetworkModule.calc_scale, Forge merge_lora_to_weight).
        alphas = {float(parts[ALPHA].float().item()) if ALPHA in parts else float(rank) for parts in groups.values()}
        if len(alphas) != 1:
            raise LoraError(path, f"mixes alphas {sorted(alphas)}; this trainer loads one alpha for all layers")

        lora = cls(unet, rank=rank, alpha=alphas.pop(), seed=0)  # seeded: the draw is overwritten anyway
        missing = [name for name in lora.paths if name not in groups]
        unknown = sorted(set(groups) - set(lora.paths))
        if unknown:
            raise LoraError(
                path, f"has weights for {unknown[0]}, which this UNet has no LoRA layer for; made for another model?"
            )
        if missing:
            raise LoraError(path, f"lacks {missing[0]} ({len(missing)} layer(s) in all); made for another model?")
        with torch.no_grad():
            for name, pair in lora.pairs().items():
                for module, key in ((pair.lora_down, DOWN), (pair.lora_up, UP)):
                    value = groups[name][key]
                    if value.dim() == 4 and value.shape[2:] == (1, 1):  # the conv-shaped form some tools write
                        value = value.flatten(1)
                    if value.shape != module.weight.shape:
                        raise LoraError(
                            path,
                            f"{name}.{key} has shape {tuple(value.shape)}; this UNet's layer needs "
                            f"{tuple(module.weight.shape)}. Made for another model?",
                        )
                    module.weight.copy_(value.float())
        return lora


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of a safetensors LoRA file; LoraError when it is missing, pickle or broken."""
    path = Path(path)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise LoraError(path, "is a pickle file; only .safetensors LoRA files are read (loading pickle can run code)")
    if not path.is_file():
        raise LoraError(path, "file not found")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoraError(path, f"is not a readable .safetensors file ({exc})") from None
    return tensors, metadata
