"""``apply_vmix``: the core's forward hooks (``vmix_ext.hooks.ValueMixer``) on a diffusers pipeline's UNet.

The mixing itself is the same code the web UI extension runs: a forward hook on every ``attn2.to_v`` adds λ·V_a to
the value projection, and the adapter's ldm layer keys are matched to diffusers' module names by
``vmix_ext.layers``. What this module adds is what a diffusers pipeline does not tell a hook:

- **Which step.** One forward pre-hook on the UNet counts the UNet calls of the pipeline's denoising loop against
  the loop's length (``pipe.num_timesteps``, which the Stable Diffusion pipelines set before the loop, after
  img2img's ``strength`` or SDXL's ``denoising_start/end`` cut the schedule). Step ``i`` of ``n`` is the progress
  ``i / n`` that the step window compares with, as A1111's sampler step over its total. A new loop is recognised
  when the timestep goes up again or when the last loop's ``n`` calls are done, so an interrupted call does not
  shift the next one.
- **Which rows.** With classifier-free guidance the SD and SDXL pipelines (and their img2img and inpaint variants)
  call the UNet once per step on ``[uncond rows, cond rows]``. The pre-hook hands the first half to the mixer as the
  negative-prompt context, and the mixer's own row classifier marks rows equal to it as unconditional, as in the
  web UI (so a prompt identical to its negative prompt also counts as unconditional). Without guidance every row
  is conditional.

Removing the helper removes every hook; no weight is ever touched, so the UNet is bit-identical afterwards.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from vmix_ext.adapter import VMixAdapter
from vmix_ext.hooks import HOOK_MARKER, ValueMixer
from vmix_ext.layers import cross_attention_layers
from vmix_ext.mixing import MixOptions
from vmix_ext.settings import VMixSettings
from vmix_ext.weights import check_adapter_fits, load_adapter

_IN_MEMORY = "<adapter given as a VMixAdapter>"


class VMix:
    """An adapter applied to one UNet; ``remove()`` (or leaving the ``with`` block) takes it off again.

    Build it with ``apply_vmix``. Applying a second adapter to the same UNet replaces the first: a UNet never
    carries two VMix terms.
    """

    def __init__(self, target: Any, adapter: str | os.PathLike[str] | VMixAdapter, settings: VMixSettings) -> None:
        self.pipeline, self.unet = _pipeline_and_unet(target)
        self.settings = settings
        self.window = (settings.start, settings.end) != (0.0, 1.0)
        if self.pipeline is None and (settings.cond_only or self.window):
            raise ValueError(
                "VMix's step window and conditional-rows-only option need the pipeline (they read its schedule and "
                "its guidance); pass the pipeline to apply_vmix, not its UNet"
            )
        if isinstance(adapter, VMixAdapter):
            self.path: str = _IN_MEMORY
            self.adapter = adapter
        else:
            self.path = str(adapter)
            self.adapter = load_adapter(adapter)
        check_adapter_fits(self.adapter, self.unet, self.path)
        # diffusers' fused processors (FusedAttnProcessor2_0, …) project keys and values with one to_kv call.
        if any(
            "Fused" in type(getattr(layer, "processor", None)).__name__
            for layer in cross_attention_layers(self.unet).values()
        ):
            raise ValueError(
                "the UNet's attention projections are fused (fuse_qkv_projections), so to_v is never called and VMix "
                "would do nothing; call unfuse_qkv_projections() on the pipeline first"
            )
        self.strengths = settings.strengths(self.adapter.dimension_names)
        with torch.no_grad():
            values = self.adapter.aesthetic_values(self.strengths, dtype=torch.float32)
        options = MixOptions(settings.scale, settings.cond_only, settings.start, settings.end, settings.blocks)
        self.mixer = ValueMixer({path: value.detach() for path, value in values.items()}, options)
        self._calls = 0  # UNet calls so far in the current denoising loop
        self._last_timestep: float | None = None
        self._handle: RemovableHandle | None = None
        self.mixer.attach(self.unet)  # first: attach clears every older VMix hook from this UNet
        if self.pipeline is not None and (settings.cond_only or self.window):
            # Prepended, so the step and the negative rows are known before the mixer's row classifier runs.
            self._handle = self.unet.register_forward_pre_hook(_BeforeUnet(self), with_kwargs=True, prepend=True)

    @property
    def active(self) -> bool:
        return self.mixer.attached_unet is self.unet

    def remove(self) -> None:
        """Take every hook off the UNet (idempotent); its outputs are bit-identical to never having had VMix."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.mixer.close()

    def __enter__(self) -> VMix:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        on = ", ".join(f"{name}:{w:g}" if w != 1 else name for name, w in self.strengths.items() if w > 0)
        state = "applied" if self.active else "removed"
        return f"VMix({Path(self.path).name}, λ={self.settings.scale:g}, dimensions=[{on or 'none'}], {state})"

    # -- called before every UNet forward ----------------------------------------------------------------------

    def before_unet(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.window:
            self._track_step(_argument(args, kwargs, 1, "timestep"))
        if self.settings.cond_only:
            self._find_negative_rows(_argument(args, kwargs, 2, "encoder_hidden_states"))

    def _track_step(self, timestep: Any) -> None:
        total = getattr(self.pipeline, "_num_timesteps", None)
        if not isinstance(total, int) or total < 1:
            raise RuntimeError(
                f"VMix's step window needs the number of denoising steps, which {type(self.pipeline).__name__} "
                "does not set (num_timesteps); use start=0, end=1 with this pipeline"
            )
        value = float(torch.as_tensor(timestep).flatten()[0])
        if self._last_timestep is None or self._calls >= total or value > self._last_timestep:
            self._calls = 0  # a new denoising loop
        self.mixer.set_progress(self._calls, total)
        self._calls += 1
        self._last_timestep = value

    def _find_negative_rows(self, context: Any) -> None:
        try:
            guided = bool(self.pipeline.do_classifier_free_guidance)
        except AttributeError:
            raise RuntimeError(
                f"VMix's conditional-rows-only option needs to know whether {type(self.pipeline).__name__} uses "
                "classifier-free guidance (do_classifier_free_guidance); use cond_only=False with this pipeline"
            ) from None
        if not guided or not isinstance(context, torch.Tensor):
            self.mixer.set_uncond_context(None)  # no guidance: every row is conditional
            return
        if context.shape[0] % 2:
            raise RuntimeError(
                f"VMix expected diffusers' guidance batch [negative rows, prompt rows], got {context.shape[0]} rows"
            )
        self.mixer.set_uncond_context(context[: context.shape[0] // 2])


def apply_vmix(
    pipe: Any,
    adapter: str | os.PathLike[str] | VMixAdapter,
    *,
    scale: float = 1.0,
    dimensions: str | Sequence[str] | None = None,
    cond_only: bool = False,
    start: float = 0.0,
    end: float = 1.0,
    input_scale: float = 1.0,
    middle_scale: float = 1.0,
    output_scale: float = 1.0,
) -> VMix:
    """Apply a VMix adapter to ``pipe`` (a StableDiffusion(XL) pipeline, txt2img, img2img or inpaint; or a bare
    ``UNet2DConditionModel`` for λ and dimensions only) until ``remove()`` or the end of a ``with`` block.

    ``adapter``: an adapter file (``.safetensors``, docs/weights-format.md) or a loaded ``VMixAdapter``.
    ``scale``: λ, 0 to 2 as in the web UI (0 leaves the pipeline unchanged). ``dimensions``: the dimensions that are
    on, as names or ``"name:0.5"`` strengths, a list or one comma-separated string (the web UI's syntax); None means
    all on, ``[]`` none. ``cond_only``: add λ·V_a to the prompt rows only, not to the negative-prompt rows of
    classifier-free guidance (the paper's formula, the default, adds it to both). ``start``/``end``: the part of the
    denoising steps that gets VMix, as fractions (start inclusive, end exclusive). ``input_scale`` /
    ``middle_scale`` / ``output_scale``: multipliers of λ in those parts of the UNet (the web UI's per-block λ).
    The adapter must be made for the pipeline's model family; otherwise ``AdapterFileError`` says which it was made for.
    """
    name = "adapter" if isinstance(adapter, VMixAdapter) else Path(adapter).name
    settings = VMixSettings(
        enabled=True,
        adapter=name,
        scale=scale,
        dimensions=dimensions,
        cond_only=cond_only,
        start=start,
        end=end,
        input_scale=input_scale,
        middle_scale=middle_scale,
        output_scale=output_scale,
    )
    return VMix(pipe, adapter, settings)


class _BeforeUnet:
    """The UNet forward pre-hook; holds the helper weakly and carries the core's marker, so the core's cleanup
    (``remove_vmix_hooks``) recognises it too."""

    def __init__(self, vmix: VMix) -> None:
        self.vmix = weakref.ref(vmix)
        setattr(self, HOOK_MARKER, True)

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        vmix = self.vmix()
        if vmix is not None and vmix.active:
            vmix.before_unet(args, kwargs)


def _pipeline_and_unet(target: Any) -> tuple[Any | None, nn.Module]:
    unet = getattr(target, "unet", None)
    if isinstance(unet, nn.Module):
        return target, unet
    if isinstance(target, nn.Module):
        return None, target
    raise TypeError(
        f"apply_vmix needs a diffusers pipeline with a UNet (StableDiffusionPipeline, StableDiffusionXLPipeline, "
        f"their img2img variants) or a UNet2DConditionModel, got {type(target).__name__}"
    )


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], position: int, name: str) -> Any:
    """UNet2DConditionModel.forward(sample, timestep, encoder_hidden_states, ...): by keyword or by position."""
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None
