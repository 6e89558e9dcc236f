"""Which web UI is running, told by what it provides, and the backend VMix uses there.

- A1111: no ``modules_forge`` package. Forward hooks on ``to_v`` (``a1111_backend``).
- The Forge family has ``modules_forge``; ``modules_forge.forge_version.version`` is ``"neo"`` on Forge Neo and
  ``"classic"`` on Forge Classic. Forge and Neo provide ``backend.attention.attention_function(q, k, v, heads)``;
  reForge and Classic provide ``ldm_patched.ldm.modules.attention.optimized_attention``, whose reForge form takes
  the ``attn_precision`` its UNet passes in ``extra_options`` (Classic's takes only ``mask``). reForge's
  ``newmain_newforge`` branch is lllyasviel's Forge under another name and is served as Forge.

All of the Forge family take the same attn2 replace patches (``patcher_backend``). Detection runs once, when the
host imports ``scripts/vmix.py``; a Forge-like host that provides none of these attention functions gets a backend
that says so at every generation instead of failing inside the sampler. (Read from Forge dfdcbab, reForge main
3b56b268, Forge Classic 1f95d717 and Forge Neo's backend at 6c627e6f.)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from typing import Any

import torch

from vmix_ext.patcher import AttentionCall

from .a1111_backend import A1111Backend
from .generation import Backend
from .patcher_backend import PatcherBackend

SD_FAMILIES = "SD 1.x, SD 2.x and SDXL"


def detect() -> Backend:
    if not _exists("modules_forge"):
        return A1111Backend()
    version = str(_attribute("modules_forge.forge_version", "version") or "")
    forge_attention = _attribute("backend.attention", "attention_function")
    optimized = _attribute("ldm_patched.ldm.modules.attention", "optimized_attention")
    if version == "neo" and forge_attention is not None:
        return PatcherBackend("Forge Neo", _forge_call(forge_attention), "SD 1.x and SDXL")
    if forge_attention is not None:
        return PatcherBackend("Forge", _forge_call(forge_attention), SD_FAMILIES)
    if optimized is not None:
        if version == "classic" or "attn_precision" not in _parameters(optimized):
            return PatcherBackend("Forge Classic", _classic_call(optimized), SD_FAMILIES)
        return PatcherBackend("reForge", _reforge_call(optimized), SD_FAMILIES)
    return UnsupportedBackend(
        f"this Forge-style web UI (version {version or 'unknown'}) provides neither "
        "backend.attention.attention_function nor ldm_patched.ldm.modules.attention.optimized_attention, so VMix "
        "cannot patch its attention"
    )


def _forge_call(module_function: Callable[..., torch.Tensor]) -> AttentionCall:
    module = inspect.getmodule(module_function)

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]) -> torch.Tensor:
        # Looked up per call: Forge picks its attention implementation at start-up by rebinding this attribute.
        function = getattr(module, "attention_function", module_function)
        return function(q, k, v, extra_options["n_heads"])

    return attention


def _reforge_call(optimized: Callable[..., torch.Tensor]) -> AttentionCall:
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]) -> torch.Tensor:
        return optimized(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))

    return attention


def _classic_call(optimized: Callable[..., torch.Tensor]) -> AttentionCall:
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]) -> torch.Tensor:
        return optimized(q, k, v, extra_options["n_heads"])

    return attention


class UnsupportedBackend:
    def __init__(self, reason: str) -> None:
        self.name = "unsupported Forge"
        self.reason = reason

    def unet(self, p: Any) -> torch.nn.Module:
        return p.sd_model.forge_objects.unet.model.diffusion_model

    def check_model(self, p: Any) -> None:
        raise RuntimeError(self.reason)

    def begin_pass(self, p: Any, run: Any) -> None:
        raise RuntimeError(self.reason)

    def end_pass(self, p: Any, run: Any) -> None:
        pass


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _attribute(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name, None)
    except Exception:  # a host module that fails to import is as good as absent for detection
        return None


def _parameters(function: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()
