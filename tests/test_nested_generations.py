"""A generation's VMix belongs to that generation: nested generations (ADetailer's inpainting pass, through the
ADetailer 26.2.0 stand-in) get VMix only when their own script arguments ask for it, every pass of every batch of
the outer generation keeps its own, and two generation objects alive at once never share a run."""

from __future__ import annotations

import os
import sys

import pytest
import torch

A1111 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "a1111")
if A1111 not in sys.path:
    sys.path.insert(0, A1111)

import standin  # noqa: E402
from modules import infotext_utils, processing, scripts, shared  # noqa: E402
from modules import txt2img as txt2img_mod  # noqa: E402
from test_script_a1111 import FIELDS, Host, make_p  # noqa: E402

from vmix_ext.hooks import HOOK_MARKER  # noqa: E402
from vmix_ext.layers import cross_attention_layers  # noqa: E402

ADETAILER = os.path.join(A1111, "adetailer_standin.py")
FACE = {"ad_model": "face_yolov8n.pt"}


@pytest.fixture()
def host(tmp_path):
    yield Host(tmp_path, scripts_before=(ADETAILER,))
    standin.reset()


class UnetCalls:
    """Every call of the UNet: how deep in process_images it came (1 outer, 2 ADetailer's inner pass) and which
    VMix mixer, if any, was hooked onto its first cross-attention layer at that moment."""

    def __init__(self, host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.depth = 0
        to_v = next(iter(cross_attention_layers(host.main_unet).values())).to_v
        original = processing.process_images

        def nested(p):
            self.depth += 1
            try:
                return original(p)
            finally:
                self.depth -= 1

        def record(_module, _args):
            hooks = [h for h in to_v._forward_hooks.values() if getattr(h, HOOK_MARKER, False)]
            self.calls.append((self.depth, id(hooks[0].mixer()) if hooks else None))

        monkeypatch.setattr(processing, "process_images", nested)
        self.handle = host.main_unet.register_forward_pre_hook(record)

    def mixers(self, depth: int) -> list[int | None]:
        return [mixer for d, mixer in self.calls if d == depth]

    def close(self) -> None:
        self.handle.remove()


def generate(host: Host, vmix: dict, adetailer: bool, **p_kw):
    positions = {FIELDS.index(k): v for k, v in vmix.items()}
    args = standin.ui_args(scripts.scripts_txt2img, overrides={"vmix": positions, "adetailer": {0: adetailer, 2: FACE}})
    p = make_p(**p_kw)
    return p, txt2img_mod.txt2img(p, *args)


@pytest.mark.parametrize("hires", [False, True], ids=["plain", "hires"])
def test_adetailer_without_vmix_in_its_scripts_gets_no_vmix(host, monkeypatch, hires):
    """ADetailer's default script list leaves VMix out: its inner pass runs without VMix, and the outer batches
    after the first inner pass (batch count 2) still have theirs, in every pass."""
    watch = UnetCalls(host, monkeypatch)
    hires_kw = {"enable_hr": True, "hr_scale": 2.0, "denoising_strength": 0.5} if hires else {}
    try:
        _p, processed = generate(host, {"enabled": True, "scale": 0.8}, adetailer=True, n_iter=2, **hires_kw)
    finally:
        watch.close()
    outer, inner = watch.mixers(1), watch.mixers(2)
    assert inner and all(mixer is None for mixer in inner), "the inner pass must not see the outer VMix"
    assert outer and None not in outer, "every outer pass of both batches samples with VMix"
    assert len(set(outer)) == 1, "one run for the whole outer generation"
    assert len(processed.images) == 2
    for info in processed.infotexts:
        params = infotext_utils.parse_generation_parameters(info)
        assert params["VMix adapter"] == "film" and params["VMix scale"] == "0.8" and "VMix error" not in params
    assert host.all_unets_clean()


def test_adetailer_with_vmix_in_its_scripts_gets_its_own_run(host, monkeypatch):
    """With VMix in ADetailer's list, the inner pass makes a run of its own from its own arguments; the outer
    generation's run is untouched, so batch 2 keeps VMix and its infotext stays true."""
    shared.opts.data["ad_script_names"] = "vmix"
    watch = UnetCalls(host, monkeypatch)
    try:
        _p, processed = generate(host, {"enabled": True, "scale": 0.8}, adetailer=True, n_iter=2)
    finally:
        watch.close()
    outer, inner = watch.mixers(1), watch.mixers(2)
    assert None not in outer and len(set(outer)) == 1
    assert inner and None not in inner
    assert not set(inner) & set(outer), "the inner pass has its own run, not the outer one"
    for info in processed.infotexts:
        assert "VMix adapter: film" in info and "VMix error" not in info
    assert host.all_unets_clean()


def test_adetailer_with_vmix_off_outside_and_on_inside_follows_each(host, monkeypatch):
    """Outer VMix off: the outer passes run plain; ADetailer passes the same (off) arguments inward, so the inner
    pass runs plain too; and nothing writes VMix infotext."""
    shared.opts.data["ad_script_names"] = "vmix"
    watch = UnetCalls(host, monkeypatch)
    try:
        _p, processed = generate(host, {"enabled": False}, adetailer=True)
    finally:
        watch.close()
    assert set(watch.mixers(1)) == {None} and set(watch.mixers(2)) == {None}
    assert "VMix" not in processed.info


def test_adetailer_changes_nothing_when_vmix_is_on_and_adetailer_off(host):
    """ADetailer loaded but off: the same image as a host without ADetailer (the plain VMix path)."""
    _, with_adetailer_off = generate(host, {"enabled": True}, adetailer=False)
    _, direct = host.txt2img(enabled=True)
    assert torch.equal(with_adetailer_off.images[0], direct.images[0])


def test_two_generation_objects_keep_their_own_runs(host):
    """No module-global run: two processing objects set up at once, their passes interleaved, each sees its own
    settings and mixer, and ending one leaves the other alive."""
    script = scripts.scripts_txt2img.script("VMix")
    module = host.module
    first, second = make_p(), make_p()
    args_first = [True, "film", 0.5, None, False, 0.0, 1.0]
    args_second = [True, "film", 1.5, ["color"], False, 0.0, 1.0]
    script.process(first, *args_first)
    script.process(second, *args_second)
    run_first, run_second = module.generation.run_of(first), module.generation.run_of(second)
    assert run_first is not None and run_second is not None and run_first is not run_second
    assert (run_first.settings.scale, run_second.settings.scale) == (0.5, 1.5)
    assert first.extra_generation_params["VMix scale"] == "0.5"
    assert second.extra_generation_params["VMix scale"] == "1.5"
    to_v = next(iter(cross_attention_layers(host.main_unet).values())).to_v

    def hooked_mixer():
        hooks = [h for h in to_v._forward_hooks.values() if getattr(h, HOOK_MARKER, False)]
        assert len(hooks) <= 1, "never two VMix terms on one layer"
        return hooks[0].mixer() if hooks else None

    script.process_before_every_sampling(first, *args_first, x=None, noise=None, c=None, uc=None)
    assert hooked_mixer() is run_first.mixer
    script.post_sample(first, None, *args_first)
    assert hooked_mixer() is None
    script.process_before_every_sampling(second, *args_second, x=None, noise=None, c=None, uc=None)
    assert hooked_mixer() is run_second.mixer
    script.postprocess(first, None, *args_first)  # the first generation ends while the second samples
    assert module.generation.run_of(first) is None
    assert hooked_mixer() is run_second.mixer and module.generation.run_of(second) is run_second
    script.postprocess(second, None, *args_second)
    assert hooked_mixer() is None and module.generation.run_of(second) is None


def test_a_copy_of_p_does_not_take_over_its_run(host):
    """ADetailer calls the outer runner's postprocess and process on copy(p) in the middle of a generation; the
    copy must not end or replace the run of p itself."""
    from copy import copy

    script = scripts.scripts_txt2img.script("VMix")
    module = host.module
    p = make_p()
    args = [True, "film", 0.5, None, False, 0.0, 1.0]
    script.process(p, *args)
    run = module.generation.run_of(p)
    script.postprocess(copy(p), None, *args)
    assert module.generation.run_of(p) is run and not run.mixer._closed
    duplicate = copy(p)
    script.process(duplicate, *args)
    assert module.generation.run_of(p) is run and module.generation.run_of(duplicate) not in (None, run)
    duplicate.close()  # the copy's close ends only the copy's run
    assert module.generation.run_of(p) is run and not run.mixer._closed
    p.close()
    assert module.generation.run_of(p) is None and run.mixer._closed
