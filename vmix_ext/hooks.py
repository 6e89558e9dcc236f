"""Applying VMix to an ldm UNet through forward hooks on every ``attn2.to_v``.

Every attention implementation A1111 offers computes ``v = self.to_v(context)`` for the whole batch and then one
attention map for it, so adding λ·V_a to the output of ``to_v`` gives softmax(QKᵀ/√d)(V_c + λ·V_a), which is the
paper's two-term Eq. 9, without replacing anybody's forward and without touching weights.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .layers import cross_attention_layers
from .mixing import MixOptions, tile_tokens

logger = logging.getLogger("vmix")

# Every hook callable carries this attribute, so a hook left by an earlier import of this package (a reloaded
# script, a crashed generation) is still recognised and removed.
HOOK_MARKER = "_vmix_hook"


class _ValueHook:
    """Forward hook on one ``to_v``: returns its output plus λ·tile(V_a) for the rows VMix applies to."""

    def __init__(self, mixer: ValueMixer, path: str) -> None:
        self.mixer = weakref.ref(mixer)
        self.path = path
        setattr(self, HOOK_MARKER, True)

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        mixer = self.mixer()
        if mixer is None:
            return None
        return mixer.mix(self.path, output)


class _RowClassifier:
    """Forward pre-hook on the UNet: finds which rows of this call are unconditional, for the cond-only option."""

    def __init__(self, mixer: ValueMixer) -> None:
        self.mixer = weakref.ref(mixer)
        setattr(self, HOOK_MARKER, True)

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mixer = self.mixer()
        if mixer is None:
            return
        # ldm/sgm UNets take ``context``, diffusers ``encoder_hidden_states``; both third when positional.
        context = kwargs.get("context", kwargs.get("encoder_hidden_states"))
        if context is None and len(args) > 2:
            context = args[2]
        mixer.classify_rows(context if isinstance(context, torch.Tensor) else None)


@dataclass
class _Attachment:
    unet: weakref.ReferenceType[nn.Module]
    handles: list[RemovableHandle]


_ACTIVE_MIXERS: weakref.WeakSet[ValueMixer] = weakref.WeakSet()


class ValueMixer:
    """Adds λ·V_a to the value projection of every cross-attention layer of one UNet.

    ``values`` maps each layer path to V_a with shape (C, inner) (one aesthetic input for the whole batch) or
    (B, C, inner) (one per row, as in training). Values that do not require grad are cached per token length,
    device and dtype with λ folded in, so each step costs one add per layer.
    """

    def __init__(self, values: Mapping[str, torch.Tensor], options: MixOptions | None = None) -> None:
        self.options = options or MixOptions()
        self.options.validate()
        self._values = dict(values)
        self._cache: dict[tuple[str, int, torch.device, torch.dtype], torch.Tensor] = {}
        self._attachment: _Attachment | None = None
        self._progress: float | None = None
        self._uncond: torch.Tensor | None = None
        self._cond_rows: torch.Tensor | None = None
        self._closed = False

    # -- state the host feeds in -------------------------------------------------------------------------------

    def set_values(self, values: Mapping[str, torch.Tensor]) -> None:
        """Replace V_a for the same layers (the trainer does this every batch, with per-row values)."""
        if set(values) != set(self._values):
            raise ValueError("set_values must keep the same layers; create a new mixer for other layers")
        self._values = dict(values)
        self._cache.clear()

    def set_progress(self, step: int | None, total: int | None) -> None:
        """Where sampling is, for the step window; None (the default) means always inside the window."""
        self._progress = None if step is None or not total else step / total

    def set_uncond_context(self, uncond: torch.Tensor | None) -> None:
        """The negative-prompt context rows, for the cond-only option: rows of a call equal to one are unconditional."""
        self._uncond = None if uncond is None else uncond.detach()

    # -- attaching ---------------------------------------------------------------------------------------------

    @property
    def attached_unet(self) -> nn.Module | None:
        return self._attachment.unet() if self._attachment else None

    def attach(self, unet: nn.Module) -> None:
        """Hook every ``attn2.to_v`` of ``unet``. Idempotent; a UNet never carries two VMix terms."""
        if self._attachment is not None and self._attachment.unet() is unet:
            return
        self.detach()
        remove_vmix_hooks(unet)
        layers = cross_attention_layers(unet)
        missing = sorted(set(self._values) - set(layers))
        if missing:
            raise ValueError(f"the UNet has no cross-attention layer {missing[0]!r} ({len(missing)} missing in all)")
        handles: list[RemovableHandle] = []
        try:
            for path in self._values:
                handles.append(layers[path].to_v.register_forward_hook(_ValueHook(self, path)))
            if self.options.cond_only:
                handles.append(unet.register_forward_pre_hook(_RowClassifier(self), with_kwargs=True))
        except Exception:
            for handle in handles:
                handle.remove()
            raise
        self._attachment = _Attachment(weakref.ref(unet), handles)
        _ACTIVE_MIXERS.add(self)

    def detach(self) -> None:
        if self._attachment is not None:
            for handle in self._attachment.handles:
                handle.remove()
            self._attachment = None
        self._cond_rows = None
        _ACTIVE_MIXERS.discard(self)

    def close(self) -> None:
        """Detach and switch off for good: a patch or hook that still points here (a Forge patcher kept past the
        generation) adds nothing any more."""
        self.detach()
        self._closed = True

    def __enter__(self) -> ValueMixer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- the hot path ------------------------------------------------------------------------------------------

    def classify_rows(self, context: torch.Tensor | None) -> None:
        if context is None or self._uncond is None or context.shape[-1] != self._uncond.shape[-1]:
            self._cond_rows = None
            return
        # Hosts may pad or cut the negative prompt to the prompt's length after telling us about it (A1111's
        # pad_cond_uncond options), so rows are compared on the tokens both have; an exact match there marks a row as
        # unconditional. A prompt identical to its negative prompt is therefore treated as unconditional.
        tokens = min(context.shape[-2], self._uncond.shape[-2])
        uncond = self._uncond[..., :tokens, :].to(context.device, context.dtype)
        head = context[..., :tokens, :]
        equal = (head.unsqueeze(1) == uncond.unsqueeze(0)).flatten(2).all(-1).any(-1)
        self._cond_rows = (~equal).nonzero().flatten()

    def in_window(self) -> bool:
        if self._progress is None:
            return True
        return self.options.start <= self._progress < self.options.end

    def mix(self, path: str, output: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor | None:
        """``output`` (B, T, inner) plus λ·V_a, on ``rows`` (or, for the cond-only option, the rows found by
        ``classify_rows``); None when nothing is to be added."""
        if self._closed or not self.in_window() or self.options.layer_scale(path) == 0:
            return None  # λ 0 (or this part's multiplier 0) adds nothing at all: the baseline, bit for bit
        extra = self._scaled_values(path, output)
        if extra is None:
            return None
        if rows is None and self.options.cond_only:
            rows = self._cond_rows
        if rows is not None:
            if rows.numel() == 0:
                return None  # a call with negative-prompt rows only
            rows = rows.to(output.device)
            if extra.dim() == 3:
                extra = extra.index_select(0, rows)
            extra = extra.expand(rows.numel(), *output.shape[1:])
            if output.requires_grad:
                return output.index_add(0, rows, extra)
            return output.index_add_(0, rows, extra)
        # In inference the projection's output is a fresh tensor nobody else holds yet: adding in place saves one
        # allocation and one pass over memory per layer and step. With autograd the graph needs the original.
        return output + extra if output.requires_grad else output.add_(extra)

    def _scaled_values(self, path: str, output: torch.Tensor) -> torch.Tensor | None:
        values = self._values.get(path)
        if values is None:
            return None
        tokens = output.shape[-2]
        if values.requires_grad:
            return self.options.layer_scale(path) * tile_tokens(values, tokens).to(output.device, output.dtype)
        key = (path, tokens, output.device, output.dtype)
        cached = self._cache.get(key)
        if cached is None:
            scale = self.options.layer_scale(path)
            cached = (scale * tile_tokens(values.float(), tokens)).to(output.device, output.dtype)
            self._cache[key] = cached
        return cached


def remove_vmix_hooks(module: nn.Module, stale_only: bool = False) -> int:
    """Remove every VMix hook below ``module``, including ones whose mixer is gone; with ``stale_only`` only those
    that no live, attached mixer owns (a generation that is sampling right now keeps its hooks). Returns how many
    were removed."""
    removed = 0
    for sub in module.modules():
        for hooks in (sub._forward_hooks, sub._forward_pre_hooks):
            marked = [k for k, fn in hooks.items() if getattr(fn, HOOK_MARKER, False)]
            for key in [k for k in marked if not (stale_only and _is_live(hooks[k]))]:
                del hooks[key]
                sub._forward_hooks_with_kwargs.pop(key, None)
                sub._forward_pre_hooks_with_kwargs.pop(key, None)
                removed += 1
    return removed


def _is_live(hook: Any) -> bool:
    owner = getattr(hook, "mixer", None)
    mixer = owner() if isinstance(owner, weakref.ref) else None
    return mixer is not None and not mixer._closed and mixer._attachment is not None


def detach_all() -> int:
    """Detach every mixer this process attached; the safety net at the start and end of every generation."""
    mixers = list(_ACTIVE_MIXERS)
    for mixer in mixers:
        mixer.detach()
    if mixers:
        logger.debug("detached %d VMix mixer(s)", len(mixers))
    return len(mixers)


def has_vmix_hooks(module: nn.Module) -> bool:
    return any(
        getattr(fn, HOOK_MARKER, False)
        for sub in module.modules()
        for fn in (*sub._forward_hooks.values(), *sub._forward_pre_hooks.values())
    )
