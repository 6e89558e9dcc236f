"""Smoke tests for the A1111 1.10 host stand-in under tests/a1111 (driven with a trivial always-on script)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

A1111 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "a1111")
if A1111 not in sys.path:
    sys.path.insert(0, A1111)

import standin  # noqa: E402
from modules import errors, img2img, infotext_utils, processing, script_callbacks, scripts, sd_models, shared  # noqa: E402
from modules import txt2img as txt2img_mod  # noqa: E402
from modules.api import api  # noqa: E402

RECORDER = """
import gradio as gr
from modules import scripts, script_callbacks
from modules.ui_components import InputAccordion

CALLS = []


def _on_cfg(params):
    CALLS.append(("cfg", params.sampling_step, params.total_sampling_steps, tuple(params.x.shape)))


script_callbacks.on_cfg_denoiser(_on_cfg)


class Recorder(scripts.Script):
    def title(self):
        return "Recorder"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with InputAccordion(False, label="Recorder", elem_id=self.elem_id("enable")) as enable:
            strength = gr.Slider(minimum=0.0, maximum=2.0, value=0.5, step=0.05, label="Strength",
                                 elem_id=self.elem_id("strength"))
            mode = gr.Dropdown(choices=["a", "b, c"], value="a", label="Mode", elem_id=self.elem_id("mode"))
        self.infotext_fields = [(enable, lambda d: "Recorder strength" in d), (strength, "Recorder strength"),
                                (mode, "Recorder mode")]
        return [enable, strength, mode]

    def before_process(self, p, enable, strength, mode):
        CALLS.append(("before_process", enable, strength, mode))

    def process(self, p, enable, strength, mode):
        CALLS.append(("process",))
        if enable:
            p.extra_generation_params["Recorder strength"] = strength
            p.extra_generation_params["Recorder mode"] = mode

    def before_process_batch(self, p, *args, **kwargs):
        CALLS.append(("before_process_batch", kwargs["batch_number"]))

    def process_batch(self, p, *args, **kwargs):
        CALLS.append(("process_batch", kwargs["batch_number"]))

    def process_before_every_sampling(self, p, *args, **kwargs):
        CALLS.append(("pbes", tuple(sorted(kwargs)), tuple(kwargs["x"].shape), id(p.sd_model)))

    def before_hr(self, p, *args):
        CALLS.append(("before_hr", id(p.sd_model)))

    def postprocess_batch(self, p, *args, **kwargs):
        CALLS.append(("postprocess_batch", tuple(kwargs["images"].shape)))

    def postprocess_image(self, p, pp, *args):
        CALLS.append(("postprocess_image",))

    def postprocess(self, p, processed, *args):
        CALLS.append(("postprocess", len(processed.images)))
"""


@pytest.fixture()
def env(tmp_path: Path):
    standin.reset(models_path=str(tmp_path / "models"))
    ext = tmp_path / "ext"
    (ext / "scripts").mkdir(parents=True)
    (ext / "scripts" / "recorder.py").write_text(textwrap.dedent(RECORDER))
    module = standin.load_script(str(ext / "scripts" / "recorder.py"), str(ext))
    xyz = standin.load_xyz()
    standin.register_model("main", standin.tiny_unet(0), load=True)
    standin.register_model("other", standin.tiny_unet(1))
    standin.build_runners()
    yield module, xyz
    standin.reset()


def make_txt2img(**kw) -> processing.StableDiffusionProcessingTxt2Img:
    p = processing.StableDiffusionProcessingTxt2Img(
        prompt="a cat", negative_prompt="blurry", seed=123, steps=3, width=64, height=64, cfg_scale=5.0, **kw
    )
    g = torch.Generator().manual_seed(7)
    p.standin_cond = torch.randn(1, 5, 64, generator=g)
    p.standin_uncond = torch.randn(1, 5, 64, generator=g)
    return p


def args_enabled(strength: float = 0.75) -> list:
    return standin.ui_args(scripts.scripts_txt2img, overrides={"recorder": {0: True, 1: strength}})


def names(module) -> list[str]:
    return [c[0] for c in module.CALLS]


def test_ui_layout_and_defaults(env):
    runner = scripts.scripts_txt2img
    rec = runner.script("Recorder")
    assert rec is not None and rec.alwayson and rec.name == "recorder"
    assert (rec.args_from, rec.args_to) == (1, 4)
    import gradio as gr

    assert gr.find_by_elem_id("script_txt2img_recorder_enable-checkbox").visible is False
    assert gr.find_by_elem_id("script_txt2img_recorder_enable").open is False
    defaults = api.init_default_script_args(runner)
    assert defaults[0] == 0 and defaults[1:4] == [False, 0.5, "a"]


def test_txt2img_order_and_infotext(env):
    module, _ = env
    p = make_txt2img()
    processed = txt2img_mod.txt2img(p, *args_enabled())
    assert names(module)[:4] == ["before_process", "process", "before_process_batch", "process_batch"]
    pbes = [c for c in module.CALLS if c[0] == "pbes"]
    assert pbes[0][1] == ("c", "noise", "uc", "x")
    cfg = [c for c in module.CALLS if c[0] == "cfg"]
    assert [c[1] for c in cfg] == [0, 0, 1] and all(c[2] == 3 for c in cfg) and cfg[0][3] == (2, 4, 8, 8)
    assert names(module)[-3:] == ["postprocess_batch", "postprocess_image", "postprocess"]
    assert "Recorder strength: 0.75, Recorder mode: a" in processed.info
    assert p.sampler is None and p.c is None  # closed by closing(p)
    again = txt2img_mod.txt2img(make_txt2img(), *args_enabled())
    assert torch.equal(processed.images[0], again.images[0])


def test_split_calls_and_skip_uncond(env):
    p = make_txt2img()
    sampler_calls = []
    orig = processing.StandinSampler.launch_sampling

    def spy(self, *a, **k):
        out = orig(self, *a, **k)
        sampler_calls.append(list(self.model_wrap_cfg.model_calls))
        return out

    processing.StandinSampler.launch_sampling = spy
    try:
        shared.opts.batch_cond_uncond = False
        txt2img_mod.txt2img(p, *args_enabled())
        shared.opts.batch_cond_uncond = True
        shared.opts.skip_early_cond = 0.5
        txt2img_mod.txt2img(make_txt2img(), *args_enabled())
    finally:
        processing.StandinSampler.launch_sampling = orig
    assert sampler_calls[0] == [1, 1, 1, 1, 1, 1]
    assert sampler_calls[1] == [1, 1, 2]


def test_hires_and_checkpoint_swap(env):
    module, _ = env
    p = make_txt2img(enable_hr=True, hr_scale=2.0, hr_second_pass_steps=2)
    processed = txt2img_mod.txt2img(p, *args_enabled())
    pbes = [c for c in module.CALLS if c[0] == "pbes"]
    assert [c[2] for c in pbes] == [(1, 4, 8, 8), (1, 4, 16, 16)]
    order = names(module)
    assert order.index("before_hr") < len(order) - 1 - order[::-1].index("pbes")
    assert processed.images[0].shape == (4, 16, 16)
    assert "Hires upscale: 2.0" in processed.info

    module.CALLS.clear()
    main = shared.sd_model
    p = make_txt2img(enable_hr=True, hr_checkpoint_name="other")
    processed = txt2img_mod.txt2img(p, *args_enabled())
    pbes = [c for c in module.CALLS if c[0] == "pbes"]
    assert pbes[0][3] == id(main) and pbes[1][3] == id(sd_models.checkpoints_stand_in["other"])
    assert next(c for c in module.CALLS if c[0] == "before_hr")[1] == pbes[1][3]
    assert "Hires checkpoint: other" in processed.info
    assert shared.sd_model is sd_models.checkpoints_stand_in["other"]  # host leaves it loaded until the next job
    txt2img_mod.txt2img(make_txt2img(), *args_enabled())
    assert shared.sd_model is main

    with pytest.raises(Exception, match="Could not find checkpoint"):
        txt2img_mod.txt2img(make_txt2img(enable_hr=True, hr_checkpoint_name="missing"), *args_enabled())


def test_img2img(env):
    module, _ = env
    p = processing.StableDiffusionProcessingImg2Img(
        prompt="x", seed=5, steps=4, width=64, height=64, denoising_strength=0.5
    )
    p.standin_cond = torch.zeros(1, 5, 64)
    p.standin_uncond = torch.ones(1, 5, 64)
    p.standin_init_latent = torch.zeros(1, 4, 8, 8)
    args = standin.ui_args(scripts.scripts_img2img, overrides={"recorder": {0: True}})
    processed = img2img.img2img(p, *args)
    cfg = [c for c in module.CALLS if c[0] == "cfg"]
    assert len(cfg) == 3 and cfg[0][2] == 3  # t_enc = int(0.5 * 4) = 2 -> 3 steps
    assert "Denoising strength: 0.5" in processed.info


def test_failed_sampling_closes_p_and_skips_postprocess(env):
    module, _ = env
    p = make_txt2img()
    p._standin_fail_in_sampling = True
    closed = []
    orig_close = p.close
    p.close = lambda: (closed.append(True), orig_close())  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        txt2img_mod.txt2img(p, *args_enabled())
    assert closed == [True]
    assert "postprocess" not in names(module)


def test_script_errors_are_swallowed(env):
    module, _ = env
    rec = scripts.scripts_txt2img.script("Recorder")

    def boom(*a, **k):
        raise ValueError("boom")

    rec.process = boom
    txt2img_mod.txt2img(make_txt2img(), *args_enabled())
    assert any("Error running process" in r for r in errors.reported)
    assert "postprocess" in names(module)


def test_infotext_round_trip(env):
    runner = scripts.scripts_txt2img
    p = make_txt2img()
    processed = txt2img_mod.txt2img(p, *standin.ui_args(runner, overrides={"recorder": {0: True, 1: 1.25, 2: "b, c"}}))
    assert 'Recorder mode: "b, c"' in processed.info
    params = infotext_utils.parse_generation_parameters(processed.info)
    assert params["Recorder strength"] == "1.25" and params["Recorder mode"] == "b, c"
    assert params["Prompt"] == "a cat" and params["Negative prompt"] == "blurry"
    seen = []
    script_callbacks.on_infotext_pasted(lambda text, d: seen.append(dict(d)))
    fields = runner.script("Recorder").infotext_fields
    assert infotext_utils.apply_paste(processed.info, fields) == [True, 1.25, "b, c"]
    assert seen and seen[0]["Recorder strength"] == "1.25"
    assert infotext_utils.apply_paste("just a prompt\nSteps: 3, Seed: 1, Size: 64x64", fields) == [False, 1.25, "b, c"]


def test_xyz_apply(env):
    module, xyz = env
    assert any(d.script_class.__module__ == "xyz_grid.py" and d.module is xyz for d in scripts.scripts_data)
    seen = []
    xyz.axis_options.append(
        xyz.AxisOption(
            "[Recorder] Strength", float, lambda p, x, xs: (seen.append(x), setattr(p, "recorder_strength", x))
        )
    )
    p = make_txt2img()
    standin.build_runners()
    runner = scripts.scripts_txt2img
    xyz_script = runner.selectable_scripts[0]
    x_type = [o.label for o in xyz_script.current_axis_options].index("[Recorder] Strength")
    overrides = {"recorder": {0: True}, "x/y/z plot": {0: x_type, 1: "0.1, 0.2"}}
    args = standin.ui_args(runner, selected=1, overrides=overrides)
    processed = txt2img_mod.txt2img(p, *args)
    assert seen == [0.1, 0.2] and len(processed.images) == 2
    assert names(module).count("before_process") == 2 and not hasattr(p, "recorder_strength")


def test_api_args(env):
    runner = scripts.scripts_txt2img
    defaults = api.init_default_script_args(runner)
    assert api.init_script_args({"recorder": {"args": [True]}}, defaults, runner)[1:4] == [True, 0.5, "a"]
    assert api.init_script_args({"ReCorder": {"args": [True, 1.5, "b, c", 99]}}, defaults, runner)[1:4] == [
        True,
        1.5,
        "b, c",
    ]
    assert api.init_script_args({"recorder": {"args": {}}}, defaults, runner) == defaults
    with pytest.raises(KeyError):
        api.init_script_args({"recorder": {"args": {"0": True}}}, defaults, runner)
    with pytest.raises(api.HTTPException):
        api.init_script_args({"nope": {"args": []}}, defaults, runner)
    processed = api.text2imgapi(make_txt2img(), {"Recorder": {"args": [True, 0.25]}}, defaults)
    assert "Recorder strength: 0.25" in processed.info
