"""VMix for the A1111-style web UIs (A1111 and the Forge family): the always-on script and its callbacks.

Everything else lives in ``vmix_webui`` (the host glue: UI, infotext, X/Y/Z, HTTP route, backends) and ``vmix_ext``
(the torch-only core). Both are imported here, at the top, because the extension folder is on ``sys.path`` only
while the host imports this file.
"""

from __future__ import annotations

from typing import Any

from modules import script_callbacks, scripts, shared

from vmix_ext.hooks import detach_all
from vmix_ext.session import VMixRun
from vmix_ext.settings import SettingsError, VMixSettings
from vmix_webui import adapters, api, generation, hosts, infotext, log, status, ui, xyz

log.configure(getattr(shared.cmd_opts, "vmix_loglevel", None))
BACKEND = hosts.detect()  # once per start-up, by what the host provides
# A1111 before 1.10 has no callback at the start of each sampling pass: the nearest earlier ones stand in.
HAS_PASS_CALLBACK = hasattr(scripts.Script, "process_before_every_sampling")
log.logger.debug("host: %s", BACKEND.name)


class VMixScript(scripts.Script):
    def title(self) -> str:
        return ui.TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        controls, fields = ui.build(_tab(self))
        self.infotext_fields = fields
        self.paste_field_names = [key for _, key in fields]
        return controls

    def process(self, p: Any, *args: Any) -> None:
        tab = _tab(self)
        generation.end(p, BACKEND)  # defensively: whatever a failed earlier generation may have left
        generation.clear_infotext(p)
        fields = len(VMixSettings.field_names())
        try:
            settings = xyz.settings_for(p, args[:fields], strengths=args[fields:])
        except SettingsError as exc:
            generation.fail(p, tab, exc, BACKEND)
            return
        if not settings.enabled:
            status.forget(p, tab)
            return
        try:
            BACKEND.check_model(p)
            run = VMixRun(settings, adapters.library(), adapters.short_hash(settings.adapter))
            run.check_fits(BACKEND.unet(p))  # before any step; a hires checkpoint is checked when its pass starts
        except Exception as exc:  # the host would swallow it: report it, make the image without VMix
            generation.fail(p, tab, exc, BACKEND)
            return
        generation.start(p, run, tab, BACKEND)
        status.after_generation(p, tab, run.status())

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        if not HAS_PASS_CALLBACK:
            generation.begin_pass(p, BACKEND)

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        generation.begin_pass(p, BACKEND)  # every pass: hires fix may have loaded another checkpoint

    def post_sample(self, p: Any, ps: Any, *args: Any) -> None:
        generation.end_pass(p, BACKEND)

    def before_hr(self, p: Any, *args: Any) -> None:
        generation.end_pass(p, BACKEND)
        if not HAS_PASS_CALLBACK:
            generation.begin_pass(p, BACKEND)

    def postprocess_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        generation.end_pass(p, BACKEND)  # before postprocess_image, where ADetailer runs its own generation

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        generation.end(p, BACKEND)


def _tab(script: scripts.Script) -> str:
    return "img2img" if script.is_img2img else "txt2img"


def on_cfg_denoiser(params: Any) -> None:
    """Step fraction and negative-prompt rows for the run of the generation this denoiser samples for."""
    denoiser = getattr(params, "denoiser", None)
    run = generation.run_of(getattr(denoiser, "p", None))
    if run is None:
        return
    # The denoiser's own call counter is what A1111 itself uses for step fractions (skip_early_cond); it counts
    # every model call of two-call samplers, while sampling_step lags one step behind.
    if getattr(denoiser, "total_steps", None):
        run.mixer.set_progress(denoiser.step, denoiser.total_steps)
    else:
        run.mixer.set_progress(params.sampling_step, params.total_sampling_steps)
    uncond = params.text_uncond
    if isinstance(uncond, dict):  # SDXL conditioning is a dict; the cross-attention context is "crossattn"
        uncond = uncond.get("crossattn")
    run.mixer.set_uncond_context(uncond)


script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
script_callbacks.on_before_ui(xyz.add_axes)
script_callbacks.on_app_started(api.on_app_started)
script_callbacks.on_script_unloaded(detach_all)
script_callbacks.on_infotext_pasted(infotext.on_infotext_pasted)
