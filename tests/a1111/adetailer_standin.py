"""Test stand-in for the inner-pass protocol of ADetailer 26.2.0, for the A1111 stand-in (written from reading
ADetailer; none of its code). Load it like any extension script: ``standin.load_script(<this file>)``.

Source read: the PyPI sdist adetailer-26.2.0, files ``scripts/!adetailer.py`` (AfterDetailerScript),
``adetailer/args.py`` (ADetailerArgs defaults, SCRIPT_DEFAULT, BUILTIN_SCRIPT), ``aaaaaa/p_method.py``
(get_i, need_call_postprocess, need_call_process) and ``aaaaaa/helper.py`` (copy_extra_params, preserve_prompts).
ADetailer runs the same way on A1111 and Forge (one script; only its ControlNet glue differs, not reproduced).

The protocol, per generated image, inside the host's ``postprocess_image`` (so after hires fix):
1. at batch index 0: ``p.scripts.postprocess(copy(p), Processed(p, []))`` on the whole outer runner;
2. per enabled tab: an img2img p2 built from p (``get_i2i_p``) whose ``scripts`` is a shallow copy of p.scripts
   with ``alwayson_scripts`` cut to the allowed file stems, ``script_args`` an element-wise copy of p.script_args
   (setting both runs ``Script.setup(p2, ...)``), ``p2._ad_disabled = p2._ad_inner = True``; per detection j a
   copy of p2 with seed + j goes through ``process_images`` then ``close()``; the last result replaces pp.image;
3. at the last batch index: ``before_process(copy(p))`` and ``process(copy(p))`` on the whole outer runner.
Steps 1 and 3 run even when nothing is detected, and keep p.all_prompts / p.all_negative_prompts.

Left out: detectors (a tab's ``standin_detections`` says how many regions an image has, each the whole image),
masks, crop and paste-back (the image is resized to p2's latent size, and the result back to the image's), the
[SKIP] prompt, X/Y/Z axes, skip-img2img, dynamic denoise, bbox size matching, sampler/scheduler/VAE overrides,
ControlNet units, saving. No text encoder: the inner conds are the outer image's rows of p.standin_cond /
p.standin_uncond, or the tab's ``standin_cond`` / ``standin_uncond`` (what its ad_prompt would encode to).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from copy import copy
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from modules import processing, scripts, shared
from modules.prompt_parser import DictWithShape
from modules.ui_components import InputAccordion

VERSION = "26.2.0"

SCRIPT_DEFAULT = "dynamic_prompting,dynamic_thresholding,lora_block_weight,negpip,wildcard_recursive,wildcards"
"""adetailer/args.py SCRIPT_DEFAULT: the default of the ``ad_script_names`` setting."""

BUILTIN_SCRIPT = "hypertile_script,soft_inpainting"
"""adetailer/args.py BUILTIN_SCRIPT: file stems allowed in the inner pass besides ``ad_script_names``."""

TAB_DEFAULTS: dict[str, Any] = {
    "ad_model": "None",
    "ad_tab_enable": True,
    "ad_prompt": "",
    "ad_negative_prompt": "",
    "ad_mask_blur": 4,
    "ad_denoising_strength": 0.4,
    "ad_inpaint_only_masked": True,
    "ad_inpaint_only_masked_padding": 32,
    "ad_use_inpaint_width_height": False,
    "ad_inpaint_width": 512,
    "ad_inpaint_height": 512,
    "ad_use_steps": False,
    "ad_steps": 28,
    "ad_use_cfg_scale": False,
    "ad_cfg_scale": 7.0,
    "ad_use_checkpoint": False,
    "ad_checkpoint": None,
    "ad_use_noise_multiplier": False,
    "ad_noise_multiplier": 1.0,
    "ad_use_clip_skip": False,
    "ad_clip_skip": 1,
    "ad_restore_face": False,
    "ad_controlnet_model": "None",
}
"""adetailer/args.py ADetailerArgs: the defaults of the fields the inner pass reads (one dict per UI tab)."""

STANDIN_KEYS: dict[str, Any] = {"standin_detections": 1, "standin_cond": None, "standin_uncond": None}
"""Not ADetailer keys: what the detector and the text encoder would have produced for a tab."""

COPIED_FROM_OUTER = (
    "outpath_samples",
    "outpath_grids",
    "styles",
    "subseed_strength",
    "seed_resize_from_h",
    "seed_resize_from_w",
    "tiling",
    "scheduler",
)
"""get_i2i_p: the outer p's attributes handed to the inner img2img unchanged (sd_model is also passed; the host
ignores it, p.sd_model being shared.sd_model)."""

INNER_FIXED: dict[str, Any] = {
    "resize_mode": 0,
    "mask": None,
    "inpainting_fill": 1,
    "inpainting_mask_invert": 0,
    "prompt": "",
    "negative_prompt": "",
    "batch_size": 1,
    "n_iter": 1,
    "do_not_save_samples": True,
    "do_not_save_grid": True,
}
"""get_i2i_p: constants of the inner img2img (prompts are filled in per detection)."""


def _suffix(n: int) -> str:
    """Mirrors aaaaaa/ui.py (26.2.0) suffix: '' for the first tab, then ' 2nd', ' 3rd', ' 4th'..."""
    if n == 0:
        return ""
    k = n + 1
    end = "th" if 11 <= k % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f" {k}{end}"


def _tab(values: dict) -> dict[str, Any]:
    """Mirrors adetailer/args.py (26.2.0) ADetailerArgs(**values): defaults filled in; unknown keys are refused (the
    real model forbids extra fields too; the stand-in raises instead of skipping the tab, so a typo in a test shows)."""
    unknown = sorted(set(values) - set(TAB_DEFAULTS) - set(STANDIN_KEYS))
    if unknown:
        raise ValueError(f"ADetailer stand-in: unknown tab keys {unknown}")
    return {**TAB_DEFAULTS, **STANDIN_KEYS, **values}


def _skipped(tab: dict[str, Any]) -> bool:
    """Mirrors adetailer/args.py (26.2.0) ADetailerArgs.need_skip: no model chosen, or the tab switched off."""
    return tab["ad_model"] == "None" or tab["ad_tab_enable"] is False


def _tabs(args: tuple) -> list[dict[str, Any]]:
    """Mirrors scripts/!adetailer.py (26.2.0) AfterDetailerScript.get_args: the dict-valued script args are the tabs, in
    order."""
    tabs = [_tab(a) for a in args if isinstance(a, dict)]
    if not tabs:
        raise ValueError(f"ADetailer stand-in: no tab dicts in the script args {args!r}")
    return tabs


def _enabled(args: tuple) -> bool:
    """Mirrors scripts/!adetailer.py (26.2.0) AfterDetailerScript.is_ad_enabled: the accordion (args[0], when a bool)
    and one unskipped tab."""
    if not any(isinstance(a, dict) for a in args):
        return False
    switch = args[0] if isinstance(args[0], bool) else True
    return switch and not all(_skipped(t) for t in _tabs(args))


def image_index(p: Any) -> int:
    """Mirrors aaaaaa/p_method.py (26.2.0) get_i: the image's index over the whole job."""
    return p.iteration * p.batch_size + p.batch_index


def _first_image_of_batch(p: Any) -> bool:
    """Mirrors aaaaaa/p_method.py (26.2.0) need_call_postprocess: the batch's first image."""
    return p.scripts is not None and p.batch_index == 0


def _last_image_of_batch(p: Any) -> bool:
    """Mirrors aaaaaa/p_method.py (26.2.0) need_call_process: the batch's last image."""
    return p.scripts is not None and p.batch_index == p.batch_size - 1


@contextmanager
def _prompts_kept(p: Any) -> Iterator[None]:
    """Mirrors aaaaaa/helper.py (26.2.0) preserve_prompts: all_prompts / all_negative_prompts restored afterwards."""
    kept = copy(p.all_prompts), copy(p.all_negative_prompts)
    try:
        yield
    finally:
        p.all_prompts, p.all_negative_prompts = kept


def _cycled(values: list, i: int, fallback: Any) -> Any:
    """Mirrors scripts/!adetailer.py (26.2.0) get_seed / prompt_blank_replacement: the i-th value, wrapping around;
    `fallback` when the list is empty."""
    return values[i % len(values)] if values else fallback


def _ad_prompts(ad_prompt: str, outer: list, i: int, default: str) -> list[str]:
    """Mirrors scripts/!adetailer.py (26.2.0) AfterDetailerScript._get_prompt: one prompt per '[SEP]' part; an empty
    part is the outer image's prompt, '[PROMPT]' inside a part is replaced by it."""
    outer_prompt = _cycled(outer, i, default)
    parts = re.split(r"\s*\[SEP\]\s*", ad_prompt)
    return [part.replace("[PROMPT]", outer_prompt) if part else outer_prompt for part in parts]


def _image_rows(t: Any, p: Any) -> Any:
    """Stand-in only (no text encoder): the outer image's row of p.standin_cond, cut as the stand-in's setup_conds cuts
    it; stands in for encoding that image's prompt (an empty ad_prompt) again."""
    if isinstance(t, dict):
        return DictWithShape({key: _image_rows(value, p) for key, value in t.items()})
    if t.shape[0] == 1:
        return t
    row = p.batch_index if t.shape[0] == len(p.prompts) else image_index(p)
    return t[row : row + 1]


def _resized(latent: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Stand-in only (no VAE, no masks): [C, H, W] to [C, *size]; stands in for the inpaint-only-masked crop to p2's
    size and the paste back."""
    if tuple(latent.shape[-2:]) == size:
        return latent
    return torch.nn.functional.interpolate(latent[None], size=size, mode="nearest")[0]


class ADetailerStandin(scripts.Script):
    """Mirrors scripts/!adetailer.py (26.2.0): AfterDetailerScript, an always-on script titled 'ADetailer' whose args
    are [enable accordion, skip img2img, one dict per tab]."""

    def title(self) -> str:
        """Mirrors AfterDetailerScript.title (ADETAILER in adetailer/__init__.py)."""
        return "ADetailer"

    def show(self, is_img2img: bool) -> Any:
        """Mirrors AfterDetailerScript.show: always on, on both tabs."""
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list:
        """Mirrors aaaaaa/ui.py (26.2.0) adui: an InputAccordion (off), a 'Skip img2img' checkbox, one gr.State dict per
        tab (opts 'ad_max_models' tabs, 2 when unset)."""
        tab = "img2img" if is_img2img else "txt2img"
        with InputAccordion(False, label="ADetailer", elem_id=f"script_{tab}_adetailer_ad_main_accordion") as enable:
            skip = gr.Checkbox(value=False, label="Skip img2img", visible=is_img2img)
            states = [gr.State(dict(TAB_DEFAULTS)) for _ in range(shared.opts.data.get("ad_max_models", 2))]
        return [enable, skip, *states]

    def process(self, p: Any, *args: Any) -> None:
        """Mirrors scripts/!adetailer.py (26.2.0) AfterDetailerScript.process: off (or an inner p) marks p._ad_disabled;
        on, the tabs' infotext goes into p.extra_generation_params (the stand-in writes the model per tab and the
        version)."""
        if getattr(p, "_ad_disabled", False):
            return
        if not _enabled(args):
            p._ad_disabled = True
            return
        params = {f"ADetailer model{_suffix(n)}": t["ad_model"] for n, t in enumerate(_tabs(args)) if not _skipped(t)}
        p.extra_generation_params.update({**params, "ADetailer version": VERSION})

    def postprocess_image(self, p: Any, pp: Any, *args: Any) -> None:
        """Mirrors scripts/!adetailer.py (26.2.0) AfterDetailerScript.postprocess_image: outer postprocess at the
        batch's first image, the inner passes per tab, outer before_process + process again at the batch's last image.
        """
        if getattr(p, "_ad_disabled", False) or not _enabled(args):
            return
        tabs = _tabs(args)
        if _first_image_of_batch(p):
            with _prompts_kept(p):
                p.scripts.postprocess(copy(p), processing.Processed(p, [], p.seed, ""))
        for n, tab in enumerate(tabs):
            if not _skipped(tab):
                self.detail(p, pp, tab, n)
        if _last_image_of_batch(p):
            with _prompts_kept(p):
                outer_copy = copy(p)
                p.scripts.before_process(outer_copy)
                p.scripts.process(outer_copy)

    def detail(self, p: Any, pp: Any, tab: dict[str, Any], n: int) -> bool:
        """Mirrors scripts/!adetailer.py (26.2.0) AfterDetailerScript._postprocess_image_inner (+ fix_p2): one
        process_images per detection, each from a fresh copy of the tab's p2, chained through init_images; True when
        pp.image was replaced."""
        if shared.state.interrupted or shared.state.skipped:
            return False
        i = image_index(p)
        base = self.inner_p(p, tab, pp.image)
        prompts = _ad_prompts(tab["ad_prompt"], p.all_prompts, i, p.prompt)
        negatives = _ad_prompts(tab["ad_negative_prompt"], p.all_negative_prompts, i, p.negative_prompt)
        detections = tab["standin_detections"]
        if detections == 0:  # "nothing detected": ADetailer returns before building any p2 copy
            return False
        shared.state.job_count += detections
        seed, subseed = _cycled(p.all_seeds, i, p.seed), _cycled(p.all_subseeds, i, p.subseed)
        same_seed = shared.opts.data.get("ad_same_seed_for_each_tab", False)
        image_size = tuple(pp.image.shape[-2:])
        result = None
        p2 = copy(base)
        for j in range(detections):
            p2.prompt = prompts[min(j, len(prompts) - 1)]
            p2.negative_prompt = negatives[min(j, len(negatives) - 1)]
            p2.seed, p2.subseed = (seed, subseed) if same_seed else (seed + j, subseed + j)
            p2.cached_c, p2.cached_uc = [None, None], [None, None]
            p2.standin_init_latent = _resized(p2.init_images[0], (p2.height // 8, p2.width // 8))[None]
            try:
                processed = processing.process_images(p2)
            finally:
                p2.close()
            if not processed.images:
                result = None
                break
            result = _resized(processed.images[0], image_size)
            p2 = copy(base)
            p2.init_images = [result]
        if result is None:
            return False
        pp.image = result
        return True

    def inner_p(self, p: Any, tab: dict[str, Any], image: torch.Tensor) -> processing.StableDiffusionProcessingImg2Img:
        """Mirrors scripts/!adetailer.py (26.2.0) AfterDetailerScript.get_i2i_p: the tab's img2img p2 (see
        COPIED_FROM_OUTER and INNER_FIXED); the outer extra_generation_params without callables; the filtered runner and
        copied args."""
        i = image_index(p)
        own_size = tab["ad_use_inpaint_width_height"]
        p2 = processing.StableDiffusionProcessingImg2Img(
            **{name: getattr(p, name) for name in COPIED_FROM_OUTER},
            **INNER_FIXED,
            init_images=[image],
            denoising_strength=tab["ad_denoising_strength"],
            mask_blur=tab["ad_mask_blur"],
            inpaint_full_res=tab["ad_inpaint_only_masked"],
            inpaint_full_res_padding=tab["ad_inpaint_only_masked_padding"],
            initial_noise_multiplier=tab["ad_noise_multiplier"] if tab["ad_use_noise_multiplier"] else None,
            sd_model=p.sd_model,
            seed=_cycled(p.all_seeds, i, p.seed),
            subseed=_cycled(p.all_subseeds, i, p.subseed),
            sampler_name=p.sampler_name,
            steps=tab["ad_steps"] if tab["ad_use_steps"] else p.steps,
            cfg_scale=tab["ad_cfg_scale"] if tab["ad_use_cfg_scale"] else p.cfg_scale,
            width=tab["ad_inpaint_width"] if own_size else p.width,
            height=tab["ad_inpaint_height"] if own_size else p.height,
            restore_faces=tab["ad_restore_face"],
            extra_generation_params={k: v for k, v in p.extra_generation_params.items() if not callable(v)},
            override_settings=self.override_settings(tab),
        )
        p2.cached_c, p2.cached_uc = [None, None], [None, None]
        p2.standin_cond = _image_rows(p.standin_cond, p) if tab["standin_cond"] is None else tab["standin_cond"]
        p2.standin_uncond = _image_rows(p.standin_uncond, p) if tab["standin_uncond"] is None else tab["standin_uncond"]
        p2.scripts, p2.script_args = self.inner_scripts(p, tab)
        p2._ad_disabled = True
        p2._ad_inner = True
        return p2

    @staticmethod
    def override_settings(tab: dict[str, Any]) -> dict[str, Any]:
        """Mirrors scripts/!adetailer.py (26.2.0) AfterDetailerScript.get_override_settings (clip skip and checkpoint;
        VAE left out)."""
        settings: dict[str, Any] = {}
        if tab["ad_use_clip_skip"]:
            settings["CLIP_stop_at_last_layers"] = tab["ad_clip_skip"]
        if tab["ad_use_checkpoint"] and tab["ad_checkpoint"] not in (None, "", "None", "Use same checkpoint"):
            settings["sd_model_checkpoint"] = tab["ad_checkpoint"]
        return settings

    @staticmethod
    def inner_scripts(p: Any, tab: dict[str, Any]) -> tuple[scripts.ScriptRunner, Any]:
        """Mirrors scripts/!adetailer.py (26.2.0) AfterDetailerScript.script_filter and script_args_copy: a shallow copy
        of the outer runner (the same Script objects) keeping only always-on scripts whose file stem is allowed — opts
        'ad_script_names' (default SCRIPT_DEFAULT, names also tried stripped) + BUILTIN_SCRIPT, + 'controlnet' when the
        tab names a ControlNet model; all of them when opts 'ad_only_selected_scripts' is False. The args are the outer
        p.script_args with each element copied (same positions, so every script reads its own UI values)."""

        def copied(arg: Any) -> Any:
            try:
                return copy(arg)
            except TypeError:
                return arg

        runner = copy(p.scripts)
        args = type(p.script_args)(copied(a) for a in p.script_args)
        if not shared.opts.data.get("ad_only_selected_scripts", True):
            return runner, args
        names = shared.opts.data.get("ad_script_names", SCRIPT_DEFAULT).split(",") + BUILTIN_SCRIPT.split(",")
        allowed = {variant for name in names for variant in (name, name.strip())}
        if tab["ad_controlnet_model"] != "None":
            allowed.add("controlnet")
        runner.alwayson_scripts = [s for s in runner.alwayson_scripts if Path(s.filename).stem in allowed]
        return runner, args
