"""The Forge-family hosts as the tests run them: where each one's stand-in lives, how to enter it, and what it builds
(tests only; no host file).

Each host's stand-in is a folder of top-level packages (``backend``, ``ldm_patched``, ``modules_forge``) that must be
on ``sys.path`` alone: VMix tells the hosts apart by importing them (``vmix_webui.hosts.detect``), and they share
package names. :func:`host_environment` puts one host's folders first, takes every other stand-in folder off
``sys.path`` and every stand-in module out of ``sys.modules`` for the duration, and puts back exactly what was there
after. The built-in IP-Adapter's stand-in (``tests/lib_ipadapter``) serves every host and is re-imported inside each
environment, so it binds to that host's attention.

Host data (commits in ``tests/forge_family.py`` and each stand-in's README): which attention function a layer without
a patch calls; which keys the sampler and UNet add (:class:`forge_family.CallSite`); the UNet patcher and the
``p.sd_model`` each host builds; the legacy flags of ``p.sd_model``; the order of callbacks around the hires pass
(``modules/processing.py``: Forge L1510-1529, reForge L1568-1580, Classic L1339-1358; Neo as Forge).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from forge_family import CallSite, reset_before_sampling
from torch import nn

TESTS = Path(__file__).resolve().parent
STANDIN_FOLDERS = tuple(TESTS / name for name in ("forge", "forge_host", "reforge", "forge_classic", "forge_neo"))
# Top-level modules that belong to one host's stand-in (or bind to one, like standin_forge and lib_ipadapter).
HOST_MODULES = ("backend", "ldm_patched", "modules_forge", "lib_ipadapter", "standin_forge")


def _attention(module: str, name: str, **kwargs: Any) -> Callable[..., Any]:
    """The host's attention for a layer without a patch, looked up in its module at each call (hosts rebind it)."""

    def attention(q, k, v, heads):
        return getattr(importlib.import_module(module), name)(q, k, v, heads, **kwargs)

    return attention


def _forge_patcher(unet: nn.Module) -> Any:
    return importlib.import_module("backend.patcher.unet").UnetPatcher.from_model(unet)


def _ldm_patched_patcher(unet: nn.Module) -> Any:
    base_model = importlib.import_module("ldm_patched.modules.model_base").BaseModel(unet)
    return importlib.import_module("modules_forge.unet_patcher").UnetPatcher(base_model)


@dataclass(frozen=True)
class Host:
    """One Forge-family host: ``name`` is what ``vmix_webui.hosts.detect()`` must call it."""

    name: str
    folders: tuple[Path, ...]
    site: CallSite
    attention_module: str
    attention_name: str
    attention_kwargs: tuple[str, ...]  # the keyword arguments VMix's call must pass to the host's attention
    make_patcher: Callable[[nn.Module], Any]
    flags: tuple[str, ...]  # the legacy flags p.sd_model carries, all False but the family's
    families: dict[str, tuple[str, ...]]  # family -> the flags set for it (none: a model without cross-attention)
    hires_order: tuple[str, ...]  # callbacks of the hires pass: "before_hr", "reset", "sample" (before_every_sampling)

    def unet_patcher(self, unet: nn.Module) -> Any:
        """The host's UNet patcher around ``unet`` (inside :func:`host_environment`)."""
        return self.make_patcher(unet)


FORGE_FLAGS = ("is_sd1", "is_sd2", "is_sdxl", "is_sd3")
HOSTS = {
    "Forge": Host(
        name="Forge",
        folders=(TESTS / "forge", TESTS / "forge_host"),
        site=CallSite("Forge", _attention("backend.attention", "attention_function", mask=None)),
        attention_module="backend.attention",
        attention_name="attention_function",
        attention_kwargs=(),
        make_patcher=_forge_patcher,
        flags=FORGE_FLAGS,
        families={"sd1": ("is_sd1",), "sd2": ("is_sd2",), "sdxl": ("is_sdxl",), "sd3": ("is_sd3",), "flux": ()},
        hires_order=("before_hr", "sample", "reset", "sample"),
    ),
    "reForge": Host(
        name="reForge",
        folders=(TESTS / "reforge",),
        site=CallSite(
            "reForge",
            _attention("ldm_patched.ldm.modules.attention", "optimized_attention", attn_precision=None),
            cond_marks=False,
            uuids=True,
            activations_shape=True,
            attn_precision=True,
        ),
        attention_module="ldm_patched.ldm.modules.attention",
        attention_name="optimized_attention",
        attention_kwargs=("attn_precision",),
        make_patcher=_ldm_patched_patcher,
        flags=("is_sd1", "is_sd2", "is_sdxl", "is_ssd", "is_sd3"),
        families={"sd1": ("is_sd1",), "sd2": ("is_sd2",), "sdxl": ("is_sdxl",), "sd3": ("is_sd3",)},
        hires_order=("reset", "before_hr", "sample"),
    ),
    "Forge Classic": Host(
        name="Forge Classic",
        folders=(TESTS / "forge_classic",),
        site=CallSite("Forge Classic", _attention("ldm_patched.ldm.modules.attention", "optimized_attention")),
        attention_module="ldm_patched.ldm.modules.attention",
        attention_name="optimized_attention",
        attention_kwargs=(),
        make_patcher=_ldm_patched_patcher,
        flags=("is_sd1", "is_sd2", "is_sdxl"),
        families={"sd1": ("is_sd1",), "sd2": ("is_sd2",), "sdxl": ("is_sdxl",)},
        hires_order=("before_hr", "reset", "sample"),
    ),
    "Forge Neo": Host(
        name="Forge Neo",
        folders=(TESTS / "forge_neo",),
        site=CallSite("Forge Neo", _attention("backend.attention", "attention_function", mask=None)),
        attention_module="backend.attention",
        attention_name="attention_function",
        attention_kwargs=(),
        make_patcher=_forge_patcher,
        flags=("is_sd1", "is_sdxl", "is_wan"),
        families={"sd1": ("is_sd1",), "sdxl": ("is_sdxl",), "flux": ()},
        hires_order=("before_hr", "sample", "reset", "sample"),
    ),
}


def _is_host_module(name: str) -> bool:
    return name.split(".")[0] in HOST_MODULES


@contextlib.contextmanager
def host_environment(host: Host | None) -> Iterator[Host | None]:
    """Within the block only ``host``'s stand-in is importable (none at all for ``None``: plain A1111); afterwards
    ``sys.path`` and the stand-in modules in ``sys.modules`` are what they were before."""
    saved_path = list(sys.path)
    saved_modules = {name: module for name, module in sys.modules.items() if _is_host_module(name)}
    others = {str(folder) for folder in STANDIN_FOLDERS}
    for name in saved_modules:
        del sys.modules[name]
    own = [str(folder) for folder in host.folders] if host is not None else []
    sys.path[:] = [*own, *(entry for entry in saved_path if entry not in others)]
    importlib.invalidate_caches()
    try:
        yield host
    finally:
        for name in [name for name in sys.modules if _is_host_module(name)]:
            del sys.modules[name]
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path


def make_sd_model(host: Host, unet: nn.Module, family: str = "sd1") -> Any:
    """``p.sd_model`` as the host builds it: its flags for ``family``, and ``forge_objects``,
    ``forge_objects_original`` and ``forge_objects_after_applying_lora`` all holding one UNet patcher around ``unet``.

    Forge: ``standin_forge.make_forge_sd_model`` (its engines). Neo: a ``ForgeDiffusionEngine`` (``backend/
    diffusion_engine/sd15.py``, ``sdxl.py`` set ``is_sd1`` / ``is_sdxl``; ``flux.py`` nothing). reForge and Classic:
    A1111's model object (``modules/sd_models.py: set_model_type``, ``modules_forge/forge_loader.py: load_model_for_
    a1111``, which also sets ``sd_model.model.diffusion_model`` to the patcher's UNet). For a family without
    cross-attention pass any module as ``unet``.
    """
    if family not in host.families:
        raise KeyError(f"{host.name} has no {family} models")
    if host.name == "Forge":
        return importlib.import_module("standin_forge").make_forge_sd_model(unet, family)
    if host.name == "Forge Neo":
        engines = importlib.import_module("backend.diffusion_engine.base")
        sd_model, holder = engines.ForgeDiffusionEngine(), engines.ForgeObjects
    else:
        loader = importlib.import_module("modules_forge.forge_loader")
        holder = getattr(loader, "ForgeSD", None) or loader.ForgeObjects
        sd_model = SimpleNamespace(model=SimpleNamespace(diffusion_model=unet))
    for flag in host.flags:
        setattr(sd_model, flag, flag in host.families[family])
    sd_model.forge_objects = holder(unet=host.unet_patcher(unet), clip=None, vae=None, clipvision=None)
    sd_model.forge_objects_original = sd_model.forge_objects.shallow_copy()
    sd_model.forge_objects_after_applying_lora = sd_model.forge_objects.shallow_copy()
    return sd_model


def sampling_pass(host: Host, p: Any, script: Any, args: list, hires: bool = False) -> None:
    """The callbacks a host makes on ``script`` before one sampling pass: the first pass resets ``forge_objects`` and
    calls ``process_before_every_sampling``; the hires pass follows ``host.hires_order`` (Forge and Neo call
    ``process_before_every_sampling`` twice there, the first time before the reset). ``p.is_hr_pass`` is what every
    host's ``sample_hr_pass`` sets for the hires pass (True from its start, False again once it has sampled)."""
    p.is_hr_pass = hires
    for step in host.hires_order if hires else ("reset", "sample"):
        if step == "reset":
            reset_before_sampling(p.sd_model)
        elif step == "before_hr":
            script.before_hr(p, *args)
        else:
            script.process_before_every_sampling(p, *args, x=None, noise=None, c=None, uc=None)


@contextlib.contextmanager
def vmix_script(host: Host, folder: Path) -> Iterator[tuple[Any, Any, nn.Module, Any]]:
    """``scripts/vmix.py`` loaded through the A1111 stand-in (``tests/a1111`` must be on ``sys.path``) inside
    ``host``'s environment, with one adapter, "film", in ``folder/models/VMix`` and an SD 1.x model built the host's
    way as ``shared.sd_model``. Yields ``(script module, txt2img script, unet, adapter)``; host state is reset after."""
    import standin
    from helpers import random_adapter, tiny_unet
    from modules import scripts, shared

    from vmix_ext.weights import save_adapter

    try:
        standin.reset(models_path=str(folder / "models"))
        (folder / "models" / "VMix").mkdir(parents=True)
        unet = tiny_unet(768)
        adapter = random_adapter(unet, seed=11)
        save_adapter(adapter, folder / "models" / "VMix" / "film.safetensors")
        module = standin.load_script(str(TESTS.parent / "scripts" / "vmix.py"), str(TESTS.parent))
        shared.sd_model = make_sd_model(host, unet, "sd1")
        standin.build_runners()
        yield module, scripts.scripts_txt2img.script("VMix"), unet, adapter
    finally:
        standin.reset()
