"""VMix through Forge's attn2 replace patches: equal to Eq. 9, chained with an existing patch, idempotent, and the
script's Forge path driven through the stand-ins."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import literal_eq9_unet, random_adapter, tiny_unet, unet_inputs

TESTS = Path(__file__).resolve().parent
for folder in (TESTS / "forge", TESTS / "a1111"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import standin_forge as sf  # noqa: E402
from backend.attention import attention_function  # noqa: E402
from backend.patcher.unet import UnetPatcher  # noqa: E402
from forge_hosts import HOSTS, host_environment, vmix_script  # noqa: E402

from vmix_ext import patcher  # noqa: E402
from vmix_ext.hooks import ValueMixer  # noqa: E402
from vmix_ext.layers import cross_attention_layers  # noqa: E402
from vmix_ext.mixing import MixOptions  # noqa: E402

TOL = {"atol": 1e-5, "rtol": 0}
COND, UNCOND = patcher.COND, patcher.UNCOND


@pytest.fixture(scope="module", params=[(768, 1), (2048, 2)], ids=["sd1", "sdxl-depth2"])
def model(request):
    # With two transformer blocks per layer the third key of a replace patch (block_index) tells them apart.
    width, depth = request.param
    unet = tiny_unet(width, depth=depth)
    return unet, random_adapter(unet)


def test_forge_keys_follow_forge_convention(model):
    unet, _ = model
    for path in cross_attention_layers(unet):
        assert patcher.patch_key(path) == sf.forge_key(path)
    assert patcher.patch_key("input_blocks.7.1.transformer_blocks.3.attn2") == ("input", 7, 3)
    assert patcher.patch_key("middle_block.1.transformer_blocks.9.attn2") == ("middle", 0, 9)
    with pytest.raises(ValueError, match="not an ldm cross-attention layer path"):
        patcher.patch_key("input_blocks.1.1.attn2")


def patched(unet, adapter, options, base: UnetPatcher | None = None) -> tuple[UnetPatcher, ValueMixer]:
    mixer = ValueMixer(adapter.aesthetic_values(None), options)
    forge_patcher = (base or UnetPatcher.from_model(unet)).clone()
    patcher.install(forge_patcher.model_options, mixer, forge_attention, adapter.layer_paths)
    return forge_patcher, mixer


def forge_attention(q, k, v, extra_options):
    """The attention call VMix's Forge backend makes (vmix_webui/hosts.py): Forge's function, heads from the patch."""
    return attention_function(q, k, v, extra_options["n_heads"])


# Eq. 9 through Forge's patch call (each transformer block of a layer, both row orders, cond-only, 77 and 154 tokens,
# the whole UNet) is tested for every Forge-family host, Forge included, in tests/test_forge_family.py.


@pytest.mark.parametrize("two_part_keys", [True, False])
def test_an_existing_patch_is_called_with_the_mixed_values(model, two_part_keys):
    """Forge's IP-Adapter registers replace patches first; VMix must wrap them, not replace them."""
    unet, adapter = model
    log = sf.CallLog()
    with_ip = sf.register_fake_ipadapter(UnetPatcher.from_model(unet), two_part_keys=two_part_keys, log=log)
    x, t, context = unet_inputs(batch=2, context_dim=adapter.context_dim)
    roles = [UNCOND, COND]
    with torch.no_grad():
        ip_only = sf.forge_unet_forward(unet, x, t, context, with_ip.model_options, roles)
        calls_before = len(log)
        forge_patcher, _ = patched(unet, adapter, MixOptions(scale=1.0), base=with_ip)
        both = sf.forge_unet_forward(unet, x, t, context, forge_patcher.model_options, roles)
    assert len(log) - calls_before == len(adapter.layer_paths), "the IP-Adapter patch ran on every layer"
    assert (both - ip_only).abs().max() > 1e-3
    # The same result as mixing V_a into v and then running the IP-Adapter patch by hand, layer by layer.
    ip_patches = with_ip.model_options["transformer_options"]["patches_replace"]["attn2"]
    values = adapter.aesthetic_values(None)
    reference = {}
    for path in adapter.layer_paths:
        name, number, index = patcher.patch_key(path)
        ip = ip_patches.get((name, number, index)) or ip_patches[(name, number)]
        reference[(name, number, index)] = _manual_patch(ip, values[path])
    manual = UnetPatcher.from_model(unet)
    for (name, number, index), fn in reference.items():
        manual.set_model_attn2_replace(fn, name, number, index)
    with torch.no_grad():
        expected = sf.forge_unet_forward(unet, x, t, context, manual.model_options, roles)
    torch.testing.assert_close(both, expected, **TOL)


def _manual_patch(ip, v_a):
    def fn(q, k, v, extra_options):
        tiled = torch.cat([v_a] * -(-v.shape[1] // v_a.shape[0]))[: v.shape[1]]
        return ip(q, k, v + tiled, extra_options)

    return fn


def test_installing_twice_adds_the_term_once(model):
    """With hires fix Forge calls process_before_every_sampling twice, once without a reset in between."""
    unet, adapter = model
    x, t, context = unet_inputs(batch=2, context_dim=adapter.context_dim)
    once, mixer = patched(unet, adapter, MixOptions())
    twice = once.clone()
    patcher.install(twice.model_options, mixer, forge_attention, adapter.layer_paths)
    with torch.no_grad():
        a = sf.forge_unet_forward(unet, x, t, context, once.model_options, [UNCOND, COND])
        b = sf.forge_unet_forward(unet, x, t, context, twice.model_options, [UNCOND, COND])
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_clone_isolation_and_closed_mixer(model):
    unet, adapter = model
    base = UnetPatcher.from_model(unet)
    forge_patcher, mixer = patched(unet, adapter, MixOptions(), base=base)
    assert "patches_replace" not in base.model_options["transformer_options"]
    x, t, context = unet_inputs(batch=2, context_dim=adapter.context_dim)
    with torch.no_grad():
        plain = sf.forge_unet_forward(unet, x, t, context, base.model_options, [UNCOND, COND])
        mixer.close()  # the generation ended; a patcher kept past it adds nothing any more
        stale = sf.forge_unet_forward(unet, x, t, context, forge_patcher.model_options, [UNCOND, COND])
    assert torch.equal(plain, stale)


def test_forge_linear_to_v_is_accepted(model):
    """Forge's to_v is a Linear-like module, not an nn.Linear; widths come from in_features/out_features."""
    from vmix_ext.layers import layer_widths

    unet, adapter = model
    depth = 2 if any(".transformer_blocks.1." in path for path in adapter.layer_paths) else 1
    forge_unet = sf.forge_linears(tiny_unet(adapter.context_dim, depth=depth))
    assert not isinstance(next(iter(cross_attention_layers(forge_unet).values())).to_v, torch.nn.Linear)
    assert layer_widths(forge_unet) == layer_widths(unet)


# -- the script on Forge -----------------------------------------------------------------------------------------


@pytest.fixture()
def forge_script(tmp_path):
    with host_environment(HOSTS["Forge"]), vmix_script(HOSTS["Forge"], tmp_path) as loaded:
        assert importlib.util.find_spec("modules_forge") is not None
        assert loaded[0].BACKEND.name == "Forge"
        yield loaded


def forge_p(args):
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", steps=4, width=64, height=64)
    p.script_args_value = args
    return p


ARGS = [True, "film", 1.25, ["color", "lighting", "focus"], False, 0.0, 1.0]


def test_script_patches_forge_unet_and_ends_clean(forge_script):
    module, script, unet, adapter = forge_script
    p = forge_p(ARGS)
    script.process(p, *ARGS)
    assert "VMix error" not in p.extra_generation_params, p.extra_generation_params
    assert p.extra_generation_params["VMix adapter"] == "film"
    x, t, context = unet_inputs(batch=2, context_dim=768)
    expected = literal_eq9_unet(unet, adapter, None, 1.25)(x, t, context=context).detach()
    for _ in range(2):  # two passes (hires fix), each after Forge's reset
        sf.reset_before_sampling(p.sd_model)
        script.process_before_every_sampling(p, *ARGS, x=x, noise=x, c=None, uc=None)
        # Forge's second hires call comes without a reset: still one term.
        script.process_before_every_sampling(p, *ARGS, x=x, noise=x, c=None, uc=None)
        with torch.no_grad():
            got = sf.forge_unet_forward(unet, x, t, context, p.sd_model.forge_objects.unet.model_options, [1, 0])
        torch.testing.assert_close(got, expected, **TOL)
    assert not cross_attention_layers(unet)["input_blocks.1.1.transformer_blocks.0.attn2"].to_v._forward_hooks
    script.postprocess(p, None, *ARGS)
    assert module.generation.run_of(p) is None
    with torch.no_grad():
        plain = unet(x, t, context=context)
        stale = sf.forge_unet_forward(unet, x, t, context, p.sd_model.forge_objects.unet.model_options, [1, 0])
    assert torch.equal(stale, plain)


@pytest.mark.parametrize("family", ["flux", "sd3", "chroma"])
def test_models_without_cross_attention_are_reported(forge_script, family, capfd):
    from modules import shared

    _, script, _, _ = forge_script
    shared.sd_model = sf.make_forge_sd_model(torch.nn.Linear(2, 2), family)
    p = forge_p(ARGS)
    script.process(p, *ARGS)
    error = p.extra_generation_params["VMix error"]
    assert "has no cross-attention layers" in error and "not with SD3, Flux, Chroma" in error
    script.process_before_every_sampling(p, *ARGS, x=None, noise=None, c=None, uc=None)
    assert "patches_replace" not in p.sd_model.forge_objects.unet.model_options["transformer_options"]
    assert "[VMix]" in capfd.readouterr().err


def test_forge_is_not_detected_on_a1111():
    if str(TESTS / "forge_host") in sys.path:
        pytest.fail("the Forge marker leaked onto sys.path")
    assert importlib.util.find_spec("modules_forge") is None
    assert os.path.isdir(TESTS / "forge_host" / "modules_forge")


def test_step_window_on_forge_follows_the_denoiser(forge_script):
    from modules import script_callbacks

    _, script, unet, adapter = forge_script
    args = [True, "film", 1.0, None, False, 0.0, 0.5]
    p = forge_p(args)
    script.process(p, *args)
    sf.reset_before_sampling(p.sd_model)
    script.process_before_every_sampling(p, *args, x=None, noise=None, c=None, uc=None)
    x, t, context = unet_inputs(batch=2, context_dim=768)
    options = p.sd_model.forge_objects.unet.model_options
    mixed = literal_eq9_unet(unet, adapter, None, 1.0)(x, t, context=context).detach()
    with torch.no_grad():
        plain = unet(x, t, context=context)

    class Denoiser:  # Forge's CFGDenoiser counts its calls in .step against .total_steps
        total_steps = 4

    for step, expected in [(0, mixed), (1, mixed), (2, plain), (3, plain)]:
        denoiser = Denoiser()
        denoiser.step = step
        denoiser.p = p  # Forge's CFGDenoiser carries the processing object, as A1111's does
        params = script_callbacks.CFGDenoiserParams(x, None, None, step, 4, None, None, denoiser)
        script_callbacks.cfg_denoiser_callback(params)
        with torch.no_grad():
            got = sf.forge_unet_forward(unet, x, t, context, options, [UNCOND, COND])
        torch.testing.assert_close(got, expected, **TOL)
    script.postprocess(p, None, *args)
