"""VMix through the attn2 *replace* patch that Forge, reForge, Forge Classic, Forge Neo and ComfyUI share.

Every one of these hosts keeps a ModelPatcher whose ``model_options["transformer_options"]["patches_replace"]
["attn2"]`` maps a layer key to a callable ``patch(q, k, v, extra_options)``: the UNet hands it the *projected* q, k
and v of that cross-attention layer and sends what it returns through ``to_out``. It is the one place that sees v,
so VMix adds λ·V_a there and then computes attention, with the host's own attention function or by handing the mixed
v to a patch that already sat on the layer (an IP-Adapter), so both take effect.

Keys: ``(block, number, block_index)`` — ``input_blocks.7.1.transformer_blocks.3.attn2`` is ``("input", 7, 3)``;
hosts look that up first and the 2-part ``(block, number)`` second. IP-Adapters use 2-part keys on SD 1.x/2.x and
3-part keys on SDXL, and when they find a patch under their key they do not replace it but add themselves to it:
ComfyUI_IPAdapter_plus calls ``patch.add(callback, **kwargs)``, Forge's built-in IP-Adapter
``patch.set_new_condition(**kwargs)``. So a VMix patch is registered under both keys of a layer that is alone in
its block (as an alias of the same patch), and it speaks both protocols, whichever registers first.

The host-specific part is only the attention call (``AttentionCall``), which the host glue supplies.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .hooks import ValueMixer

# The host's attention on projected q, k, v: ``attention(q, k, v, extra_options) -> out`` (before ``to_out``).
AttentionCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor]
ReplacePatch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor]
Key = tuple[str, int] | tuple[str, int, int]

_PATH = re.compile(r"^(input_blocks|middle_block|output_blocks)(?:\.(\d+))?\.1\.transformer_blocks\.(\d+)\.attn2$")
_BLOCK_NAMES = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
COND, UNCOND = 0, 1  # the values of extra_options["cond_or_uncond"], one per chunk of rows
PATCH_MARKER = "_vmix_patch"
# Where Forge-family hosts keep the built-in IP-Adapter's patch class, for set_new_condition on a VMix patch.
IP_ADAPTER_MODULES = ("lib_ipadapter.IPAdapterPlus",)
IP_ADAPTER_PATCH_CLASS = "CrossAttentionPatch"


def patch_key(path: str) -> tuple[str, int, int]:
    """``input_blocks.7.1.transformer_blocks.3.attn2`` -> ("input", 7, 3); the middle block is number 0."""
    match = _PATH.match(path)
    if match is None:
        raise ValueError(f"'{path}' is not an ldm cross-attention layer path")
    group, number, index = match.groups()
    return _BLOCK_NAMES[group], int(number or 0), int(index)


def cond_rows(extra_options: Mapping[str, Any], rows: int) -> torch.Tensor | None:
    """Indices of the conditional rows of this call, from ``cond_or_uncond`` (one entry per chunk of rows)."""
    roles = extra_options.get("cond_or_uncond")
    if not roles or rows % len(roles):
        return None  # unknown layout: treat every row alike
    chunk = rows // len(roles)
    picked = [i for n, role in enumerate(roles) if role == COND for i in range(n * chunk, (n + 1) * chunk)]
    return torch.tensor(picked, dtype=torch.long)


class SigmaWindow:
    """Active while ``sigma_end <= sigma <= sigma_start`` (ComfyUI's ControlNet meaning of start/end percent, after
    ``model_sampling.percent_to_sigma``). The sigma is ``extra_options["sigmas"][0]``; a call without one is inside."""

    def __init__(self, sigma_start: float, sigma_end: float) -> None:
        self.sigma_start = float(sigma_start)
        self.sigma_end = float(sigma_end)

    def __call__(self, extra_options: Mapping[str, Any]) -> bool:
        sigmas = extra_options.get("sigmas")
        if not isinstance(sigmas, torch.Tensor) or sigmas.numel() == 0:
            return True
        sigma = float(sigmas.reshape(-1)[0])
        return self.sigma_end <= sigma <= self.sigma_start


class VMixAttentionPatch:
    """The attn2 replace patch of one layer: v + λ·V_a, then attention (or the wrapped patch), then any callbacks
    added by ComfyUI_IPAdapter_plus. A deep copy (hosts deep-copy ``model_options`` on every clone) shares the mixer
    and copies what wraps or was added, as the host would have copied those patches on their own."""

    def __init__(
        self,
        mixer: ValueMixer,
        path: str,
        attention: AttentionCall,
        previous: ReplacePatch | None = None,
        callbacks: Iterable[tuple[Callable[..., torch.Tensor], dict[str, Any]]] = (),
        window: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> None:
        self.mixer = mixer
        self.path = path
        self.attention = attention
        self.previous = previous
        self.callbacks = list(callbacks)
        self.window = window
        setattr(self, PATCH_MARKER, True)

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]
    ) -> torch.Tensor:
        if self.window is None or self.window(extra_options):
            rows = cond_rows(extra_options, v.shape[0]) if self.mixer.options.cond_only else None
            mixed = self.mixer.mix(self.path, v, rows=rows)
            if mixed is not None:
                v = mixed
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = self.attention(q, k, v, extra_options)
        if self.callbacks:
            out = self._run_callbacks(out, q, k, v, extra_options)
        return out

    def _run_callbacks(
        self, out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]
    ) -> torch.Tensor:
        """What ComfyUI_IPAdapter_plus's own replace patch does with its callbacks: each one inside its sigma range
        adds ``callback(out, q, k, v, extra_options, **kwargs)`` to the output."""
        dtype = q.dtype
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas.detach().reshape(-1)[0]) if isinstance(sigmas, torch.Tensor) else 999999999.9
        for callback, kwargs in self.callbacks:
            if kwargs.get("sigma_end", -float("inf")) <= sigma <= kwargs.get("sigma_start", float("inf")):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(dtype)

    # -- the protocols other attn2 patches use on whatever already sits under their key ----------------------------

    def add(self, callback: Callable[..., torch.Tensor], **kwargs: Any) -> None:
        """ComfyUI_IPAdapter_plus: a later IP-Adapter on a layer that VMix (or an IP-Adapter VMix wraps) holds."""
        previous_add = getattr(self.previous, "add", None)
        if callable(previous_add):
            previous_add(callback, **kwargs)
        else:
            self.callbacks.append((callback, kwargs))

    def set_new_condition(self, **kwargs: Any) -> None:
        """Forge's built-in IP-Adapter: a later IP-Adapter condition on a layer VMix holds. Handed to the patch VMix
        wraps, or, on a layer that had none, to a new patch of the host's own IP-Adapter class that VMix then wraps."""
        previous_set = getattr(self.previous, "set_new_condition", None)
        if callable(previous_set):
            previous_set(**kwargs)
            return
        if self.previous is not None:
            raise TypeError(
                f"the attn2 patch VMix wraps on {self.path} ({type(self.previous).__name__}) takes no IP-Adapter "
                "conditions"
            )
        self.previous = host_ip_adapter_patch_class()(**kwargs)

    # -- what ComfyUI asks of the patches in model_options (model_patches_to, model_patches_models) -------------------

    def to(self, device_or_dtype: Any) -> VMixAttentionPatch:
        """Hand the move on to the patch VMix wraps (an IP-Adapter keeps per-device copies); V_a follows the layer's
        own device and dtype at the first call anyway."""
        move = getattr(self.previous, "to", None)
        if callable(move):
            moved = move(device_or_dtype)
            if moved is not None:
                self.previous = moved
        return self

    def models(self) -> list[Any]:
        """The models the wrapped patch needs loaded (ComfyUI's model management asks every patch)."""
        models = getattr(self.previous, "models", None)
        return list(models()) if callable(models) else []

    def __deepcopy__(self, memo: dict[int, Any]) -> VMixAttentionPatch:
        twin = copy.copy(self)
        memo[id(self)] = twin
        twin.previous = copy.deepcopy(self.previous, memo)
        twin.callbacks = copy.deepcopy(self.callbacks, memo)
        return twin


class TwoPartKeyAlias:
    """What VMix puts under the 2-part key of a layer alone in its block: the layer's patch, by reference.

    An IP-Adapter that registers later with 2-part keys finds it and adds itself to it; some (a Forge Neo fork)
    shallow-copy the patch they find first and store the copy. A copy of this alias still points at the patch the
    UNet calls under the 3-part key, so the IP-Adapter is not lost."""

    def __init__(self, patch: VMixAttentionPatch) -> None:
        self.patch = patch
        setattr(self, PATCH_MARKER, True)

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]
    ) -> torch.Tensor:
        return self.patch(q, k, v, extra_options)

    def add(self, callback: Callable[..., torch.Tensor], **kwargs: Any) -> None:
        self.patch.add(callback, **kwargs)

    def set_new_condition(self, **kwargs: Any) -> None:
        self.patch.set_new_condition(**kwargs)

    def to(self, device_or_dtype: Any) -> TwoPartKeyAlias:
        self.patch.to(device_or_dtype)
        return self

    def models(self) -> list[Any]:
        return []  # the patch under the 3-part key reports them once

    @property
    def mixer(self) -> ValueMixer:
        return self.patch.mixer

    @property
    def path(self) -> str:
        return self.patch.path

    @property
    def previous(self) -> ReplacePatch | None:
        return self.patch.previous

    @property
    def callbacks(self) -> list[tuple[Callable[..., torch.Tensor], dict[str, Any]]]:
        return self.patch.callbacks


def is_vmix_patch(patch: object) -> bool:
    """By marker, not class: a patch left by an earlier import of this module (a reloaded script) counts too."""
    return getattr(patch, PATCH_MARKER, False) is True


def host_ip_adapter_patch_class() -> Callable[..., ReplacePatch]:
    """The built-in IP-Adapter's patch class of the running Forge-family host (already imported by then)."""
    for name in IP_ADAPTER_MODULES:
        cls = getattr(sys.modules.get(name), IP_ADAPTER_PATCH_CLASS, None)
        if cls is not None:
            return cls
    raise RuntimeError(
        "an IP-Adapter asked to add a condition to VMix's attention patch, but this host's IP-Adapter patch class "
        f"({' or '.join(m + '.' + IP_ADAPTER_PATCH_CLASS for m in IP_ADAPTER_MODULES)}) is not loaded"
    )


def install(
    model_options: dict[str, Any],
    mixer: ValueMixer,
    attention: AttentionCall,
    layer_paths: Iterable[str],
    window: Callable[[Mapping[str, Any]], bool] | None = None,
) -> None:
    """Register VMix on every layer in a (cloned) patcher's ``model_options``, in place.

    A patch already on a layer is wrapped, whether it sits under the 3-part or the 2-part key. A VMix patch already
    there (a second pass without a reset, a second Apply VMix node) is replaced, keeping what it wrapped and what
    IP-Adapters added to it, so the term is never added twice. A layer alone in its block gets the same patch object
    under its 2-part key too (a ``TwoPartKeyAlias``), so an IP-Adapter that registers later with 2-part keys finds it
    and adds itself.
    """
    transformer_options = model_options.setdefault("transformer_options", {})
    # Copy the two dicts we write into: hosts' clones may share them with the patcher they were cloned from.
    replace = dict(transformer_options.get("patches_replace", {}))
    attn2 = dict(replace.get("attn2", {}))
    paths = list(layer_paths)
    keys = {path: patch_key(path) for path in paths}
    blocks_per_layer: dict[tuple[str, int], int] = {}
    for name, number, _ in keys.values():
        blocks_per_layer[(name, number)] = blocks_per_layer.get((name, number), 0) + 1
    for path in paths:
        name, number, index = keys[path]
        alone = blocks_per_layer[(name, number)] == 1
        existing = attn2.get((name, number, index))
        if existing is None:  # the host falls back to the 2-part key for every block of the layer
            existing = attn2.get((name, number))
        previous, callbacks = existing, []
        if existing is not None and is_vmix_patch(existing):
            previous, callbacks = existing.previous, list(existing.callbacks)  # type: ignore[attr-defined]
        patch = VMixAttentionPatch(mixer, path, attention, previous, callbacks, window)
        attn2[(name, number, index)] = patch
        if alone:
            attn2[(name, number)] = TwoPartKeyAlias(patch)
    replace["attn2"] = attn2
    transformer_options["patches_replace"] = replace
