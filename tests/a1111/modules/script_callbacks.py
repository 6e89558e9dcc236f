"""Stand-in for modules/script_callbacks.py: registration (on_*) and firing (*_callback) of host callbacks."""

from __future__ import annotations

import inspect
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modules import errors


@dataclass
class ScriptCallback:
    """Mirrors script_callbacks.ScriptCallback: the registering script file, the callable and its name."""

    script: str
    callback: Callable
    name: str | None = None


callback_map: dict[str, list[ScriptCallback]] = defaultdict(list)


class CFGDenoiserParams:
    """Mirrors script_callbacks.CFGDenoiserParams (1.10 signature, with text_cond/text_uncond/denoiser)."""

    def __init__(
        self,
        x: Any,
        image_cond: Any,
        sigma: Any,
        sampling_step: int,
        total_sampling_steps: int,
        text_cond: Any,
        text_uncond: Any,
        denoiser: Any = None,
    ) -> None:
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    """Mirrors script_callbacks.CFGDenoisedParams."""

    def __init__(self, x: Any, sampling_step: int, total_sampling_steps: int, inner_model: Any) -> None:
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    """Mirrors script_callbacks.AfterCFGCallbackParams."""

    def __init__(self, x: Any, sampling_step: int, total_sampling_steps: int) -> None:
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


def _add(category: str, callback: Callable, name: str | None) -> None:
    """Mirrors script_callbacks.add_callback: records the calling script's filename with the callback."""
    stack = [x for x in inspect.stack() if x.filename != __file__]
    filename = stack[0].filename if stack else "unknown file"
    callback_map[category].append(ScriptCallback(filename, callback, name))


def _fire(category: str, *args: Any, reverse: bool = False) -> None:
    """Mirrors the host *_callback functions: each callback runs inside try/except; errors are reported, not raised."""
    callbacks = list(callback_map[category])
    for c in reversed(callbacks) if reverse else callbacks:
        try:
            c.callback(*args)
        except Exception:
            errors.report(f"Error executing callback {category} for {c.script}", exc_info=True)


def clear_callbacks() -> None:
    """Mirrors script_callbacks.clear_callbacks (also the stand-in's reset between tests)."""
    callback_map.clear()


def remove_current_script_callbacks() -> None:
    """Mirrors script_callbacks.remove_current_script_callbacks: drops callbacks registered from the caller's file."""
    stack = [x for x in inspect.stack() if x.filename != __file__]
    filename = stack[0].filename if stack else "unknown file"
    for key in list(callback_map):
        callback_map[key] = [c for c in callback_map[key] if os.path.abspath(c.script) != os.path.abspath(filename)]


def on_app_started(callback: Callable, *, name: str | None = None) -> None:
    """Mirrors on_app_started: callback(demo: gr.Blocks | None, app: FastAPI) after the app starts."""
    _add("app_started", callback, name)


def on_before_ui(callback: Callable, *, name: str | None = None) -> None:
    """Mirrors on_before_ui: callback() before the UI is built."""
    _add("before_ui", callback, name)


def on_model_loaded(callback: Callable, *, name: str | None = None) -> None:
    """Mirrors on_model_loaded: callback(sd_model) after a checkpoint load."""
    _add("model_loaded", callback, name)


def on_cfg_denoiser(callback: Callable, *, name: str | None = None) -> None:
    """Mirrors on_cfg_denoiser: callback(CFGDenoiserParams) before each denoiser call."""
    _add("cfg_denoiser", callback, name)


def on_cfg_denoised(callback: Callable, *, name: str | None = None) -> None:
    """Mirrors on_cfg_denoised: callback(CFGDenoisedParams) after the inner model ran."""
    _add("cfg_denoised", callback, name)


def on_cfg_after_cfg(callback: Callable, *, name: str | None = None) -> None:
    """Mirrors on_cfg_after_cfg: callback(AfterCFGCallbackParams) after CFG combination."""
    _add("cfg_after_cfg", callback, name)


def on_script_unloaded(callback: Callable, *, name: str | None = None) -> None:
    """Mirrors on_script_unloaded: callback() before scripts are reloaded."""
    _add("script_unloaded", callback, name)


def on_infotext_pasted(callback: Callable, *, name: str | None = None) -> None:
    """Mirrors on_infotext_pasted: callback(infotext: str, params: dict) — may edit params before fields are set."""
    _add("infotext_pasted", callback, name)


def on_ui_settings(callback: Callable, *, name: str | None = None) -> None:
    """Mirrors on_ui_settings: callback() when settings are registered."""
    _add("ui_settings", callback, name)


def on_after_component(callback: Callable, *, name: str | None = None) -> None:
    """Mirrors on_after_component: callback(component, **kwargs) after every gradio component is created
    (the host fires it from its patched component constructor in modules/scripts.py, with the constructor kwargs)."""
    _add("after_component", callback, name)


def after_component_callback(component: Any, **kwargs: Any) -> None:
    """Mirrors after_component_callback."""
    callbacks = list(callback_map["after_component"])
    for c in callbacks:
        try:
            c.callback(component, **kwargs)
        except Exception:
            errors.report(f"Error executing callback after_component for {c.script}", exc_info=True)


def app_started_callback(demo: Any, app: Any) -> None:
    """Mirrors app_started_callback."""
    _fire("app_started", demo, app)


def before_ui_callback() -> None:
    """Mirrors before_ui_callback."""
    _fire("before_ui")


def model_loaded_callback(sd_model: Any) -> None:
    """Mirrors model_loaded_callback."""
    _fire("model_loaded", sd_model)


def cfg_denoiser_callback(params: CFGDenoiserParams) -> None:
    """Mirrors cfg_denoiser_callback."""
    _fire("cfg_denoiser", params)


def cfg_denoised_callback(params: CFGDenoisedParams) -> None:
    """Mirrors cfg_denoised_callback."""
    _fire("cfg_denoised", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams) -> None:
    """Mirrors cfg_after_cfg_callback."""
    _fire("cfg_after_cfg", params)


def script_unloaded_callback() -> None:
    """Mirrors script_unloaded_callback: runs callbacks in reverse registration order."""
    _fire("script_unloaded", reverse=True)


def infotext_pasted_callback(infotext: str, params: dict[str, Any]) -> None:
    """Mirrors infotext_pasted_callback."""
    _fire("infotext_pasted", infotext, params)


def ui_settings_callback() -> None:
    """Mirrors ui_settings_callback."""
    _fire("ui_settings")
