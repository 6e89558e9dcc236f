"""Smoke tests for the Forge-family stand-ins: reForge (tests/reforge), Forge Classic (tests/forge_classic), Forge Neo
(tests/forge_neo), Forge (tests/forge) through the shared call site (tests/forge_family.py), and the built-in
IP-Adapter's stand-in (tests/lib_ipadapter). What each must show is what hosts-facts read in the hosts' source."""

from __future__ import annotations

import importlib
import inspect
import sys

import pytest
import torch
from forge_family import (
    COND,
    UNCOND,
    forge_layers,
    ip_adapter_keys,
    random_image_tokens,
    random_ip_adapter,
    softmax_attention,
    transformer_options,
    unet_forward,
)
from forge_hosts import HOSTS, STANDIN_FOLDERS, host_environment, make_sd_model
from helpers import tiny_unet, unet_inputs

HOST_NAMES = list(HOSTS)
SIGMA_NEVER = 999999999.9


@pytest.fixture(params=HOST_NAMES)
def host(request):
    with host_environment(HOSTS[request.param]) as entered:
        yield entered


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def recording_patch(host, calls):
    """A replace patch that behaves like none (the host's own attention) and records what it was given."""

    def patch(q, k, v, extra_options):
        calls.append(dict(extra_options))
        return host.site.attention(q, k, v, extra_options["n_heads"])

    return patch


# --- the environment ---------------------------------------------------------------------------------------------


def test_environment_holds_one_host_and_restores_everything():
    path_before, modules_before = list(sys.path), dict(sys.modules)
    with host_environment(HOSTS["reForge"]):
        import ldm_patched.ldm.modules.attention  # noqa: F401
        import modules_forge.forge_version as version

        assert version.version == "1.0.0v2-v1.10.1RC"
        assert importlib.util.find_spec("backend") is None, "Forge's and Neo's backend must not be importable"
    with host_environment(HOSTS["Forge Neo"]):
        import modules_forge.forge_version as version

        assert version.version == "neo" and version.release == "2.22"
        assert importlib.util.find_spec("ldm_patched") is None
    with host_environment(None):
        assert importlib.util.find_spec("modules_forge") is None
    assert sys.path == path_before
    assert {n for n in sys.modules if n.split(".")[0] in ("ldm_patched", "modules_forge")} == {
        n for n in modules_before if n.split(".")[0] in ("ldm_patched", "modules_forge")
    }
    assert not {str(folder) for folder in STANDIN_FOLDERS[2:]} & set(sys.path)


# --- the call site -----------------------------------------------------------------------------------------------


def test_unpatched_call_site_equals_ldm(host, unet):
    x, t, context = unet_inputs(batch=4)
    patcher = host.unet_patcher(unet)
    with torch.no_grad():
        ours = unet_forward(host.site, unet, x, t, context, patcher.model_options, [UNCOND, COND])
        theirs = unet(x, t, context)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert "forward" not in unet.input_blocks[1][1].transformer_blocks[0].attn2.__dict__  # restored


EXTRA_OPTIONS = {  # hosts-facts: every transformer_options key of the call, plus n_heads and dim_head
    "common": {"block", "block_index", "transformer_index", "original_shape", "cond_or_uncond", "sigmas"},
    "Forge": {"cond_mark", "cond_indices", "uncond_indices"},
    "Forge Neo": {"cond_mark", "cond_indices", "uncond_indices"},
    "Forge Classic": {"cond_mark", "cond_indices", "uncond_indices"},
    "reForge": {"uuids", "attn_precision", "activations_shape"},
}


def test_replace_patch_gets_the_hosts_extra_options(host, unet):
    x, t, context = unet_inputs(batch=4)
    patcher = host.unet_patcher(unet).clone()
    calls = []
    patcher.set_model_attn2_replace(recording_patch(host, calls), "output", 2, 0)
    sigmas = torch.tensor([3.5, 3.5])
    with torch.no_grad():
        out = unet_forward(host.site, unet, x, t, context, patcher.model_options, [UNCOND, COND], sigmas)
    torch.testing.assert_close(out, unet(x, t, context), atol=1e-5, rtol=0)
    [extra] = calls
    assert set(extra) == EXTRA_OPTIONS["common"] | EXTRA_OPTIONS[host.name] | {"n_heads", "dim_head"}
    assert set(extra) == host.site.extra_option_keys()
    assert extra["block"] == ("output", 2) and extra["block_index"] == 0 and extra["transformer_index"] == 5
    assert extra["cond_or_uncond"] == [UNCOND, COND] and extra["sigmas"] is sigmas
    assert extra["original_shape"] == [4, 4, 8, 8]
    if "cond_indices" in extra:
        assert extra["cond_indices"] == [2, 3] and extra["uncond_indices"] == [0, 1]
        assert extra["cond_mark"].tolist() == [1.0, 1.0, 0.0, 0.0]
    if host.name == "reForge":
        layer = unet.output_blocks[2][1]
        assert extra["activations_shape"] == [4, layer.in_channels, 8, 8]  # the SpatialTransformer's input
        assert extra["attn_precision"] is None and len(extra["uuids"]) == 2


def test_two_part_key_is_the_fallback_of_every_block(host):
    unet = tiny_unet(depth=2)
    x, t, context = unet_inputs(batch=2)
    patcher = host.unet_patcher(unet).clone()
    two, three = [], []
    patcher.set_model_attn2_replace(recording_patch(host, two), "input", 1)
    patcher.set_model_attn2_replace(recording_patch(host, three), "input", 1, 1)
    with torch.no_grad():
        unet_forward(host.site, unet, x, t, context, patcher.model_options, [COND, UNCOND])
    assert [c["block_index"] for c in two] == [0] and [c["block_index"] for c in three] == [1]


# --- attention functions and patchers ----------------------------------------------------------------------------

SIGNATURES = {  # hosts-facts: the attention function a patch is expected to call, and its parameters
    "Forge": ["q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape"],
    "reForge": ["q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape"],
    "Forge Classic": ["q", "k", "v", "heads", "mask"],
    "Forge Neo": ["q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape", "kwargs"],
}


def test_attention_function_signature_and_contract(host):
    function = getattr(importlib.import_module(host.attention_module), host.attention_name)
    assert list(inspect.signature(function).parameters) == SIGNATURES[host.name]
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, n, 16, generator=generator) for n in (10, 5, 5))
    split = [t.view(3, -1, 2, 8).transpose(1, 2) for t in (q, k, v)]
    expected = torch.nn.functional.scaled_dot_product_attention(*split).transpose(1, 2).reshape(3, 10, 16)
    torch.testing.assert_close(function(q, k, v, 2), expected, atol=1e-6, rtol=0)
    if host.name == "Forge Classic":
        with pytest.raises(TypeError):
            function(q, k, v, 2, attn_precision=None)


def test_softmax_attention_layouts():
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, n, 8, generator=generator) for n in (6, 4, 4))
    heads_first = softmax_attention(q, k, v, 2, skip_reshape=True, skip_output_reshape=True)
    torch.testing.assert_close(
        heads_first, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=0
    )
    keep = torch.ones(2, 2, 6, 4, dtype=torch.bool)
    keep[..., -1] = False
    masked = softmax_attention(q, k, v, 2, mask=keep, skip_reshape=True, skip_output_reshape=True)
    cut = softmax_attention(q, k[:, :, :3], v[:, :, :3], 2, skip_reshape=True, skip_output_reshape=True)
    torch.testing.assert_close(masked, cut, atol=1e-6, rtol=0)


def test_clone_deep_copies_model_options_and_writes_follow_the_host(host, unet):
    base = host.unet_patcher(unet)

    class ObjectPatch:
        def __call__(self, q, k, v, extra_options):
            return None

    def function_patch(q, k, v, extra_options):
        return None

    base.set_model_attn2_replace(ObjectPatch(), "input", 1, 0)
    base.set_model_attn2_replace(function_patch, "input", 3)
    clone = base.clone()
    assert type(clone) is type(base) and clone.model is base.model
    by_key = clone.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert list(by_key) == [("input", 1, 0), ("input", 3)]
    assert by_key[("input", 3)] is function_patch and isinstance(by_key[("input", 1, 0)], ObjectPatch)
    assert (
        by_key[("input", 1, 0)]
        is not base.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)]
    )
    written = clone.model_options["transformer_options"]["patches_replace"]["attn2"]
    clone.set_model_attn2_replace(function_patch, "output", 3, 0)
    in_place = clone.model_options["transformer_options"]["patches_replace"]["attn2"] is written
    assert in_place == (host.name == "Forge Classic"), "only Classic's set_model_patch_replace writes in place"
    assert ("output", 3, 0) not in base.model_options["transformer_options"]["patches_replace"]["attn2"]


def test_sd_model_flags_and_holders(host, unet):
    for family, on in host.families.items():
        sd_model = make_sd_model(host, unet, family)
        assert {flag for flag in host.flags if getattr(sd_model, flag)} == set(on)
        assert sd_model.forge_objects.unet.model.diffusion_model is unet
        copy = sd_model.forge_objects_after_applying_lora.shallow_copy()
        assert type(copy) is type(sd_model.forge_objects) and copy.unet is sd_model.forge_objects.unet
    if host.name == "Forge Neo":
        assert not hasattr(make_sd_model(host, unet, "sd1"), "is_sd2"), "Neo dropped SD 2.x"
        with pytest.raises(KeyError, match="no sd2 models"):
            make_sd_model(host, unet, "sd2")


# --- the built-in IP-Adapter's stand-in --------------------------------------------------------------------------


def test_ip_adapter_registers_the_real_key_layouts():
    from lib_ipadapter import IPAdapterPlus as ip

    sd15, sdxl = ip.sd15_and_sdxl_keys(False), ip.sd15_and_sdxl_keys(True)
    assert len(sd15) == 16 and sd15[0] == ("input", 1) and sd15[-1] == ("middle", 0)
    assert len(sdxl) == 70 and sdxl[0] == ("input", 4, 0) and sdxl[-1] == ("middle", 0, 9)
    assert len(set(sdxl)) == 70 and all(len(key) == 3 for key in sdxl)

    class Patcher:  # only what apply_ipadapter touches: clone() and model_options
        def __init__(self):
            self.model_options = {"transformer_options": {}}
            self.model = None

        def clone(self):
            return Patcher()

    for width, layout in ((768, sd15), (2048, sdxl)):
        state = {"ip_adapter": {"1.to_k_ip.weight": torch.zeros(8, width), "1.to_v_ip.weight": torch.zeros(8, width)}}
        (work,) = ip.IPAdapterApply().apply_ipadapter(state, Patcher(), 1.0, embeds=torch.zeros(2, 1, 4, width))
        patches = work.model_options["transformer_options"]["patches_replace"]["attn2"]
        assert list(patches) == layout
        assert [patch.number for patch in patches.values()] == list(range(len(layout)))
        assert patches[layout[0]].sigma_start == [SIGMA_NEVER] and patches[layout[0]].sigma_end == [0.0]


def ip_setup(unet, keys, seed=7):
    from lib_ipadapter import IPAdapterPlus as ip

    width = next(iter(forge_layers(unet).values()))["layer"].to_k.in_features
    return ip, random_ip_adapter(unet, keys, seed), random_image_tokens(width, seed=seed + 1)


def test_ip_adapter_patch_equals_its_formula(host, unet):
    """attention(q, k, v) + Σ weight · attention(q, to_k_ip(image), to_v_ip(image)), cond tokens on cond chunks."""
    keys = ip_adapter_keys(unet, three_part=False)
    ip, state, embeds = ip_setup(unet, keys)
    (work,) = ip.IPAdapterApply().apply_ipadapter(state, host.unet_patcher(unet), 0.7, embeds=embeds, keys=keys)
    patch = work.model_options["transformer_options"]["patches_replace"]["attn2"][keys[0]]
    layer = forge_layers(unet)["input_blocks.1.1.transformer_blocks.0.attn2"]["layer"]
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(4, 64, layer.to_q.out_features, generator=generator)
    k, v = (torch.randn(4, 77, layer.to_q.out_features, generator=generator) for _ in range(2))
    roles = [UNCOND, COND]
    options = transformer_options(host.site, work.model_options, roles, torch.tensor([2.0, 2.0]))
    options.update(original_shape=[4, 4, 8, 8], n_heads=layer.heads)
    to_k, to_v = (
        torch.nn.functional.linear(embeds, state["ip_adapter"][f"1.{n}.weight"]) for n in ("to_k_ip", "to_v_ip")
    )
    image_k = torch.cat([to_k[1]] * 2 + [to_k[0]] * 2)  # uncond tokens on the uncond chunk, cond on the cond chunk
    image_v = torch.cat([to_v[1]] * 2 + [to_v[0]] * 2)
    heads = layer.heads
    expected = softmax_attention(q, k, v, heads) + 0.7 * softmax_attention(q, image_k, image_v, heads)
    with torch.no_grad():
        torch.testing.assert_close(patch(q, k, v, options), expected, atol=1e-5, rtol=0)
        patch.set_new_condition(**{**patch_kwargs_of(patch, 0), "weight": 0.5, "weight_type": "linear"})
        linear = softmax_attention(q, 0.5 * image_k, 0.5 * image_v, heads)
        torch.testing.assert_close(patch(q, k, v, options), expected + linear, atol=1e-5, rtol=0)
        patch.sigma_start = [1.0, 1.0]  # the sigma (2.0) is now above both windows
        torch.testing.assert_close(patch(q, k, v, options), softmax_attention(q, k, v, heads), atol=1e-6, rtol=0)


def patch_kwargs_of(patch, index):
    """The keyword arguments of the index-th condition on a CrossAttentionPatch (to register it again)."""
    return {
        "weight": patch.weights[index],
        "ipadapter": patch.ipadapters[index],
        "number": patch.number,
        "cond": patch.conds[index],
        "uncond": patch.unconds[index],
        "weight_type": patch.weight_type[index],
        "mask": patch.masks[index],
        "sigma_start": patch.sigma_start[index],
        "sigma_end": patch.sigma_end[index],
        "unfold_batch": patch.unfold_batch[index],
    }


def test_ip_adapter_calls_the_hosts_attention(host, unet, monkeypatch):
    keys = ip_adapter_keys(unet, three_part=False)
    ip, state, embeds = ip_setup(unet, keys)
    (work,) = ip.IPAdapterApply().apply_ipadapter(state, host.unet_patcher(unet), 1.0, embeds=embeds, keys=keys)
    module = importlib.import_module(host.attention_module)
    original = getattr(module, host.attention_name)
    calls = []
    monkeypatch.setattr(module, host.attention_name, lambda *a, **kw: calls.append(len(a)) or original(*a, **kw))
    x, t, context = unet_inputs(batch=2)
    with torch.no_grad():
        unet_forward(host.site, unet, x, t, context, work.model_options, [UNCOND, COND])
    assert len(calls) >= 2 * len(keys), "each patch calls the host attention for the text and the image tokens"


def test_second_registration_and_the_copying_variant(host, unet):
    keys = ip_adapter_keys(unet, three_part=True)
    ip, state, embeds = ip_setup(unet, keys)
    (once,) = ip.IPAdapterApply().apply_ipadapter(state, host.unet_patcher(unet), 1.0, embeds=embeds, keys=keys)
    (twice,) = ip.IPAdapterApply().apply_ipadapter(state, once, 0.5, embeds=embeds, keys=keys)
    first = once.model_options["transformer_options"]["patches_replace"]["attn2"][keys[0]]
    second = twice.model_options["transformer_options"]["patches_replace"]["attn2"][keys[0]]
    assert len(first.weights) == 1 and second.weights == [1.0, 0.5], "the clone's copy got the new condition"
    by_key = twice.model_options["transformer_options"]["patches_replace"]["attn2"]
    kept = by_key[keys[1]]
    ip.set_model_patch_replace_copying(twice, patch_kwargs_of(kept, 0), keys[1])
    assert by_key[keys[1]] is not kept and len(by_key[keys[1]].weights) == 3 and len(kept.weights) == 2
