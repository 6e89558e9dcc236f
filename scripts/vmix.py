"""VMix for the A1111 web UI: the always-on script, its UI, infotext, X/Y/Z axes and HTTP route.

This file is glue: everything that is not about the host lives in ``vmix_ext`` (imported at module top, because the
extension folder is on ``sys.path`` only while the host imports this file).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr
from modules import paths, script_callbacks, scripts, shared

from vmix_ext.hooks import detach_all, remove_vmix_hooks
from vmix_ext.library import AdapterLibrary
from vmix_ext.session import VMixRun
from vmix_ext.settings import (
    INFOTEXT_ENABLED,
    INFOTEXT_ERROR,
    INFOTEXT_HASH,
    INFOTEXT_KEYS,
    LABELS,
    SCALE_MAX,
    SCALE_MIN,
    SCALE_STEP,
    SettingsError,
    VMixSettings,
    elem_id,
    parse_dimensions,
)
from vmix_ext.weights import AdapterFileError, check_adapter_fits, short_hash

try:  # A1111 1.7+ and Forge
    from modules.ui_components import InputAccordion
except ImportError:  # pragma: no cover - older hosts
    InputAccordion = None

# Chosen once at import: Forge (which has a modules_forge package) gets the UNet patcher, A1111 the forward hooks.
ON_FORGE = importlib.util.find_spec("modules_forge") is not None

TITLE = "VMix"
XYZ_ATTRIBUTE = "vmix_{}"  # X/Y/Z cells set p.vmix_<field>; process() prefers them over the UI values
NO_ADAPTER = ""


class _ConsoleHandler(logging.Handler):
    """One ``[VMix]`` line on whatever stderr is now (the host and test runners replace sys.stderr)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


logger = logging.getLogger("vmix")
if not logger.handlers:
    _handler = _ConsoleHandler()
    _handler.setFormatter(logging.Formatter("[VMix] %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.DEBUG if os.environ.get("VMIX_DEBUG") else logging.INFO)
    logger.propagate = False


def adapter_folder() -> str:
    """``--vmix-dir`` (added by preload.py) or ``models/VMix``."""
    configured = getattr(shared.cmd_opts, "vmix_dir", None)
    return configured or os.path.join(paths.models_path, "VMix")


LIBRARY = AdapterLibrary(adapter_folder())
# The generation in progress (one at a time in the host's queue), for the sampler callback and the cleanup paths.
_current_run: VMixRun | None = None
# What the status line shows per tab after the last generation.
_last_status: dict[str, str] = {}


# -- status ------------------------------------------------------------------------------------------------------


def status_html(text: str, error: bool = False) -> str:
    css = "vmix-status vmix-error" if error else "vmix-status"
    return f"<div class='{css}'>{_escape(text)}</div>"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def adapter_status(name: str) -> str:
    if not name:
        found = LIBRARY.names()
        if found:
            return status_html("Choose an adapter.")
        return status_html(
            f"No adapters in {LIBRARY.folder}. VMix adapters are made with this extension's trainer "
            "(see its README); no official weights exist."
        )
    try:
        return status_html(LIBRARY.header(name).describe())
    except (LookupError, AdapterFileError) as exc:
        return status_html(str(exc), error=True)


def dimension_names(name: str) -> list[str]:
    if not name:
        return []
    try:
        return [d.name for d in LIBRARY.header(name).dimensions]
    except (LookupError, AdapterFileError):
        return []


def report_failure(p: Any, tab: str, exc: BaseException) -> None:
    """The host swallows exceptions from always-on scripts, so a failure is shown in three places."""
    message = str(exc) if isinstance(exc, (LookupError, ValueError)) else f"{type(exc).__name__}: {exc}"
    message = message.strip("'\"")
    p.extra_generation_params[INFOTEXT_ERROR] = message
    _last_status[tab] = status_html(f"Last generation ran without VMix: {message}", error=True)
    logger.error("%s (the image is made without VMix)", message)


# -- cleanup -----------------------------------------------------------------------------------------------------


def end_run() -> None:
    global _current_run
    if _current_run is not None:
        _current_run.close()
        _current_run = None
    detach_all()


def _close_with_cleanup(p: Any) -> None:
    """txt2img, img2img and the API end with ``closing(p)`` even when sampling raised: detach there too."""
    original = p.close
    if getattr(original, "_vmix_cleanup", False):
        return

    def close() -> None:
        try:
            original()
        finally:
            end_run()

    close._vmix_cleanup = True  # type: ignore[attr-defined]
    p.close = close


def current_unet(p: Any) -> Any:
    if ON_FORGE:
        return p.sd_model.forge_objects.unet.model.diffusion_model
    return p.sd_model.model.diffusion_model


def check_forge_family(sd_model: Any) -> None:
    """Forge also runs SD3, Flux and Chroma, which have no cross-attention for VMix to mix into."""
    if not any(getattr(sd_model, flag, False) for flag in ("is_sd1", "is_sd2", "is_sdxl")):
        raise ValueError(
            f"the loaded model ({type(sd_model).__name__}) has no cross-attention layers; VMix works with "
            "SD 1.x, SD 2.x and SDXL models, not with SD3, Flux or Chroma"
        )


def install_forge_patches(p: Any, run: VMixRun) -> None:
    """Forge resets its UNet patcher before every sampling pass: clone it, patch the clone, hand it back."""
    from backend.attention import attention_function  # Forge only

    patcher = p.sd_model.forge_objects.unet.clone()
    run.install_on_forge(patcher, attention_function)
    p.sd_model.forge_objects.unet = patcher


def _on_cfg_denoiser(params: Any) -> None:
    run = _current_run
    if run is None:
        return
    # The denoiser's own call counter is what A1111 itself uses for step fractions (skip_early_cond); it counts
    # every model call of two-call samplers, while sampling_step lags one step behind.
    denoiser = getattr(params, "denoiser", None)
    if getattr(denoiser, "total_steps", None):
        run.mixer.set_progress(denoiser.step, denoiser.total_steps)
    else:
        run.mixer.set_progress(params.sampling_step, params.total_sampling_steps)
    uncond = params.text_uncond
    if isinstance(uncond, dict):  # SDXL conditioning is a dict; the cross-attention context is "crossattn"
        uncond = uncond.get("crossattn")
    run.mixer.set_uncond_context(uncond)


# -- the script --------------------------------------------------------------------------------------------------


class VMixScript(scripts.Script):
    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        tab = "img2img" if is_img2img else "txt2img"
        names = LIBRARY.names()
        first = names[0] if names else NO_ADAPTER
        with _accordion(tab) as enabled:
            with gr.Row():
                adapter = gr.Dropdown(
                    label=LABELS["adapter"], choices=[NO_ADAPTER, *names], value=first, elem_id=elem_id("adapter", tab)
                )
                refresh = gr.Button("🔄", elem_id=elem_id("refresh", tab), elem_classes=["tool"])
            scale = gr.Slider(
                label=LABELS["scale"],
                minimum=SCALE_MIN,
                maximum=SCALE_MAX,
                step=SCALE_STEP,
                value=1.0,
                elem_id=elem_id("scale", tab),
            )
            dims = dimension_names(first)
            dimensions = gr.CheckboxGroup(
                label=LABELS["dimensions"], choices=dims, value=dims, elem_id=elem_id("dimensions", tab)
            )
            with gr.Accordion("Advanced", open=False, elem_id=elem_id("advanced", tab)):
                cond_only = gr.Checkbox(label=LABELS["cond_only"], value=False, elem_id=elem_id("cond_only", tab))
                with gr.Row():
                    start = gr.Slider(
                        label=LABELS["start"],
                        minimum=0.0,
                        maximum=1.0,
                        step=0.01,
                        value=0.0,
                        elem_id=elem_id("start", tab),
                    )
                    end = gr.Slider(
                        label=LABELS["end"], minimum=0.0, maximum=1.0, step=0.01, value=1.0, elem_id=elem_id("end", tab)
                    )
            status = gr.HTML(value=adapter_status(first), elem_id=elem_id("status", tab))

        def on_adapter(name: str) -> tuple[dict[str, Any], str]:
            names_ = dimension_names(name)
            return gr.update(choices=names_, value=names_), adapter_status(name)

        def on_refresh(name: str) -> tuple[dict[str, Any], dict[str, Any], str]:
            LIBRARY.clear()
            choices = LIBRARY.names()
            keep = name if name in choices else (choices[0] if choices else NO_ADAPTER)
            names_ = dimension_names(keep)
            return (
                gr.update(choices=[NO_ADAPTER, *choices], value=keep),
                gr.update(choices=names_, value=names_),
                adapter_status(keep),
            )

        # .input fires on user changes only, so pasting infotext (which sets adapter and dims together) is not undone.
        listen = getattr(adapter, "input", None) or adapter.change
        listen(fn=on_adapter, inputs=[adapter], outputs=[dimensions, status])
        refresh.click(fn=on_refresh, inputs=[adapter], outputs=[adapter, dimensions, status])
        _status_components[tab] = status

        # Plain keys for every control (see _on_infotext_pasted), so "Send to img2img" copies VMix's controls too.
        keys = [INFOTEXT_ENABLED, *INFOTEXT_KEYS.values()]
        self.infotext_fields = list(
            zip([enabled, adapter, scale, dimensions, cond_only, start, end], keys, strict=True)
        )
        self.paste_field_names = keys
        return [enabled, adapter, scale, dimensions, cond_only, start, end]

    # -- generation callbacks ------------------------------------------------------------------------------------

    def process(self, p: Any, *args: Any) -> None:
        global _current_run
        end_run()  # defensively: a previous generation that failed may have left hooks behind
        tab = "img2img" if self.is_img2img else "txt2img"
        try:
            remove_vmix_hooks(current_unet(p))
        except AttributeError:
            pass
        # X/Y/Z cells are shallow copies of one p and share its extra_generation_params: start each one clean.
        for key in (*INFOTEXT_KEYS.values(), INFOTEXT_HASH, INFOTEXT_ERROR):
            p.extra_generation_params.pop(key, None)
        try:
            settings = settings_for(p, args)
        except SettingsError as exc:
            report_failure(p, tab, exc)
            return
        if not settings.enabled:
            _last_status[tab] = adapter_status(settings.adapter)  # clear an error shown for an earlier generation
            return
        try:
            if ON_FORGE:
                check_forge_family(p.sd_model)
            run = VMixRun(settings, LIBRARY)
            if ON_FORGE:  # check now, patch in process_before_every_sampling
                check_adapter_fits(run.adapter, current_unet(p), run.path)
            else:
                run.ensure_on(current_unet(p))
        except Exception as exc:  # anything else would be swallowed by the host: report it, make the image anyway
            report_failure(p, tab, exc)
            return
        _current_run = run
        _close_with_cleanup(p)
        p.extra_generation_params.update(run.infotext())
        _last_status[tab] = status_html(run.status())

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        if not ON_FORGE:
            self._ensure_on_current_unet(p)

    def before_hr(self, p: Any, *args: Any) -> None:
        if not ON_FORGE:
            self._ensure_on_current_unet(p)

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        # Hires fix may have loaded another checkpoint since process(): follow it to the UNet about to sample.
        self._ensure_on_current_unet(p)

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        end_run()

    def _ensure_on_current_unet(self, p: Any) -> None:
        run = _current_run
        if run is None:
            return
        try:
            if ON_FORGE:
                check_forge_family(p.sd_model)
                install_forge_patches(p, run)
            else:
                run.ensure_on(current_unet(p))
        except Exception as exc:
            end_run()
            report_failure(p, "img2img" if self.is_img2img else "txt2img", exc)


def _accordion(tab: str) -> Any:
    if InputAccordion is not None:
        return InputAccordion(False, label=TITLE, elem_id=elem_id("enabled", tab))
    return _LegacyAccordion(tab)  # pragma: no cover


class _LegacyAccordion:  # pragma: no cover - A1111 before 1.7 has no InputAccordion
    def __init__(self, tab: str) -> None:
        self.accordion = gr.Accordion(TITLE, open=False)
        self.tab = tab

    def __enter__(self) -> Any:
        self.accordion.__enter__()
        return gr.Checkbox(label=LABELS["enabled"], value=False, elem_id=elem_id("enabled", self.tab))

    def __exit__(self, *exc: object) -> None:
        self.accordion.__exit__(*exc)


def settings_for(p: Any, args: Sequence[Any]) -> VMixSettings:
    """UI (or API) values, with any X/Y/Z cell values that were set on this copy of ``p``."""
    settings = VMixSettings.from_args(args)
    overrides = {}
    for name in VMixSettings.field_names():
        attribute = XYZ_ATTRIBUTE.format(name)
        if hasattr(p, attribute):
            overrides[name] = getattr(p, attribute)
    return settings.with_overrides(overrides)


def _on_infotext_pasted(_infotext: str, params: dict[str, Any]) -> None:
    """Prepare VMix's entries before the host applies pasted parameters to the controls.

    The switch gets a value from the presence of ``VMix adapter`` (text without VMix turns VMix off), and the
    adapter and dimension entries become updates that also set the choices: the adapter is found by name or, if
    the file was renamed since, by the hash the infotext recorded.
    """
    params[INFOTEXT_ENABLED] = INFOTEXT_KEYS["adapter"] in params
    if not params[INFOTEXT_ENABLED]:
        return
    adapter = _pasted_adapter(str(params[INFOTEXT_KEYS["adapter"]]), params.get(INFOTEXT_HASH))
    params[INFOTEXT_KEYS["dimensions"]] = _pasted_dimensions(
        str(params.get(INFOTEXT_KEYS["dimensions"], "all")), adapter
    )
    params[INFOTEXT_KEYS["adapter"]] = gr.update(choices=[NO_ADAPTER, *_with(LIBRARY.names(), adapter)], value=adapter)


def _pasted_adapter(name: str, wanted_hash: str | None) -> str:
    names = LIBRARY.names()
    if name not in names and wanted_hash:
        name = next((n for n in names if short_hash(LIBRARY.path_for(n)) == wanted_hash), name)
    if name not in names:
        logger.warning("pasted infotext names adapter '%s', which is not in %s", name, LIBRARY.folder)
    return name


def _pasted_dimensions(text: str, adapter: str) -> dict[str, Any]:
    choices = dimension_names(adapter)
    text = text.strip()
    if text == "all":
        chosen = list(choices)
    elif text == "none":
        chosen = []
    else:
        chosen = list(parse_dimensions(text) or ())
    return gr.update(choices=_with(choices, *chosen), value=chosen)


def _with(items: list[str], *extra: str) -> list[str]:
    """``items`` followed by whichever of ``extra`` they lack (a pasted value must be among a control's choices)."""
    return [*items, *(e for e in dict.fromkeys(extra) if e not in items)]


# -- status line refresh after a generation ------------------------------------------------------------------------

_status_components: dict[str, Any] = {}


def _on_after_component(component: Any, **kwargs: Any) -> None:
    """When the host's generation-info box appears, refresh our status line whenever it changes."""
    elem = kwargs.get("elem_id") or ""
    for tab in ("txt2img", "img2img"):
        if elem == f"html_info_{tab}" and tab in _status_components:
            component.change(
                fn=lambda tab=tab: _last_status.get(tab) or gr.update(),
                inputs=[],
                outputs=[_status_components[tab]],
            )


# -- X/Y/Z plot ----------------------------------------------------------------------------------------------------


def _xyz_setter(field: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[Any, Any, Any], None]:
    def apply(p: Any, value: Any, _values: Any) -> None:
        setattr(p, XYZ_ATTRIBUTE.format(field), convert(value))

    return apply


def xyz_dimensions(cell: str) -> tuple[str, ...] | None:
    """One X/Y/Z cell: ``color+focus``, ``all`` or ``none`` (cells themselves are separated by commas)."""
    cell = cell.strip()
    if cell == "all":
        return None
    if cell == "none":
        return ()
    return parse_dimensions(cell.replace("+", ","))


def add_xyz_axes() -> None:
    module = next((data.module for data in scripts.scripts_data if data.script_class.__module__ == "xyz_grid.py"), None)
    if module is None:
        return
    if any(getattr(option, "label", "").startswith("[VMix]") for option in module.axis_options):
        return  # on_before_ui runs again after "Reload UI"
    module.axis_options.extend(
        [
            module.AxisOption("[VMix] " + LABELS["scale"], float, _xyz_setter("scale")),
            module.AxisOption(
                "[VMix] Enabled", str, _xyz_setter("enabled", lambda v: v == "True"), choices=lambda: ["True", "False"]
            ),
            module.AxisOption(
                "[VMix] Adapter",
                str,
                _xyz_setter("adapter"),
                choices=LIBRARY.names,
            ),
            module.AxisOption(
                "[VMix] Dimensions (a+b, all, none)",
                str,
                _xyz_setter("dimensions", xyz_dimensions),
            ),
        ]
    )


# -- HTTP API --------------------------------------------------------------------------------------------------


def adapters_listing() -> dict[str, Any]:
    """Body of GET /vmix/v1/adapters: every adapter's metadata, or the reason it cannot be used."""
    entries = []
    for item in LIBRARY.headers():
        if isinstance(item, AdapterFileError):
            entries.append({"file": os.path.basename(item.path), "error": item.problem})
        else:
            entries.append(item.as_json())
    return {"folder": str(LIBRARY.folder), "adapters": entries}


def _on_app_started(_demo: Any, app: Any) -> None:
    app.add_api_route("/vmix/v1/adapters", adapters_listing, methods=["GET"])


script_callbacks.on_cfg_denoiser(_on_cfg_denoiser)
script_callbacks.on_before_ui(add_xyz_axes)
script_callbacks.on_app_started(_on_app_started)
script_callbacks.on_after_component(_on_after_component)
script_callbacks.on_script_unloaded(end_run)
script_callbacks.on_infotext_pasted(_on_infotext_pasted)
