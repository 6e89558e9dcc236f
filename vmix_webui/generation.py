"""One generation's VMix, kept on the host's processing object ``p`` and nowhere else.

Each callback finds the run from its own ``p`` (A1111's denoiser carries ``p``), so a nested generation (ADetailer's
inpainting pass, with its own copy of ``p`` and its own script arguments) never sees the outer one's VMix and gets
VMix only if its own arguments ask for it. Hooks and patches exist only while a sampling pass runs: ``begin_pass``
when it starts, ``end_pass`` when it ends (after sampling, before the hires pass, at the end of a batch, when
``p`` closes — also after an exception or an interrupt — and defensively when the next generation starts).
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

from torch import nn

from vmix_ext.session import VMixRun
from vmix_ext.settings import INFOTEXT_ERROR, INFOTEXT_HASH, INFOTEXT_KEYS

from . import status
from .log import logger

_RUN = "_vmix_run"
_CLOSE_WRAPPED = "_vmix_cleanup"


class Backend(Protocol):
    name: str

    def unet(self, p: Any) -> nn.Module: ...
    def check_model(self, p: Any) -> None: ...
    def begin_pass(self, p: Any, run: VMixRun) -> None: ...
    def end_pass(self, p: Any, run: VMixRun | None) -> None: ...


class Generation:
    """The run of one ``p``; ``owner`` tells a run set on this ``p`` from one copied over from another object."""

    def __init__(self, p: Any, run: VMixRun, tab: str) -> None:
        self.owner = weakref.ref(p)
        self.run = run
        self.tab = tab


def run_of(p: Any) -> VMixRun | None:
    generation = _generation_of(p)
    return generation.run if generation is not None else None


def _generation_of(p: Any) -> Generation | None:
    generation = getattr(p, _RUN, None) if p is not None else None
    if isinstance(getattr(generation, "owner", None), weakref.ref) and generation.owner() is p:
        return generation
    return None


def start(p: Any, run: VMixRun, tab: str, backend: Backend) -> None:
    setattr(p, _RUN, Generation(p, run, tab))
    _close_with_cleanup(p, backend)
    p.extra_generation_params.update(run.infotext())


def clear_infotext(p: Any) -> None:
    """X/Y/Z cells are shallow copies of one ``p`` and share its extra_generation_params: start each one clean."""
    for key in (*INFOTEXT_KEYS.values(), INFOTEXT_HASH, INFOTEXT_ERROR):
        p.extra_generation_params.pop(key, None)


def begin_pass(p: Any, backend: Backend) -> None:
    generation = _generation_of(p)
    if generation is None:
        return
    hires_pass = bool(getattr(p, "is_hr_pass", False))  # A1111 1.6+ and the Forge family set it for hires fix
    if not generation.run.select_pass(hires_pass):
        return  # the user chose the other pass only
    try:
        backend.begin_pass(p, generation.run)
    except Exception as exc:
        fail(p, generation.tab, exc, backend)


def end_pass(p: Any, backend: Backend) -> None:
    generation = _generation_of(p)
    backend.end_pass(p, generation.run if generation else None)


def end(p: Any, backend: Backend) -> None:
    """The generation is over (or failed): no pass, no run."""
    try:
        end_pass(p, backend)
    finally:
        generation = _generation_of(p)
        if generation is not None:
            generation.run.close()
            p.__dict__.pop(_RUN, None)


def fail(p: Any, tab: str, exc: BaseException, backend: Backend) -> None:
    """The host swallows exceptions from always-on scripts, so a failure is shown in three places: the infotext of
    the images made from here on (with nothing that would switch VMix on when pasted), the status line and the
    console. The generation goes on without VMix."""
    message = user_message(exc)
    end(p, backend)
    clear_infotext(p)
    p.extra_generation_params[INFOTEXT_ERROR] = message
    status.after_generation(p, tab, message, error=True)
    logger.error("%s (the image is made without VMix)", message)


def user_message(exc: BaseException) -> str:
    """Our own errors say what to do; anything else keeps its type so a bug report can be made from it."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, (LookupError, ValueError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _close_with_cleanup(p: Any, backend: Backend) -> None:
    """txt2img, img2img and the API end with ``closing(p)`` even when sampling raised or was interrupted."""
    original = p.close
    marker = getattr(original, _CLOSE_WRAPPED, None)
    if marker is not None:
        if marker() is p:
            return
        original = original._vmix_inner  # a copy of another p: wrap the host's close, not that p's cleanup

    def close() -> None:
        try:
            original()
        finally:
            end(p, backend)

    setattr(close, _CLOSE_WRAPPED, weakref.ref(p))
    close._vmix_inner = original  # type: ignore[attr-defined]
    p.close = close
