"""What the VMix nodes do, apart from ComfyUI's node protocol: load an adapter, check it against a model, and
patch a clone of that model with ``vmix_ext.patcher``."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vmix_ext import patcher
from vmix_ext.adapter import VMixAdapter
from vmix_ext.hooks import ValueMixer
from vmix_ext.layers import cross_attention_layers
from vmix_ext.mixing import MixOptions
from vmix_ext.settings import SCALE_MAX, SCALE_MIN, VMixSettings, parse_dimensions
from vmix_ext.weights import check_adapter_fits, load_adapter

from . import attention

ALL_DIMENSIONS = "all"
NO_DIMENSION = "none"
FULL_WINDOW = (0.0, 1.0)


class LoadedAdapter:
    """What *Load VMix Adapter* outputs: the checked adapter file, not yet matched to any model.

    V_a depends only on the adapter and the dimension strengths (λ is applied by each mixer), so several *Apply VMix*
    nodes on one adapter (a λ comparison) share one computation.
    """

    KEEP_VALUES = 4

    def __init__(self, name: str, path: str, adapter: VMixAdapter) -> None:
        self.name = name
        self.path = path
        self.adapter = adapter
        self._values: OrderedDict[tuple[tuple[str, float], ...], dict[str, torch.Tensor]] = OrderedDict()

    @property
    def dimension_names(self) -> tuple[str, ...]:
        return self.adapter.dimension_names

    def values(self, strengths: dict[str, float]) -> dict[str, torch.Tensor]:
        """V_a of every layer, fp32 on the CPU (each mixer casts it once to the sampling device and dtype)."""
        key = tuple(sorted(strengths.items()))
        values = self._values.get(key)
        if values is None:
            with torch.no_grad():
                values = self.adapter.aesthetic_values(strengths, dtype=torch.float32)
            self._values[key] = values
            while len(self._values) > self.KEEP_VALUES:
                self._values.popitem(last=False)
        self._values.move_to_end(key)
        return values

    def __repr__(self) -> str:
        return f"VMix adapter {self.name} ({', '.join(self.dimension_names)})"


def load(name: str, path: str | os.PathLike[str]) -> LoadedAdapter:
    """Read and check the whole file (format, shapes, finite values); the model is checked in *Apply VMix*."""
    return LoadedAdapter(name, str(path), load_adapter(path))


def dimension_strengths(text: str, names: Sequence[str]) -> dict[str, float]:
    """The dimensions widget: ``all`` (or empty) turns every dimension on, ``none`` every one off, otherwise the
    listed names are on, each at 1 or at ``name:strength``, and the others off. Names are checked against the
    adapter; a wrong one is an error that lists the adapter's own."""
    stripped = text.strip()
    if stripped.lower() in ("", ALL_DIMENSIONS):
        chosen: tuple[str, ...] | None = None
    elif stripped.lower() == NO_DIMENSION:
        chosen = ()
    else:
        chosen = parse_dimensions(stripped)
    return VMixSettings(dimensions=chosen).strengths(names)


def check_strength(strength: float) -> float:
    strength = float(strength)
    if not SCALE_MIN <= strength <= SCALE_MAX:
        raise ValueError(f"Apply VMix: strength must be from {SCALE_MIN:g} to {SCALE_MAX:g}, got {strength:g}")
    return strength


def sigma_window(model: Any, start_percent: float, end_percent: float) -> patcher.SigmaWindow | None:
    """ComfyUI's ControlNet meaning of the two percentages: active while the sampler's sigma lies between
    ``percent_to_sigma(end_percent)`` and ``percent_to_sigma(start_percent)`` of the model's own schedule. The full
    range needs no check at all (no per-layer sigma read)."""
    if not 0.0 <= start_percent < end_percent <= 1.0:
        raise ValueError(
            f"Apply VMix: start_percent ({start_percent:g}) must be smaller than end_percent ({end_percent:g}), "
            "both from 0 to 1"
        )
    if (start_percent, end_percent) == FULL_WINDOW:
        return None
    sampling = model.get_model_object("model_sampling")
    return patcher.SigmaWindow(sampling.percent_to_sigma(start_percent), sampling.percent_to_sigma(end_percent))


def diffusion_model(model: Any) -> nn.Module:
    """The model's UNet, refused when it has no cross-attention (Flux, SD3 and other transformer models)."""
    unet = model.get_model_object("diffusion_model")
    if not cross_attention_layers(unet):
        kind = type(getattr(model, "model", None)).__name__
        raise ValueError(
            f"Apply VMix: this model ({kind}) has no cross-attention layers for VMix to mix into; VMix works with "
            "SD 1.x, SD 2.x and SDXL models, not with Flux, SD3 or other transformer models"
        )
    return unet


def apply(
    model: Any,
    loaded: LoadedAdapter,
    strength: float,
    dimensions: str = ALL_DIMENSIONS,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    cond_only: bool = False,
    blocks: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Any:
    """A clone of ``model`` (a ComfyUI ModelPatcher) with VMix on every cross-attention layer; ``model`` itself is
    left as it was. Everything is checked before the clone is made, so a refused adapter leaves nothing behind."""
    strength = check_strength(strength)
    window = sigma_window(model, start_percent, end_percent)
    check_adapter_fits(loaded.adapter, diffusion_model(model), loaded.path)
    strengths = dimension_strengths(dimensions, loaded.dimension_names)
    options = MixOptions(strength, bool(cond_only), blocks=tuple(float(b) for b in blocks))  # type: ignore[arg-type]
    options.validate()  # before the clone: a refused value leaves nothing behind
    mixer = ValueMixer(loaded.values(strengths), options)
    patched = model.clone()
    patcher.install(
        patched.model_options, mixer, attention.optimized_attention, loaded.adapter.layer_paths, window=window
    )
    return patched
