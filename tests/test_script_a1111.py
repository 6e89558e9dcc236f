"""scripts/vmix.py driven through the A1111 1.10 stand-in: txt2img, hires fix, img2img, infotext, X/Y/Z, API,
and the visible-failure path."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import literal_eq9_unet, random_adapter, tiny_unet
from tiny_checkpoint import SDXL_UNET_PARAMS, TinyLdmModel, original_config, write_dataset, write_tokenizer

A1111 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "a1111")
if A1111 not in sys.path:
    sys.path.insert(0, A1111)

import gradio as gr  # noqa: E402  (the stand-in under tests/a1111)
import standin  # noqa: E402
from modules import errors, infotext_utils, processing, script_callbacks, scripts, shared  # noqa: E402
from modules import img2img as img2img_mod  # noqa: E402
from modules import txt2img as txt2img_mod  # noqa: E402
from modules.api import api  # noqa: E402
from modules.prompt_parser import DictWithShape  # noqa: E402

from vmix_ext.adapter import Dimension, VMixAdapter  # noqa: E402
from vmix_ext.hooks import has_vmix_hooks  # noqa: E402
from vmix_ext.settings import VMixSettings  # noqa: E402
from vmix_ext.weights import load_adapter, save_adapter  # noqa: E402
from vmix_train.checkpoint import load_single_file  # noqa: E402
from vmix_train.config import RunConfig, TrainingOptions  # noqa: E402
from vmix_train.dataset import load_dataset  # noqa: E402
from vmix_train.loop import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 768
# One UNet call matches Eq. 9 within 1e-5 (test_eq9.py); 4 sampling steps at CFG 5 amplify fp32 rounding.
PIPELINE_TOL = {"atol": 5e-4, "rtol": 1e-4}
FIELDS = VMixSettings.field_names()  # the API's positional order; the UI adds the strength sliders after them
SLIDERS = 8


class Host:
    """One fresh stand-in web UI with the VMix script loaded and two SD1-width checkpoints."""

    def __init__(
        self, tmp_path: Path, width: int = WIDTH, depth: int = 1, scripts_before: tuple[str, ...] = ()
    ) -> None:
        standin.reset(models_path=str(tmp_path / "models"))
        self.folder = tmp_path / "models" / "VMix"
        self.folder.mkdir(parents=True)
        self.width = width
        self.main_unet = tiny_unet(width, depth=depth, seed=0)
        self.other_unet = tiny_unet(width, depth=depth, seed=1)
        self.film = random_adapter(self.main_unet, seed=11)
        save_adapter(self.film, self.folder / "film.safetensors")
        for path in scripts_before:  # other extensions' scripts, loaded first as the host orders them
            standin.load_script(path)
        self.module = standin.load_script(str(ROOT / "scripts" / "vmix.py"), str(ROOT))
        self.xyz = standin.load_xyz()
        script_callbacks.before_ui_callback()
        standin.register_model("main", self.main_unet, load=True)
        standin.register_model("other", self.other_unet)
        standin.build_runners()

    def args(self, runner: scripts.ScriptRunner | None = None, **values) -> list:
        runner = runner or scripts.scripts_txt2img
        positions = {FIELDS.index(k): v for k, v in values.items()}
        return standin.ui_args(runner, overrides={"vmix": positions})

    def txt2img(self, **values):
        p = make_p(width=self.width, **values.pop("p", {}))
        return p, txt2img_mod.txt2img(p, *self.args(**values))

    def load(self, title: str) -> None:
        shared.opts.sd_model_checkpoint = title
        shared.sd_model = standin.sd_models.checkpoints_stand_in[title]

    def all_unets_clean(self) -> bool:
        return not has_vmix_hooks(self.main_unet) and not has_vmix_hooks(self.other_unet)


def make_p(cls=processing.StableDiffusionProcessingTxt2Img, tokens: int = 77, width: int = WIDTH, **kw):
    p = cls(prompt="a cat", negative_prompt="blurry", seed=123, steps=4, width=64, height=64, cfg_scale=5.0, **kw)
    g = torch.Generator().manual_seed(7)
    p.standin_cond = torch.randn(1, tokens, width, generator=g)
    p.standin_uncond = torch.randn(1, tokens, width, generator=g)
    return p


@pytest.fixture()
def host(tmp_path):
    yield Host(tmp_path)
    standin.reset()


def reference_latent(host: Host, strengths=None, scale: float = 1.0, blocks=(1.0, 1.0, 1.0), **p_kw):
    """The same generation with VMix off, on a copy of the UNet that computes Eq. 9 literally."""
    reference = literal_eq9_unet(host.main_unet, host.film, strengths, scale, blocks=blocks)
    standin.register_model("reference", reference)
    host.load("reference")
    try:
        p = make_p(width=host.width, **p_kw)
        return txt2img_mod.txt2img(p, *host.args(enabled=False)).images[0]
    finally:
        host.load("main")


def test_ui_controls_and_defaults(host):
    runner = scripts.scripts_txt2img
    script = runner.script("VMix")
    assert script.args_to - script.args_from == len(FIELDS) + SLIDERS
    assert gr.find_by_elem_id("txt2img_vmix_enabled").open is False
    assert gr.find_by_elem_id("txt2img_vmix_enabled-checkbox").value is False
    adapter = gr.find_by_elem_id("txt2img_vmix_adapter")
    assert adapter.choices == ["", "film"] and adapter.value == "film"
    slider = gr.find_by_elem_id("txt2img_vmix_scale")
    assert (slider.minimum, slider.maximum, slider.step, slider.value) == (0.0, 2.0, 0.05, 1.0)
    dims = gr.find_by_elem_id("txt2img_vmix_dimensions")
    assert dims.choices == ["color", "lighting", "focus"] and dims.value == ["color", "lighting", "focus"]
    assert "SD 1.x, 3 dimensions" in gr.find_by_elem_id("txt2img_vmix_status").value
    assert gr.find_by_elem_id("img2img_vmix_scale") is not None
    defaults = api.init_default_script_args(runner)
    assert defaults[script.args_from : script.args_to] == [
        False,
        "film",
        1.0,
        ["color", "lighting", "focus"],
        False,
        0.0,
        1.0,
        1.0,
        1.0,
        1.0,
        "both",
        -1.0,
        *[1.0] * SLIDERS,
    ]


def test_dimension_list_follows_the_chosen_adapter(host):
    other = random_adapter(host.main_unet, seed=3)
    first, *rest = other.dimensions
    other.dimensions = (first, *(Dimension(f"{d.name}2", d.positive, d.negative) for d in rest))
    save_adapter(other, host.folder / "second.safetensors")
    adapter = gr.find_by_elem_id("txt2img_vmix_adapter")
    _, fn, _, _outputs = next(listener for listener in adapter.listeners if listener[0] == "change")
    # The user switches adapters: the new adapter's dimensions, all on.
    dims_update, status, previous, *sliders = fn("second", ["color", "lighting", "focus"], "film")
    assert dims_update["choices"] == ["color", "lighting2", "focus2"] and dims_update["value"] == dims_update["choices"]
    assert "3 dimensions" in status and previous == "second"
    # One strength slider per dimension, labelled with it and back at 1; the rest of the pool hidden.
    assert len(sliders) == SLIDERS
    assert [u["label"] for u in sliders[:3]] == ["Strength of color", "Strength of lighting2", "Strength of focus2"]
    assert all(u["visible"] and u["value"] == 1.0 for u in sliders[:3])
    assert all(not u["visible"] for u in sliders[3:])
    kept = fn("second", ["lighting2"], "film")[3:]
    assert "value" not in kept[1], "dimensions copied with the adapter keep their copied strengths"
    # "Send to img2img" copies adapter and dimensions together, without the paste step: the copied ones stay.
    assert fn("second", ["lighting2", "color:0.5"], "film")[0]["value"] == ["lighting2", "color:0.5"]
    # None at all stays none (pasted "VMix dims: none"), unless there was no adapter before.
    assert fn("second", [], "film")[0]["value"] == []
    assert fn("second", [], "")[0]["value"] == ["color", "lighting2", "focus2"]
    refresh = gr.find_by_elem_id("txt2img_vmix_refresh")
    adapter_update, *_ = refresh.listeners[0][1]("film")
    assert adapter_update["choices"] == ["", "film", "second"]


def test_txt2img_matches_literal_eq9_and_leaves_nothing(host):
    _, baseline = host.txt2img(enabled=False)
    _p, mixed = host.txt2img(enabled=True, scale=0.5, dimensions=["color", "focus"])
    expected = reference_latent(host, {"color": 1.0, "lighting": 0.0, "focus": 1.0}, scale=0.5)
    torch.testing.assert_close(mixed.images[0], expected, **PIPELINE_TOL)
    assert (mixed.images[0] - baseline.images[0]).abs().max() > 1e-3
    assert host.all_unets_clean()
    assert host.module.generation.run_of(_p) is None
    _, after = host.txt2img(enabled=False)
    assert torch.equal(after.images[0], baseline.images[0])
    assert not errors.reported


@pytest.mark.parametrize("width", [2048, 1280], ids=["sdxl", "refiner"])
def test_sdxl_shaped_models_with_two_blocks_per_layer_match_literal_eq9(tmp_path, width):
    """SDXL base and refiner widths, two transformer blocks per layer (…transformer_blocks.1.attn2), run as sgm does."""
    host = Host(tmp_path, width=width, depth=2)
    try:
        assert any(".transformer_blocks.1." in path for path in host.film.layer_paths)
        _, baseline = host.txt2img(enabled=False)
        _, mixed = host.txt2img(enabled=True, scale=0.8, dimensions=["lighting"])
        expected = reference_latent(host, {"color": 0.0, "lighting": 1.0, "focus": 0.0}, scale=0.8)
        torch.testing.assert_close(mixed.images[0], expected, **PIPELINE_TOL)
        assert (mixed.images[0] - baseline.images[0]).abs().max() > 1e-3
        assert host.all_unets_clean() and not errors.reported
    finally:
        standin.reset()


def test_an_sdxl_adapter_made_by_the_trainer_runs_through_the_script_as_eq9(tmp_path):
    """The whole SDXL path: the trainer makes an adapter from a tiny sgm-format checkpoint, the file is copied into
    models/VMix, and the script mixes it into that checkpoint's ldm UNet (sgm's shared context, pooled-text and size
    vector in SDXL's dict conditioning) exactly as a literal Eq. 9 UNet computes."""
    host = Host(tmp_path, width=2048, depth=2)
    try:
        model = TinyLdmModel(family="sdxl")
        checkpoint = model.save(tmp_path / "tiny-sdxl.safetensors")
        config = original_config(unet_params=SDXL_UNET_PARAMS, family="sdxl")
        base = load_single_file(checkpoint, original_config=config, tokenizer=write_tokenizer(tmp_path / "tok"))
        dims = (Dimension("light", "natural lighting", "sks1"), Dimension("color", "vivid colour", "sks2"))
        data = write_dataset(tmp_path / "data", [(16, 16)] * 4, ["light", "color"])
        options = TrainingOptions(
            steps=2, batch_size=2, resolution=16, buckets=False, save_dtype="fp32", learning_rate=1e-2, sample_count=0
        )
        run = RunConfig(checkpoint, data, tmp_path / "run", dims, options, name="sdxl-film")
        trained = Trainer(run, base, load_dataset(data, ["light", "color"]), device="cpu", progress=False).run()
        (host.folder / trained.name).write_bytes(trained.read_bytes())  # what the README says to do
        standin.register_model("sdxl", model.unet)
        host.load("sdxl")

        def sdxl_p():
            p = make_p(width=2048)
            g = torch.Generator().manual_seed(5)
            sizes = torch.tensor([[64.0, 64, 0, 0, 64, 64]])  # (height, width), crop (0, 0), target: A1111's default
            p.standin_cond = DictWithShape(
                {"crossattn": p.standin_cond, "vector": model.sdxl_vector(torch.randn(1, 1280, generator=g), sizes)}
            )
            # An empty negative prompt: A1111 zeroes SDXL's text conditioning, the size part stays.
            zeros = torch.zeros_like(p.standin_uncond)
            p.standin_uncond = DictWithShape(
                {"crossattn": zeros, "vector": model.sdxl_vector(torch.zeros(1, 1280), sizes)}
            )
            return p

        args = dict(adapter="sdxl-film", dimensions=["light", "color"])
        baseline = txt2img_mod.txt2img(sdxl_p(), *host.args(enabled=False, **args))
        mixed = txt2img_mod.txt2img(sdxl_p(), *host.args(enabled=True, scale=0.7, **args))
        assert "VMix adapter: sdxl-film" in mixed.info and "VMix error" not in mixed.info and not errors.reported
        reference = literal_eq9_unet(model.unet, load_adapter(trained), None, 0.7)
        standin.register_model("reference", reference)
        host.load("reference")
        expected = txt2img_mod.txt2img(sdxl_p(), *host.args(enabled=False, **args))
        torch.testing.assert_close(mixed.images[0], expected.images[0], **PIPELINE_TOL)
        assert (mixed.images[0] - baseline.images[0]).abs().max() > 1e-4
        assert not has_vmix_hooks(model.unet)
    finally:
        standin.reset()


def test_untrained_adapter_and_zero_scale_change_nothing(host):
    _, baseline = host.txt2img(enabled=False)
    fresh = VMixAdapter.untrained(
        host.main_unet, host.film.dimensions, torch.randn(3, WIDTH), torch.randn(3, WIDTH), "sd1"
    )
    save_adapter(fresh, host.folder / "fresh.safetensors")
    _, untrained = host.txt2img(enabled=True, adapter="fresh", scale=2.0)
    _, zero = host.txt2img(enabled=True, scale=0.0)
    assert torch.equal(untrained.images[0], baseline.images[0])
    assert torch.equal(zero.images[0], baseline.images[0])


def test_long_prompt_is_tiled(host):
    _, mixed = host.txt2img(enabled=True, p={"tokens": 154})
    expected = reference_latent(host, tokens=154)
    torch.testing.assert_close(mixed.images[0], expected, **PIPELINE_TOL)


@pytest.mark.parametrize("batch_cond_uncond", [True, False])
def test_cond_only_and_step_window_change_the_result(host, batch_cond_uncond):
    shared.opts.batch_cond_uncond = batch_cond_uncond
    _, full = host.txt2img(enabled=True)
    _, cond_only = host.txt2img(enabled=True, cond_only=True)
    _, late = host.txt2img(enabled=True, start=0.5)
    _, off = host.txt2img(enabled=False)
    for result in (cond_only, late):
        assert (result.images[0] - full.images[0]).abs().max() > 1e-4
        assert (result.images[0] - off.images[0]).abs().max() > 1e-4
    assert host.all_unets_clean()


def test_step_fraction_comes_from_the_denoiser_call_count(host):
    seen = []
    original = host.module.VMixRun.__init__

    def spy(run, *args, **kwargs):
        original(run, *args, **kwargs)
        record = run.mixer.set_progress
        run.mixer.set_progress = lambda step, total: (seen.append((step, total)), record(step, total))

    host.module.VMixRun.__init__ = spy
    try:
        host.txt2img(enabled=True, start=0.5)
    finally:
        host.module.VMixRun.__init__ = original
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]


def test_hires_fix_mixes_both_passes(host):
    hires = {"enable_hr": True, "hr_scale": 2.0, "hr_second_pass_steps": 2, "denoising_strength": 0.5}
    _, off = host.txt2img(enabled=False, p=hires)
    _, on = host.txt2img(enabled=True, p=hires)
    expected = reference_latent(host, **hires)
    torch.testing.assert_close(on.images[0], expected, **PIPELINE_TOL)
    assert (on.images[0] - off.images[0]).abs().max() > 1e-3
    assert host.all_unets_clean()


def test_hires_fix_with_another_checkpoint_follows_it(host, monkeypatch):
    """Each UNet is checked once per generation (here: 2 batches, 2 passes each), the hires one when its pass starts."""
    import vmix_ext.session

    seen = []
    original = vmix_ext.session.check_adapter_fits

    def spy(adapter, unet, path):
        seen.append(unet)
        return original(adapter, unet, path)

    monkeypatch.setattr(vmix_ext.session, "check_adapter_fits", spy)
    hires = {"enable_hr": True, "hr_scale": 2.0, "hr_checkpoint_name": "other", "denoising_strength": 0.5, "n_iter": 2}
    _p, processed = host.txt2img(enabled=True, p=hires)
    assert len(seen) == 2 and seen[0] is host.main_unet and seen[1] is host.other_unet
    assert "VMix error" not in processed.info and "VMix adapter: film" in processed.info
    assert len(processed.images) == 2
    assert host.all_unets_clean()


def test_hires_checkpoint_of_another_family_is_reported(host):
    standin.register_model("xl", tiny_unet(2048, seed=2))
    hires = {"enable_hr": True, "hr_scale": 2.0, "hr_checkpoint_name": "xl", "denoising_strength": 0.5}
    p = make_p(**hires)
    p.standin_hr_cond, p.standin_hr_uncond = torch.randn(1, 77, 2048), torch.randn(1, 77, 2048)  # SDXL-width conds
    processed = txt2img_mod.txt2img(p, *host.args(enabled=True))
    assert "VMix error" in processed.info and "loaded model is SDXL" in processed.info
    # Pasting this infotext must not switch VMix on: the image was made without it.
    params = infotext_utils.parse_generation_parameters(processed.info)
    assert "VMix adapter" not in params and "VMix scale" not in params and "VMix hash" not in params
    assert len(processed.images) == 1
    assert host.all_unets_clean() and not has_vmix_hooks(shared.sd_model.model.diffusion_model)


def test_img2img(host):
    def run(enabled: bool):
        p = make_p(processing.StableDiffusionProcessingImg2Img, denoising_strength=0.6)
        p.standin_init_latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
        return img2img_mod.img2img(p, *host.args(scripts.scripts_img2img, enabled=enabled)).images[0]

    off, on = run(False), run(True)
    assert (on - off).abs().max() > 1e-3
    assert torch.equal(run(False), off)
    assert host.all_unets_clean()


def test_failed_generation_leaves_nothing(host):
    _, baseline = host.txt2img(enabled=False)
    p = make_p()
    p._standin_fail_in_sampling = True
    with pytest.raises(RuntimeError):
        txt2img_mod.txt2img(p, *host.args(enabled=True))
    assert host.all_unets_clean(), "closing(p) must detach even when sampling raised"
    assert host.module.generation.run_of(p) is None
    _, after = host.txt2img(enabled=False)
    assert torch.equal(after.images[0], baseline.images[0])


def test_interrupted_generation_leaves_nothing(host):
    p = make_p()
    original = processing.StandinSampler.launch_sampling

    def interrupt(self, *args, **kwargs):
        shared.state.interrupt()
        return original(self, *args, **kwargs)

    processing.StandinSampler.launch_sampling = interrupt
    try:
        txt2img_mod.txt2img(p, *host.args(enabled=True))
    finally:
        processing.StandinSampler.launch_sampling = original
        shared.state.interrupted = False
    assert host.all_unets_clean()


def test_infotext_is_written_and_pasted_back(host):
    _, processed = host.txt2img(enabled=True, scale=0.35, dimensions=["focus", "color"], cond_only=True, end=0.8)
    info = processed.info
    assert "VMix adapter: film" in info and "VMix hash: " in info and "VMix scale: 0.35" in info
    params = infotext_utils.parse_generation_parameters(info)
    assert params["VMix dims"] == "focus, color"
    script = scripts.scripts_txt2img.script("VMix")
    # "Send to img2img" copies the controls whose infotext names are listed here: all of VMix's.
    assert [name for _, name in script.infotext_fields] == script.paste_field_names
    assert len(script.paste_field_names) == len(FIELDS) + SLIDERS
    values = infotext_utils.apply_paste(info, script.infotext_fields)
    assert values[0] is True and values[1] == "film" and values[2] == 0.35
    assert values[3] == ["focus", "color"] and values[4] is True and values[6] == 0.8
    assert gr.find_by_elem_id("txt2img_vmix_dimensions").value == ["focus", "color"]
    # A renamed adapter file is found again by the hash the infotext recorded.
    (host.folder / "film.safetensors").rename(host.folder / "film-v2.safetensors")
    renamed = infotext_utils.apply_paste(info, script.infotext_fields)
    assert renamed[1] == "film-v2" and renamed[3] == ["focus", "color"]
    # Text from a generation without VMix switches VMix off and leaves the rest as it was.
    off = infotext_utils.apply_paste("a dog\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1", script.infotext_fields)
    assert off[0] is False and off[1] == "film-v2"


def test_xyz_axes(host):
    options = {o.label: o for o in host.xyz.axis_options if o.label.startswith("[VMix]")}
    assert set(options) == {
        "[VMix] Scale (λ)",
        "[VMix] Enabled",
        "[VMix] Adapter",
        "[VMix] Dimensions (a+b, all, none)",
        "[VMix] Input blocks ×",
        "[VMix] Middle block ×",
        "[VMix] Output blocks ×",
        "[VMix] Apply on",
        "[VMix] Hires pass λ (-1: same)",
    }
    script_callbacks.before_ui_callback()  # "Reload UI" must not add the axes twice
    assert sum(o.label.startswith("[VMix]") for o in host.xyz.axis_options) == 9
    p = make_p()
    p.scripts = scripts.scripts_txt2img
    p.script_args = host.args(enabled=True)
    cells = host.xyz.run_cells(p, options["[VMix] Scale (λ)"], [0.0, 1.0])
    _, off = host.txt2img(enabled=False)
    _, on = host.txt2img(enabled=True)
    assert torch.equal(cells[0].images[0], off.images[0])
    torch.testing.assert_close(cells[1].images[0], on.images[0], atol=0, rtol=0)
    dims_cells = host.xyz.run_cells(p, options["[VMix] Dimensions (a+b, all, none)"], ["color+focus", "none", "all"])
    _, color_focus = host.txt2img(enabled=True, dimensions=["color", "focus"])
    assert torch.equal(dims_cells[0].images[0], color_focus.images[0])
    assert torch.equal(dims_cells[2].images[0], on.images[0])
    assert "VMix dims: none" in dims_cells[1].info
    enabled_cells = host.xyz.run_cells(p, options["[VMix] Enabled"], ["False", "True"])
    assert torch.equal(enabled_cells[0].images[0], off.images[0])
    assert options["[VMix] Adapter"].choices() == ["film"]
    assert host.all_unets_clean()


def test_a_failed_cell_does_not_mark_the_next_one(host):
    options = {o.label: o for o in host.xyz.axis_options}
    p = make_p()
    p.scripts = scripts.scripts_txt2img
    p.script_args = host.args(enabled=True)
    cells = host.xyz.run_cells(p, options["[VMix] Adapter"], ["missing", "film"])
    assert "VMix error" in cells[0].info and "no VMix adapter named 'missing'" in cells[0].info
    assert "VMix error" not in cells[1].info and "VMix adapter: film" in cells[1].info


def test_api_positional_and_dict_forms(host):
    runner = scripts.scripts_txt2img
    defaults = api.init_default_script_args(runner)
    _, on = host.txt2img(enabled=True, scale=0.5)
    _, off = host.txt2img(enabled=False)
    positional = api.text2imgapi(make_p(), {"VMix": {"args": [True, "film", 0.5]}}, defaults)
    friendly = api.text2imgapi(
        make_p(), {"vmix": {"args": [{"enabled": True, "adapter": "film", "scale": 0.5}]}}, defaults
    )
    absent = api.text2imgapi(make_p(), {}, defaults)
    assert torch.equal(positional.images[0], on.images[0])
    assert torch.equal(friendly.images[0], on.images[0])
    assert torch.equal(absent.images[0], off.images[0])
    bad = api.text2imgapi(make_p(), {"VMix": {"args": [{"enabled": True, "lambda": 2}]}}, defaults)
    assert "unknown VMix key(s) ['lambda']" in bad.info
    assert torch.equal(bad.images[0], off.images[0])


def test_adapters_route(host):
    (host.folder / "broken.safetensors").write_bytes(b"not really")
    routes = {}

    class App:
        def add_api_route(self, path, endpoint, methods):
            routes[path] = (endpoint, methods)

    script_callbacks.app_started_callback(None, App())
    endpoint, methods = routes["/vmix/v1/adapters"]
    assert methods == ["GET"]
    body = json.loads(json.dumps(endpoint()))
    assert body["folder"] == str(host.folder)
    broken, film = body["adapters"]
    assert broken == {"name": "broken", "file": "broken.safetensors", "error": broken["error"]}
    assert "not a safetensors" in broken["error"]
    assert film["name"] == "film" and film["family"] == "sd1" and film["layers"] == len(host.film.layer_paths)
    assert [d["name"] for d in film["dimensions"]] == ["color", "lighting", "focus"]
    assert "family_warning" not in film
    # An adapter for another family is listed with a warning naming both families.
    save_adapter(random_adapter(tiny_unet(2048, seed=3)), host.folder / "xl.safetensors")
    xl = next(entry for entry in endpoint()["adapters"] if entry["name"] == "xl")
    assert xl["family_warning"] == "made for SDXL, but the loaded model is SD 1.x"


def test_choosing_an_adapter_checks_the_whole_file(host):
    """A file whose header is fine but whose weights are not (NaN) looks healthy in the listing; picking it reads
    the whole file and the status line says what is wrong, before any generation."""
    bad = random_adapter(host.main_unet, seed=5)
    save_adapter(bad, host.folder / "nan.safetensors")
    data = bytearray((host.folder / "nan.safetensors").read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # the last float32 of the last tensor becomes NaN
    (host.folder / "nan.safetensors").write_bytes(bytes(data))
    change = next(
        listener for listener in gr.find_by_elem_id("txt2img_vmix_adapter").listeners if listener[0] == "change"
    )
    _dims, line, *_ = change[1]("nan", [], "film")
    assert "vmix-error" in line and "NaN" in line and "nan.safetensors" in line
    _dims, line, *_ = change[1]("film", [], "nan")
    assert "vmix-error" not in line and "file checked" in line


def test_failures_are_visible(host, capfd):
    status = gr.find_by_elem_id("txt2img_vmix_status")
    html_info = gr.HTML(elem_id="html_info_txt2img")
    script_callbacks.after_component_callback(html_info, elem_id="html_info_txt2img")
    assert not html_info.listeners, "no listener on the host's output box (gradio 4 updates it hundreds of times)"
    button = gr.find_by_elem_id("txt2img_vmix_status_refresh")  # clicked by javascript/vmix.js after a generation
    assert "vmix-hidden" in button.elem_classes
    (_event, click, _inputs, _outputs) = button.listeners[0]

    def refresh_status():
        return click("film")

    _, baseline = host.txt2img(enabled=False)
    (host.folder / "broken.safetensors").write_bytes(b"\x00" * 4)
    _, processed = host.txt2img(enabled=True, adapter="broken")
    assert torch.equal(processed.images[0], baseline.images[0]), "the image is still made, without VMix"
    assert "VMix error: " in processed.info and "broken.safetensors" in processed.info
    console = capfd.readouterr().err
    assert sum(line.startswith("[VMix] ") for line in console.splitlines()) == 1, console
    assert "vmix-error" in refresh_status() and "broken.safetensors" in refresh_status()
    assert status is gr.find_by_elem_id("txt2img_vmix_status")
    _, fine = host.txt2img(enabled=True)
    assert "VMix error" not in fine.info and "vmix-error" not in refresh_status()


def test_adapter_for_another_family_is_refused_before_sampling(host):
    xl = tiny_unet(2048, seed=3)
    save_adapter(random_adapter(xl), host.folder / "xl.safetensors")
    _, baseline = host.txt2img(enabled=False)
    _, processed = host.txt2img(enabled=True, adapter="xl")
    assert "made for SDXL" in processed.info and "loaded model is SD 1.x" in processed.info
    assert torch.equal(processed.images[0], baseline.images[0])


def test_error_text_is_kept_whole():
    from vmix_webui.generation import user_message

    assert user_message(ModuleNotFoundError("No module named 'backend'")) == (
        "ModuleNotFoundError: No module named 'backend'"
    )
    assert user_message(KeyError("no adapter 'x'")) == "no adapter 'x'"
    assert user_message(ValueError('a "quoted" name')) == 'a "quoted" name'


def test_adapter_hash_comes_from_the_host_cache_and_respects_no_hashing(host):
    from modules import hashes

    _, first = host.txt2img(enabled=True)
    _, second = host.txt2img(enabled=True)
    assert hashes.computed == ["vmix/film"], "hashed once, then read from the host's cache"
    expected = hashes.cache["vmix/film"]["sha256"][:10]
    assert f"VMix hash: {expected}" in first.info and f"VMix hash: {expected}" in second.info
    hashes.cache.clear()
    shared.cmd_opts.no_hashing = True
    _, unhashed = host.txt2img(enabled=True)
    assert "VMix adapter: film" in unhashed.info and "VMix hash" not in unhashed.info
    assert torch.equal(unhashed.images[0], second.images[0])


def test_adapters_route_asks_for_the_hosts_api_credentials(host):
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    shared.cmd_opts.api_auth = "alice:secret,bob:other"
    app = fastapi.FastAPI()
    script_callbacks.app_started_callback(None, app)
    client = TestClient(app)
    assert client.get("/vmix/v1/adapters").status_code == 401
    assert client.get("/vmix/v1/adapters", auth=("alice", "wrong")).status_code == 401
    answer = client.get("/vmix/v1/adapters", auth=("bob", "other"))
    assert answer.status_code == 200 and answer.json()["adapters"][0]["name"] == "film"
    shared.cmd_opts.api_auth = None
    open_app = fastapi.FastAPI()
    script_callbacks.app_started_callback(None, open_app)
    assert TestClient(open_app).get("/vmix/v1/adapters").status_code == 200


def test_status_line_follows_this_tabs_ui_generations_only(host):
    txt_button = gr.find_by_elem_id("txt2img_vmix_status_refresh")
    img_button = gr.find_by_elem_id("img2img_vmix_status_refresh")

    def line(button):
        return button.listeners[0][1]("film")

    _, _processed = host.txt2img(enabled=True, scale=0.5)
    assert "λ 0.5" in line(txt_button) and "λ 0.5" not in line(img_button)
    runner = scripts.scripts_txt2img
    api.text2imgapi(make_p(), {"VMix": {"args": [True, "film", 1.5]}}, api.init_default_script_args(runner))
    assert "λ 0.5" in line(txt_button), "an API generation does not change the UI's status line"
    # Choosing an adapter made for another family says so at once, before any generation.
    save_adapter(random_adapter(tiny_unet(2048, seed=3)), host.folder / "xl.safetensors")
    change = next(
        listener for listener in gr.find_by_elem_id("txt2img_vmix_adapter").listeners if listener[0] == "change"
    )
    _dims, status, _previous, *_sliders = change[1]("xl", [], "film")
    assert "vmix-error" in status and "made for SDXL" in status and "loaded model is SD 1.x" in status
    assert "λ" not in line(txt_button), "after a new choice the line describes the adapter again"


# -- the controls added after the first release (issue 16): strengths, per-block λ, passes ------------------------


def test_per_block_scales_match_literal_eq9_and_zero_blocks_change_nothing(host):
    _, baseline = host.txt2img(enabled=False)
    _, mixed = host.txt2img(enabled=True, scale=0.8, input_scale=0.5, middle_scale=0.0, output_scale=2.0)
    expected = reference_latent(host, scale=0.8, blocks=(0.5, 0.0, 2.0))
    torch.testing.assert_close(mixed.images[0], expected, **PIPELINE_TOL)
    assert (mixed.images[0] - reference_latent(host, scale=0.8)).abs().max() > 1e-3
    assert "VMix input scale: 0.5" in mixed.info and "VMix middle scale: 0" in mixed.info
    _, silent = host.txt2img(enabled=True, input_scale=0.0, middle_scale=0.0, output_scale=0.0)
    assert torch.equal(silent.images[0], baseline.images[0]), "all parts at 0 is the baseline, bit for bit"


def test_strength_sliders_are_per_dimension_strengths(host):
    sliders = {len(FIELDS) + i: v for i, v in enumerate([0.5, 1.0, 0.25])}  # the pool comes after the fields
    p = make_p()
    args = standin.ui_args(scripts.scripts_txt2img, overrides={"vmix": {0: True, **sliders}})
    processed = txt2img_mod.txt2img(p, *args)
    assert 'VMix dims: "color:0.5, lighting, focus:0.25"' in processed.info
    expected = reference_latent(host, {"color": 0.5, "lighting": 1.0, "focus": 0.25})
    torch.testing.assert_close(processed.images[0], expected, **PIPELINE_TOL)
    # The API names strengths in "dimensions"; the padding of the sliders (1) leaves them alone.
    defaults = api.init_default_script_args(scripts.scripts_txt2img)
    by_api = api.text2imgapi(
        make_p(), {"VMix": {"args": [True, "film", 1.0, ["color:0.5", "lighting", "focus:0.25"]]}}, defaults
    )
    assert torch.equal(by_api.images[0], processed.images[0])
    # Pasting puts the strengths back on the sliders and the names on the checkboxes.
    script = scripts.scripts_txt2img.script("VMix")
    values = infotext_utils.apply_paste(processed.info, script.infotext_fields)
    assert values[FIELDS.index("dimensions")] == ["color", "lighting", "focus"]
    assert values[len(FIELDS) : len(FIELDS) + 4] == [0.5, 1.0, 0.25, 1.0]


def test_passes_choose_first_hires_or_both_with_a_hires_scale(host):
    hires = {"enable_hr": True, "hr_scale": 2.0, "denoising_strength": 0.5}

    def image(**values):
        _, processed = host.txt2img(p=dict(hires), **values)
        return processed

    off, both = image(enabled=False), image(enabled=True)
    first_only = image(enabled=True, passes="first")
    assert torch.equal(first_only.images[0], image(enabled=True, hires_scale=0.0).images[0])
    hires_only = image(enabled=True, passes="hires")
    assert torch.equal(hires_only.images[0], image(enabled=True, scale=0.0, hires_scale=1.0).images[0])
    different = [first_only, hires_only, both, off]
    for i, a in enumerate(different):
        for b in different[i + 1 :]:
            assert (a.images[0] - b.images[0]).abs().max() > 1e-4
    assert "VMix passes: first" in first_only.info and "VMix passes" not in both.info
    softer = image(enabled=True, hires_scale=0.5)
    assert "VMix hires scale: 0.5" in softer.info
    assert host.all_unets_clean()


def test_old_infotext_and_old_api_requests_keep_their_meaning(host):
    """Text written before the new controls existed pastes to their defaults; a 7-element API list still works."""
    defaults = api.init_default_script_args(scripts.scripts_txt2img)
    seven = api.text2imgapi(make_p(), {"VMix": {"args": [True, "film", 0.5, None, False, 0.0, 1.0]}}, defaults)
    _, ui = host.txt2img(enabled=True, scale=0.5)
    assert torch.equal(seven.images[0], ui.images[0])
    script = scripts.scripts_txt2img.script("VMix")
    gr.find_by_elem_id("txt2img_vmix_middle_scale").value = 0.3  # set by the user before pasting
    gr.find_by_elem_id("txt2img_vmix_passes").value = "first"
    old = "a cat\nSteps: 4, VMix adapter: film, VMix scale: 0.5, VMix dims: color, VMix cond only: False"
    values = infotext_utils.apply_paste(old, script.infotext_fields)
    assert values[FIELDS.index("scale")] == 0.5
    assert [values[FIELDS.index(f)] for f in ("input_scale", "middle_scale", "output_scale")] == [1.0, 1.0, 1.0]
    assert values[FIELDS.index("passes")] == "both" and values[FIELDS.index("hires_scale")] == -1.0
