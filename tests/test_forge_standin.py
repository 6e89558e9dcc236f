"""Smoke tests for the Forge stand-in under tests/forge (UnetPatcher, attention_function, the attn2 replace call)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

FORGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "forge")
if FORGE not in sys.path:
    sys.path.insert(0, FORGE)

import standin_forge as sf  # noqa: E402
from backend import attention  # noqa: E402
from backend.patcher.unet import UnetPatcher  # noqa: E402
from helpers import tiny_unet, unet_inputs  # noqa: E402

COND, UNCOND = sf.COND, sf.UNCOND


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def _recording_patch(calls):
    """A replace patch that behaves like no patch and records what it was given."""

    def patch(q, k, v, extra_options):
        calls.append({"q": q.shape, "k": k.shape, "v": v.shape, "extra": dict(extra_options)})
        return attention.attention_function(q, k, v, extra_options["n_heads"])

    return patch


# --- keys ----------------------------------------------------------------------------------------------------------


def test_keys_of_tiny_unet(unet):
    layers = sf.forge_layers(unet)
    assert {path: info["key"] for path, info in layers.items()} == {
        "input_blocks.1.1.transformer_blocks.0.attn2": ("input", 1, 0),
        "input_blocks.3.1.transformer_blocks.0.attn2": ("input", 3, 0),
        "middle_block.1.transformer_blocks.0.attn2": ("middle", 0, 0),
        "output_blocks.0.1.transformer_blocks.0.attn2": ("output", 0, 0),
        "output_blocks.1.1.transformer_blocks.0.attn2": ("output", 1, 0),
        "output_blocks.2.1.transformer_blocks.0.attn2": ("output", 2, 0),
        "output_blocks.3.1.transformer_blocks.0.attn2": ("output", 3, 0),
    }
    assert [info["transformer_index"] for info in layers.values()] == list(range(7))
    for path, info in layers.items():
        assert sf.ldm_path(info["key"]) == path


def test_sd15_and_sdxl_key_examples():
    assert sf.forge_key("input_blocks.1.1.transformer_blocks.0.attn2") == ("input", 1, 0)
    assert sf.forge_key("output_blocks.11.1.transformer_blocks.0.attn2") == ("output", 11, 0)
    assert sf.forge_key("input_blocks.7.1.transformer_blocks.3.attn2") == ("input", 7, 3)
    assert sf.forge_key("middle_block.1.transformer_blocks.9.attn2") == ("middle", 0, 9)
    with pytest.raises(ValueError):
        sf.forge_key("input_blocks.1.1.transformer_blocks.0.attn1")


def test_two_blocks_per_transformer_get_block_index_and_shared_transformer_index():
    unet = tiny_unet(depth=2)
    x, t, context = unet_inputs(batch=2)
    patcher = UnetPatcher.from_model(unet)
    calls = []
    for info in sf.forge_layers(unet).values():
        patcher.set_model_attn2_replace(_recording_patch(calls), *info["key"])
    with torch.no_grad():
        sf.forge_unet_forward(unet, x, t, context, patcher.model_options, [UNCOND, COND])
    seen = [(c["extra"]["block"], c["extra"]["block_index"], c["extra"]["transformer_index"]) for c in calls]
    assert seen[:4] == [(("input", 1), 0, 0), (("input", 1), 1, 0), (("input", 3), 0, 1), (("input", 3), 1, 1)]
    assert seen[4:6] == [(("middle", 0), 0, 2), (("middle", 0), 1, 2)]
    assert len(seen) == 14


# --- no patch: equal to ldm ----------------------------------------------------------------------------------------


def test_single_layer_without_patch_equals_ldm_forward(unet):
    layer = unet.input_blocks[1][1].transformer_blocks[0].attn2
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, layer.to_q.in_features, generator=generator)
    context = torch.randn(2, 77, 768, generator=generator)
    options = sf.forge_transformer_options({"transformer_options": {}}, [UNCOND, COND], torch.ones(1))
    with torch.no_grad():
        ours = sf.forge_cross_attention(layer, x, context, options, block=("input", 1), block_index=0)
        theirs = layer(x, context=context)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_whole_unet_without_patch_equals_ldm(unet):
    x, t, context = unet_inputs(batch=4)
    patcher = UnetPatcher.from_model(unet)
    with torch.no_grad():
        theirs = unet(x, t, context)
        ours = sf.forge_unet_forward(unet, x, t, context, patcher.model_options, [UNCOND, COND])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert "forward" not in unet.input_blocks[1][1].transformer_blocks[0].attn2.__dict__  # restored


def test_attention_function_layouts():
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(3, 10, 2 * 8, generator=generator)
    k = torch.randn(3, 5, 2 * 8, generator=generator)
    v = torch.randn(3, 5, 2 * 8, generator=generator)
    out = attention.attention_function(q, k, v, 2)
    split = [t.view(3, -1, 2, 8).transpose(1, 2) for t in (q, k, v)]
    expected = torch.nn.functional.scaled_dot_product_attention(*split).transpose(1, 2).reshape(3, 10, 16)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(attention.attention_function(*split, 2, skip_reshape=True), expected, atol=1e-6, rtol=0)
    keep = torch.ones(3, 2, 10, 5, dtype=torch.bool)
    keep[..., -1] = False
    masked = attention.attention_function(q, k, v, 2, mask=keep)
    torch.testing.assert_close(masked, attention.attention_function(q, k[:, :4], v[:, :4], 2), atol=1e-6, rtol=0)


# --- replace patches -------------------------------------------------------------------------------------------------


def test_replace_patch_gets_key_and_extra_options(unet):
    x, t, context = unet_inputs(batch=4)
    patcher = UnetPatcher.from_model(unet)
    calls = []
    patcher.set_model_attn2_replace(_recording_patch(calls), "output", 2, 0)
    assert list(patcher.model_options["transformer_options"]["patches_replace"]["attn2"]) == [("output", 2, 0)]
    sigmas = torch.tensor([3.5, 3.5])
    with torch.no_grad():
        out = sf.forge_unet_forward(unet, x, t, context, patcher.model_options, [UNCOND, COND], sigmas)
        torch.testing.assert_close(out, unet(x, t, context), atol=1e-5, rtol=0)
    assert len(calls) == 1
    call = calls[0]
    layer = unet.output_blocks[2][1].transformer_blocks[0].attn2
    inner = layer.to_q.out_features
    assert call["q"] == (4, 64, inner) and call["k"] == (4, 77, inner) and call["v"] == (4, 77, inner)
    extra = call["extra"]
    assert set(extra) == {
        "block", "block_index", "transformer_index", "original_shape", "cond_or_uncond", "sigmas",
        "cond_mark", "cond_indices", "uncond_indices", "n_heads", "dim_head",
    }  # fmt: skip
    assert extra["block"] == ("output", 2) and extra["block_index"] == 0 and extra["transformer_index"] == 5
    assert extra["n_heads"] == layer.heads and extra["dim_head"] == inner // layer.heads
    assert extra["cond_or_uncond"] == [UNCOND, COND]
    assert extra["original_shape"] == [4, 4, 8, 8]
    assert extra["sigmas"] is sigmas
    assert extra["cond_mark"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert extra["cond_indices"] == [2, 3] and extra["uncond_indices"] == [0, 1]


def test_patch_changing_v_changes_output(unet):
    x, t, context = unet_inputs(batch=2)
    patcher = UnetPatcher.from_model(unet)

    def add_to_v(q, k, v, extra_options):
        return attention.attention_function(q, k, v + 0.5, extra_options["n_heads"])

    patcher.set_model_attn2_replace(add_to_v, "input", 1, 0)
    with torch.no_grad():
        out = sf.forge_unet_forward(unet, x, t, context, patcher.model_options, [COND, COND])
        assert not torch.allclose(out, unet(x, t, context), atol=1e-4)


def test_three_part_key_wins_over_two_part(unet):
    x, t, context = unet_inputs(batch=2)
    patcher = UnetPatcher.from_model(unet)
    two, three = [], []
    patcher.set_model_attn2_replace(_recording_patch(two), "input", 1)
    patcher.set_model_attn2_replace(_recording_patch(three), "input", 1, 0)
    with torch.no_grad():
        sf.forge_unet_forward(unet, x, t, context, patcher.model_options, [COND, UNCOND])
    assert len(three) == 1 and two == []


def test_attn2_patch_and_output_patch_run_around_the_replace(unet):
    layer = unet.input_blocks[1][1].transformer_blocks[0].attn2
    x = torch.randn(1, 64, layer.to_q.in_features)
    context = torch.randn(1, 77, 768)
    patcher = UnetPatcher.from_model(unet)
    order = []

    def before(n, c, v, extra):
        order.append("attn2_patch")
        return n, c, v

    def after(n, extra):
        order.append("attn2_output_patch")
        return n

    patcher.set_model_attn2_patch(before)
    patcher.set_model_attn2_output_patch(after)

    def replace(q, k, v, extra):
        order.append("replace")
        return attention.attention_function(q, k, v, extra["n_heads"])

    patcher.set_model_attn2_replace(replace, "input", 1, 0)
    options = sf.forge_transformer_options(patcher.model_options, [COND], torch.ones(1))
    with torch.no_grad():
        sf.forge_cross_attention(layer, x, context, options)
    assert order == ["attn2_patch", "replace", "attn2_output_patch"]


# --- clone -----------------------------------------------------------------------------------------------------------


def test_clone_isolation(unet):
    base = UnetPatcher.from_model(unet)
    base.set_model_attn2_replace(lambda q, k, v, e: None, "input", 1, 0)
    before = dict(base.model_options["transformer_options"]["patches_replace"]["attn2"])
    clone = base.clone()
    assert clone.model is base.model and clone.is_clone(base)
    clone.set_model_attn2_replace(lambda q, k, v, e: None, "output", 3, 0)
    clone.model_options["transformer_options"]["patches_replace"]["attn2"][("middle", 0, 0)] = object()  # in place
    assert base.model_options["transformer_options"]["patches_replace"]["attn2"] == before
    base.set_model_attn2_replace(lambda q, k, v, e: None, "input", 3, 0)
    assert ("input", 3, 0) not in clone.model_options["transformer_options"]["patches_replace"]["attn2"]


def test_clone_deep_copies_patch_objects_but_not_functions(unet):
    base = UnetPatcher.from_model(unet)

    def function_patch(q, k, v, e):
        return None

    class ObjectPatch:
        def __init__(self):
            self.tensor = torch.zeros(2)

        def __call__(self, q, k, v, e):
            return None

    object_patch = ObjectPatch()
    base.set_model_attn2_replace(function_patch, "input", 1, 0)
    base.set_model_attn2_replace(object_patch, "input", 3, 0)
    copied = base.clone().model_options["transformer_options"]["patches_replace"]["attn2"]
    assert copied[("input", 1, 0)] is function_patch
    assert copied[("input", 3, 0)] is not object_patch and isinstance(copied[("input", 3, 0)], ObjectPatch)
    assert copied[("input", 3, 0)].tensor is not object_patch.tensor


def test_model_patches_to_replaces_objects_with_a_to_method(unet):
    patcher = UnetPatcher.from_model(unet)
    module_patch = torch.nn.Identity()
    patcher.set_model_attn2_replace(module_patch, "input", 1, 0)
    patcher.model_patches_to(torch.float16)
    assert patcher.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)] is module_patch


# --- row roles -------------------------------------------------------------------------------------------------------


def test_cfg_batches_put_uncond_first_and_skip_it_at_cfg_1():
    cond, uncond = torch.ones(2, 77, 8), torch.zeros(2, 77, 8)
    [(context, roles)] = sf.forge_cfg_batches(cond, uncond, 7.0)
    assert roles == [UNCOND, COND] and torch.equal(context[:2], uncond)
    [(_, roles)] = sf.forge_cfg_batches(cond, uncond, 1.0)
    assert roles == [COND]
    assert [roles for _, roles in sf.forge_cfg_batches(cond, uncond, 7.0, split=True)] == [[UNCOND], [COND]]
    assert sf.forge_cfg_batches([cond, cond * 2], uncond, 7.0)[0][1] == [UNCOND, COND, COND]
    long_uncond = torch.zeros(2, 154, 8)
    [(context, roles)] = sf.forge_cfg_batches(cond, long_uncond, 7.0)
    assert context.shape == (4, 154, 8) and torch.equal(context[2:, 77:], cond)  # cond repeated to 154 tokens
    far = torch.zeros(2, 77 * 5, 8)
    # not joinable (lcm ratio > 4): the first queued entry (cond) runs alone first, then the uncond
    assert [roles for _, roles in sf.forge_cfg_batches(cond, far, 7.0)] == [[COND], [UNCOND]]


def test_calc_cond_uncond_batch_matches_plain_runs(unet):
    x, t, cond = unet_inputs(batch=2, seed=3)
    uncond = unet_inputs(batch=2, seed=4)[2]
    patcher = UnetPatcher.from_model(unet)
    with torch.no_grad():
        cond_pred, uncond_pred = sf.forge_calc_cond_uncond_batch(patcher, x, t, cond, uncond, 7.0)
        torch.testing.assert_close(cond_pred, unet(x, t, cond), atol=1e-5, rtol=0)
        torch.testing.assert_close(uncond_pred, unet(x, t, uncond), atol=1e-5, rtol=0)
        cond_only, zeros = sf.forge_calc_cond_uncond_batch(patcher, x, t, cond, uncond, 1.0)
        torch.testing.assert_close(cond_only, cond_pred, atol=1e-5, rtol=0)
        assert torch.count_nonzero(zeros) == 0


# --- IP-Adapter-like patch and chaining ---------------------------------------------------------------------------


def _chain_wrapper(previous, extra_v):
    """How a second patch wraps one already on the key: change v, then call the previous patch."""

    def patch(q, k, v, extra_options):
        return previous(q, k, v + extra_v, extra_options)

    return patch


def test_fake_ipadapter_is_called_and_can_be_chained(unet):
    x, t, context = unet_inputs(batch=2)
    log = sf.CallLog()
    patcher = sf.register_fake_ipadapter(UnetPatcher.from_model(unet), two_part_keys=True, log=log)
    by_key = patcher.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert ("input", 1) in by_key and ("input", 1, 0) not in by_key  # SD1.x style keys
    with torch.no_grad():
        plain = unet(x, t, context)
        with_ip = sf.forge_unet_forward(unet, x, t, context, patcher.model_options, [UNCOND, COND])
    assert len(log) == 7 and log[0][0] == 0  # number 0: the first key, ("input", 1)
    assert {"n_heads", "cond_or_uncond", "sigmas", "block", "block_index"} <= set(log[0][1])
    assert not torch.allclose(with_ip, plain, atol=1e-4)

    # A second extension wraps the existing patch under the 3-part key, which the UNet prefers.
    chained = patcher.clone()
    existing = chained.model_options["transformer_options"]["patches_replace"]["attn2"]
    for info in sf.forge_layers(unet).values():
        previous = existing.get(info["key"]) or existing.get(info["block"])
        chained.set_model_attn2_replace(_chain_wrapper(previous, 0.0), *info["key"])
    log.clear()
    with torch.no_grad():
        out = sf.forge_unet_forward(unet, x, t, context, chained.model_options, [UNCOND, COND])
    torch.testing.assert_close(out, with_ip, atol=1e-5, rtol=0)
    assert len(log) == 7  # the IP-Adapter patch still ran, through the wrapper


def test_fake_ipadapter_second_registration_uses_set_new_condition(unet):
    once = sf.register_fake_ipadapter(UnetPatcher.from_model(unet), two_part_keys=False)
    twice = sf.register_fake_ipadapter(once, two_part_keys=False, seed=8)
    patch = twice.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)]
    assert len(patch.weights) == 2
    assert len(once.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)].weights) == 1


# --- p.sd_model -------------------------------------------------------------------------------------------------------


def test_sd_model_flags_and_reset_before_sampling(unet):
    names = ("is_sd1", "is_sd2", "is_sdxl", "is_sd3")
    flags = {family: tuple(getattr(sf.make_forge_sd_model(unet, family), f) for f in names) for family in sf.ENGINES}
    assert flags["sd1"] == (True, False, False, False)
    assert flags["sdxl_refiner"] == (False, False, True, False)
    assert flags["flux"] == flags["chroma"] == (False, False, False, False)
    assert flags["sd3"] == (False, False, False, True)

    sd_model = sf.make_forge_sd_model(unet, "sd1")
    original = sd_model.forge_objects.unet
    patched = original.clone()
    patched.set_model_attn2_replace(lambda q, k, v, e: None, "input", 1, 0)
    sd_model.forge_objects.unet = patched
    sf.reset_before_sampling(sd_model)
    assert sd_model.forge_objects.unet is original
    assert "patches_replace" not in original.model_options["transformer_options"]


def test_sigma_window_via_percent_to_sigma(unet):
    predictor = sf.make_forge_sd_model(unet).forge_objects.unet.model.predictor
    assert predictor.percent_to_sigma(0.0) > 1e8 and predictor.percent_to_sigma(1.0) == 0.0
    mid = predictor.percent_to_sigma(0.5)
    assert predictor.sigma_min < mid < predictor.sigma_max
    assert predictor.percent_to_sigma(0.2) > mid > predictor.percent_to_sigma(0.8)


def test_forge_linears_keep_outputs_but_are_not_nn_linear():
    unet = tiny_unet()
    x, t, context = unet_inputs(batch=2)
    with torch.no_grad():
        before = unet(x, t, context)
        sf.forge_linears(unet)
        after = sf.forge_unet_forward(unet, x, t, context, UnetPatcher.from_model(unet).model_options, [UNCOND, COND])
    to_v = unet.input_blocks[1][1].transformer_blocks[0].attn2.to_v
    assert not isinstance(to_v, torch.nn.Linear) and (to_v.in_features, to_v.out_features) == (768, 32)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
