"""Smoke tests for the ADetailer 26.2.0 inner-pass stand-in (tests/a1111/adetailer_standin.py), without VMix: two
recording always-on scripts, one in ADetailer's allowed list ('recorder') and one not ('bystander')."""

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

import adetailer_standin  # noqa: E402
import standin  # noqa: E402
from modules import errors, processing, scripts, sd_models, shared  # noqa: E402
from modules import txt2img as txt2img_mod  # noqa: E402
from modules.prompt_parser import DictWithShape  # noqa: E402
from test_a1111_standin import make_txt2img  # noqa: E402  (prompt 'a cat', seed 123, 3 steps, 64x64)

ADETAILER = os.path.join(A1111, "adetailer_standin.py")
FACE = {"ad_model": "face_yolov8n.pt"}

RECORDER = """
import gradio as gr
from modules import scripts

CALLS = []


def inner(p):
    return getattr(p, "_ad_inner", False)


class Recorder(scripts.Script):
    def title(self):
        return "TITLE"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Checkbox(value=False, label="on"), gr.Slider(minimum=0.0, maximum=2.0, value=0.5, label="s")]

    def setup(self, p, on, strength):
        CALLS.append(("setup", inner(p), type(p).__name__))

    def before_process(self, p, on, strength):
        CALLS.append(("before_process", inner(p)))

    def process(self, p, on, strength):
        CALLS.append(("process", inner(p), type(p).__name__, p.seed, strength, sorted(p.extra_generation_params)))
        if inner(p):
            p.extra_generation_params["TITLE inner"] = True
        else:
            p.extra_generation_params["TITLE strength"] = strength
            p.extra_generation_params["TITLE lazy"] = lambda **kw: "lazy"

    def before_process_batch(self, p, *args, **kwargs):
        CALLS.append(("before_process_batch", inner(p)))

    def process_batch(self, p, *args, **kwargs):
        CALLS.append(("process_batch", inner(p)))

    def process_before_every_sampling(self, p, *args, **kwargs):
        CALLS.append(("pbes", inner(p), tuple(kwargs["x"].shape), id(p.sd_model)))

    def before_hr(self, p, *args):
        CALLS.append(("before_hr", inner(p)))

    def postprocess_batch(self, p, *args, **kwargs):
        CALLS.append(("postprocess_batch", inner(p)))

    def postprocess_image(self, p, pp, *args):
        CALLS.append(("postprocess_image", inner(p)))

    def postprocess(self, p, processed, *args):
        CALLS.append(("postprocess", inner(p), len(processed.images)))
"""

OUTER_START = ["setup", "before_process", "process", "before_process_batch", "process_batch", "pbes"]
INNER_PASS = [*OUTER_START, "postprocess_batch", "postprocess_image", "postprocess"]


@pytest.fixture()
def env(tmp_path: Path):
    standin.reset(models_path=str(tmp_path / "models"))
    ext = tmp_path / "ext"
    (ext / "scripts").mkdir(parents=True)
    modules = {}
    standin.load_script(ADETAILER)  # the host sorts extension 'adetailer' (and its '!adetailer.py') first
    for name in ("recorder", "bystander"):
        path = ext / "scripts" / f"{name}.py"
        path.write_text(textwrap.dedent(RECORDER).replace("TITLE", name.capitalize()))
        modules[name] = standin.load_script(str(path), str(ext))
    standin.register_model("main", standin.tiny_unet(0), load=True)
    standin.register_model("other", standin.tiny_unet(1))
    standin.build_runners()
    shared.opts.data["ad_script_names"] = "recorder"
    yield modules["recorder"], modules["bystander"]
    standin.reset()


def run(p, enabled: bool = True, tab: dict | None = None) -> processing.Processed:
    overrides = {"adetailer": {0: enabled, 2: dict(tab or FACE)}, "recorder": {0: True, 1: 0.75}}
    return txt2img_mod.txt2img(p, *standin.ui_args(scripts.scripts_txt2img, overrides=overrides))


def calls(module, name: str | None = None, inner: bool | None = None) -> list:
    return [c for c in module.CALLS if (name is None or c[0] == name) and (inner is None or c[1] == inner)]


def names(module) -> list[str]:
    return [c[0] if not c[1] else f"inner {c[0]}" for c in module.CALLS]


def test_inner_pass_in_postprocess_image_with_the_filtered_scripts(env):
    recorder, bystander = env
    processed = run(make_txt2img())
    # p2.scripts/script_args are set (running setup) before ADetailer marks p2._ad_inner: setup can't tell.
    inner_pass = ["setup", *[f"inner {n}" for n in INNER_PASS[1:]]]
    after_sampling = ["postprocess_batch", "postprocess"]  # then ADetailer's inner pass, then its re-arm
    rearm_and_end = ["before_process", "process", "postprocess_image", "postprocess"]
    assert names(recorder) == [*OUTER_START, *after_sampling, *inner_pass, *rearm_and_end]
    assert names(bystander) == [*OUTER_START, *after_sampling, *rearm_and_end]
    assert [c[2][-7:] for c in calls(recorder, "setup")] == ["Txt2Img", "Img2Img"]
    assert [c[2] for c in calls(recorder, "postprocess")] == [0, 1, 1]  # ADetailer's dummy Processed has no images
    _, _, kind, seed, strength, params = calls(recorder, "process", inner=True)[0]
    assert (kind, seed, strength) == ("StableDiffusionProcessingImg2Img", 123, 0.75)  # the outer UI args
    assert params == ["ADetailer model", "ADetailer version", "Bystander strength", "Recorder strength"]  # no lazy
    assert "ADetailer model: face_yolov8n.pt, ADetailer version: 26.2.0" in processed.info
    assert "Recorder inner" not in processed.info and processed.images[0].shape == (4, 8, 8)


def img2img_of(image: torch.Tensor, seed: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """What the inner pass should compute: a plain stand-in img2img of `image` at ADetailer's defaults."""
    p = processing.StableDiffusionProcessingImg2Img(
        prompt="a cat", negative_prompt="blurry", seed=seed, steps=3, width=64, height=64, cfg_scale=5.0
    )
    p.denoising_strength = 0.4  # ad_denoising_strength's default
    p.standin_cond, p.standin_uncond, p.standin_init_latent = cond, uncond, image[None]
    return processing.process_images(p).images[0]


def test_result_is_an_img2img_of_the_image(env):
    plain = run(make_txt2img(), enabled=False).images[0]
    detailed = run(make_txt2img()).images[0]
    p = make_txt2img()
    assert not torch.equal(detailed, plain)
    assert torch.equal(detailed, img2img_of(plain, 123, p.standin_cond, p.standin_uncond))


def test_each_image_of_a_batch_gets_its_own_seed_and_cond_rows(env):
    def batch():
        p = make_txt2img(batch_size=2)
        p.standin_cond = torch.cat([p.standin_cond, -p.standin_cond])
        return p

    plain = run(batch(), enabled=False).images
    detailed = run(batch()).images
    conds, uncond = batch().standin_cond, batch().standin_uncond
    for i in range(2):
        assert torch.equal(detailed[i], img2img_of(plain[i], 123 + i, conds[i : i + 1], uncond))

    p = batch()
    p.batch_index, p.iteration, p.prompts = 1, 0, ["a", "b"]
    sdxl = DictWithShape({"crossattn": torch.arange(6.0).view(2, 3, 1), "vector": torch.arange(2.0).view(2, 1)})
    rows = adetailer_standin._image_rows(sdxl, p)
    assert isinstance(rows, DictWithShape) and rows["crossattn"].flatten().tolist() == [3.0, 4.0, 5.0]
    assert rows["vector"].tolist() == [[1.0]]


@pytest.mark.parametrize(
    ("enabled", "tab"), [(False, FACE), (True, {"ad_model": "None"}), (True, {**FACE, "ad_tab_enable": False})]
)
def test_off_changes_nothing(env, enabled, tab):
    recorder, _ = env
    plain = run(make_txt2img(), enabled=False)
    p = make_txt2img()
    processed = run(p, enabled=enabled, tab=tab)
    assert torch.equal(processed.images[0], plain.images[0]) and p._ad_disabled is True
    assert not calls(recorder, inner=True) and len(calls(recorder, "process")) == 2  # one per run, no re-arm
    assert "ADetailer" not in processed.info


def test_allowed_names(env):
    recorder, bystander = env
    shared.opts.data["ad_script_names"] = " recorder, bystander"  # names are also tried stripped
    run(make_txt2img())
    assert calls(bystander, "process", inner=True)
    recorder.CALLS.clear()
    bystander.CALLS.clear()
    shared.opts.data["ad_script_names"] = "nothing"
    shared.opts.data["ad_only_selected_scripts"] = False
    run(make_txt2img())
    assert calls(recorder, "process", inner=True) and calls(bystander, "process", inner=True)


@pytest.mark.parametrize(("n_iter", "batch_size"), [(2, 1), (1, 2)])
def test_batches(env, n_iter, batch_size):
    recorder, _ = env
    processed = run(make_txt2img(n_iter=n_iter, batch_size=batch_size))
    assert len(processed.images) == 2
    assert [c[3] for c in calls(recorder, "process", inner=True)] == [123, 124]  # the image's own seed
    seen = [n for n in names(recorder) if n in ("process", "postprocess", "inner process", "inner postprocess")]
    inner = ["inner process", "inner postprocess"]
    if n_iter == 2:  # each image is a batch of its own: dummy postprocess, inner pass, re-arm, twice
        middle = ["postprocess", *inner, "process"] * 2
    else:  # dummy postprocess before the batch's first image, re-arm after its last
        middle = ["postprocess", *inner * 2, "process"]
    assert seen == ["process", *middle, "postprocess"]


def test_hires_fix_then_adetailer(env):
    recorder, _ = env
    main, other = shared.sd_model, sd_models.checkpoints_stand_in["other"]
    processed = run(make_txt2img(enable_hr=True, hr_scale=2.0, hr_checkpoint_name="other"))
    pbes = calls(recorder, "pbes")
    assert [(c[1], c[2], c[3]) for c in pbes] == [
        (False, (1, 4, 8, 8), id(main)),
        (False, (1, 4, 16, 16), id(other)),  # the hires pass
        (True, (1, 4, 8, 8), id(main)),  # the inner pass: p.width x p.height, the opts checkpoint reloaded
    ]
    assert names(recorder).index("before_hr") < names(recorder).index("inner before_process")
    assert processed.images[0].shape == (4, 16, 16)  # pasted back at the image's size


def test_detections_seeds_and_checkpoint(env):
    recorder, _ = env
    tab = {**FACE, "standin_detections": 2, "ad_use_checkpoint": True, "ad_checkpoint": "other"}
    run(make_txt2img(), tab=tab)
    assert [c[3] for c in calls(recorder, "process", inner=True)] == [123, 124]  # seed + detection index
    assert len(calls(recorder, "setup")) == 2  # outer p, then one p2 per tab and image, copied per detection
    other = id(sd_models.checkpoints_stand_in["other"])
    assert [c[3] for c in calls(recorder, "pbes", inner=True)] == [other, other]
    assert shared.opts.sd_model_checkpoint == "main"  # override_settings restored after each inner pass

    recorder.CALLS.clear()
    run(make_txt2img(), tab={**FACE, "standin_detections": 0})
    assert not calls(recorder, inner=True)
    assert [c[0] for c in recorder.CALLS].count("process") == 2  # nothing found: still the re-arm


def test_unknown_tab_key_is_reported(env):
    run(make_txt2img(), tab={**FACE, "ad_modle": "x"})
    assert any("unknown tab keys ['ad_modle']" in r for r in errors.reported)
