"""The forward-hook mixer on a real ldm UNet equals a literal two-term Eq. 9, and leaves nothing behind."""

from __future__ import annotations

import pytest
import torch
from helpers import DIMENSIONS, literal_eq9_unet, random_adapter, tiny_unet, unet_inputs

from vmix_ext.adapter import VMixAdapter
from vmix_ext.hooks import ValueMixer, detach_all, has_vmix_hooks, remove_vmix_hooks
from vmix_ext.mixing import MixOptions, tile_tokens

TOL = 1e-5


# SD 1.x and SD 2.x widths with one transformer block per layer; SDXL base (2048) and refiner (1280) widths with
# two blocks per layer (``…transformer_blocks.1.attn2``), fed as sgm feeds them.
SHAPES = {"sd1": (768, 1), "sd2": (1024, 1), "sdxl-depth2": (2048, 2), "refiner-depth2": (1280, 2)}


@pytest.fixture(scope="module", params=list(SHAPES.values()), ids=list(SHAPES))
def model(request):
    width, depth = request.param
    unet = tiny_unet(width, depth=depth)
    return unet, random_adapter(unet), width


def run(unet, inputs):
    x, t, context = inputs
    with torch.no_grad():
        return unet(x, t, context=context)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("tokens", [77, 154])
def test_hooked_unet_equals_literal_eq9(model, scale, tokens):
    unet, adapter, width = model
    inputs = unet_inputs(tokens=tokens, context_dim=width)
    strengths = {"color": 1.0, "lighting": 0.0, "focus": 0.5}
    expected = run(literal_eq9_unet(unet, adapter, strengths, scale), inputs)
    with ValueMixer(adapter.aesthetic_values(strengths), MixOptions(scale=scale)) as mixer:
        mixer.attach(unet)
        got = run(unet, inputs)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    if scale:
        assert (got - run(unet, inputs)).abs().max() > 1e-2, "VMix must change the output"


@pytest.mark.parametrize("cond_only", [False, True])
@pytest.mark.parametrize("tokens", [77, 154])
def test_cond_only_rows_match_eq9_on_cond_rows(model, cond_only, tokens):
    unet, adapter, width = model
    x, t, cond = unet_inputs(batch=2, tokens=tokens, context_dim=width, seed=5)
    uncond = torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(9))
    context = torch.cat([cond, uncond])  # A1111's order: cond rows first, the negative prompt last
    x = torch.cat([x, x[:1]])
    t = torch.cat([t, t[:1]])
    is_cond = torch.tensor([1.0, 1.0, 0.0]) if cond_only else torch.ones(3)
    expected = run(literal_eq9_unet(unet, adapter, None, 1.5, rows_to_mix=lambda _: is_cond), (x, t, context))
    mixer = ValueMixer(adapter.aesthetic_values(None), MixOptions(scale=1.5, cond_only=cond_only))
    mixer.set_uncond_context(uncond)
    mixer.attach(unet)
    try:
        got = run(unet, (x, t, context))
        # Forge and split batches put the negative prompt first or alone: the rows are found by content, not place.
        flipped = run(unet, (x.flip(0), t, context.flip(0))).flip(0)
    finally:
        mixer.detach()
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(flipped, expected, atol=TOL, rtol=0)
    plain = run(unet, (x, t, context))
    if cond_only:
        torch.testing.assert_close(got[2], plain[2], atol=TOL, rtol=0)


def test_cond_only_finds_a_padded_or_cut_negative_prompt(model):
    """A1111 may pad the negative prompt to the prompt's length (or cut it) after the denoiser callback."""
    _, adapter, width = model
    _, _, cond = unet_inputs(batch=1, tokens=154, context_dim=width, seed=5)
    uncond = torch.randn(1, 77, width, generator=torch.Generator().manual_seed(9))
    padded = torch.cat([uncond, torch.randn(1, 77, width)], dim=1)
    mixer = ValueMixer(adapter.aesthetic_values(None), MixOptions(cond_only=True))
    mixer.set_uncond_context(uncond)
    mixer.classify_rows(torch.cat([cond, padded]))
    assert mixer._cond_rows.tolist() == [0]
    mixer.set_uncond_context(padded)
    mixer.classify_rows(torch.cat([uncond, cond[:, :77]]))
    assert mixer._cond_rows.tolist() == [1]


def test_step_window_applies_only_inside(model):
    unet, adapter, width = model
    inputs = unet_inputs(context_dim=width)
    plain = run(unet, inputs)
    mixed = run(literal_eq9_unet(unet, adapter, None, 1.0), inputs)
    mixer = ValueMixer(adapter.aesthetic_values(None), MixOptions(start=0.25, end=0.75))
    mixer.attach(unet)
    try:
        for step in range(8):
            mixer.set_progress(step, 8)
            expected = mixed if 2 <= step < 6 else plain
            torch.testing.assert_close(run(unet, inputs), expected, atol=TOL, rtol=0)
    finally:
        mixer.detach()


def test_untrained_adapter_is_bit_identical(model):
    unet, _, width = model
    pos, neg = torch.randn(3, width), torch.randn(3, width)
    adapter = VMixAdapter.untrained(unet, DIMENSIONS, pos, neg, "sd1")
    inputs = unet_inputs(context_dim=width, tokens=154)
    plain = run(unet, inputs)
    for proj in adapter.value_projs:  # W_Va starts as a copy of W_V
        assert proj.weight.abs().sum() > 0
    with ValueMixer(adapter.aesthetic_values(None), MixOptions(scale=2.0)) as mixer:
        mixer.attach(unet)
        assert torch.equal(run(unet, inputs), plain)


def test_detach_restores_bit_identical_output(model):
    unet, adapter, width = model
    inputs = unet_inputs(context_dim=width)
    plain = run(unet, inputs)
    mixer = ValueMixer(adapter.aesthetic_values(None))
    mixer.attach(unet)
    assert not torch.equal(run(unet, inputs), plain)
    mixer.detach()
    assert not has_vmix_hooks(unet)
    assert torch.equal(run(unet, inputs), plain)


def test_attaching_twice_adds_the_term_once(model):
    unet, adapter, width = model
    inputs = unet_inputs(context_dim=width)
    values = adapter.aesthetic_values(None)
    once = ValueMixer(values)
    once.attach(unet)
    expected = run(unet, inputs)
    once.attach(unet)
    torch.testing.assert_close(run(unet, inputs), expected, atol=0, rtol=0)
    other = ValueMixer(values)  # a second mixer (a reloaded script) replaces the first instead of stacking
    other.attach(unet)
    torch.testing.assert_close(run(unet, inputs), expected, atol=TOL, rtol=0)
    assert detach_all() >= 1
    assert not has_vmix_hooks(unet)


def test_exception_inside_sampling_leaves_no_hook(model):
    unet, adapter, width = model
    inputs = unet_inputs(context_dim=width)
    plain = run(unet, inputs)
    with pytest.raises(RuntimeError, match="sampler exploded"):
        with ValueMixer(adapter.aesthetic_values(None), MixOptions(cond_only=True)) as mixer:
            mixer.attach(unet)
            run(unet, inputs)
            raise RuntimeError("sampler exploded")
    assert not has_vmix_hooks(unet)
    assert torch.equal(run(unet, inputs), plain)


def test_stray_hooks_from_a_lost_mixer_are_removed(model):
    unet, adapter, width = model
    inputs = unet_inputs(context_dim=width)
    plain = run(unet, inputs)
    ValueMixer(adapter.aesthetic_values(None), MixOptions(cond_only=True)).attach(unet)  # reference dropped at once
    assert has_vmix_hooks(unet)
    assert remove_vmix_hooks(unet) == len(adapter.layer_paths) + 1
    assert not has_vmix_hooks(unet)
    assert torch.equal(run(unet, inputs), plain)


def test_stale_only_cleanup_keeps_a_live_mixer(model):
    """The defensive clean-up at the start of a generation removes what a lost or closed run left, never the hooks
    of a mixer that is attached right now (another generation sampling)."""
    unet, adapter, _width = model
    values = adapter.aesthetic_values(None)
    closed = ValueMixer(values, MixOptions(cond_only=True))
    closed.attach(unet)
    closed._attachment = None  # as if detach() had never run, then the run was closed
    closed._closed = True
    assert remove_vmix_hooks(unet, stale_only=True) == len(adapter.layer_paths) + 1
    live = ValueMixer(values)
    live.attach(unet)
    assert remove_vmix_hooks(unet, stale_only=True) == 0 and has_vmix_hooks(unet)
    live.detach()
    assert not has_vmix_hooks(unet)


def test_per_row_values_match_one_mixer_per_row(model):
    """Training gives each image its own labels: V_a of shape (B, C, inner) must act row by row."""
    unet, adapter, width = model
    x, t, context = unet_inputs(batch=2, context_dim=width)
    rows = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    with ValueMixer(adapter.aesthetic_values(rows)) as mixer:
        mixer.attach(unet)
        got = run(unet, (x, t, context))
    for i in range(2):
        expected = run(literal_eq9_unet(unet, adapter, rows[i], 1.0), (x[i : i + 1], t[i : i + 1], context[i : i + 1]))
        torch.testing.assert_close(got[i : i + 1], expected, atol=TOL, rtol=0)


def test_gradients_reach_the_adapter_when_values_require_grad(model):
    unet, _, width = model
    trainable = random_adapter(unet, seed=4).train()
    x, t, context = unet_inputs(context_dim=width)
    with ValueMixer(trainable.aesthetic_values(torch.tensor([[1.0, 0.0, 1.0]] * 2))) as mixer:
        mixer.attach(unet)
        unet(x, t, context=context).square().mean().backward()
    assert trainable.zero_proj.weight.grad is not None and trainable.zero_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in trainable.value_projs.parameters())
    unet.zero_grad(set_to_none=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cached_values_follow_the_call_dtype(dtype):
    values = {"layer": torch.randn(77, 8)}
    mixer = ValueMixer(values, MixOptions(scale=0.5))
    output = torch.randn(2, 154, 8).to(dtype)
    expected = output.float() + 0.5 * tile_tokens(values["layer"], 154)
    mixed = mixer.mix("layer", output)
    assert mixed.dtype == dtype
    torch.testing.assert_close(mixed.float(), expected, atol=2e-2, rtol=1e-2)


def test_tile_tokens_repeats_then_cuts():
    values = torch.arange(77.0).view(77, 1)
    tiled = tile_tokens(values, 200)
    assert tiled.shape == (200, 1)
    assert torch.equal(tiled[77:154], values) and torch.equal(tiled[154:], values[:46])
    assert torch.equal(tile_tokens(values, 10), values[:10])
