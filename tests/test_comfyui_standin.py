"""The ComfyUI stand-in under tests/comfyui behaves as the ComfyUI source it names (tests of the test tools)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

COMFY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "comfyui")
if COMFY not in sys.path:
    sys.path.insert(0, COMFY)

import folder_paths  # noqa: E402
import ipadapter_plus as ipa  # noqa: E402
from comfy import model_sampling, samplers  # noqa: E402
from comfy.ldm.modules import attention  # noqa: E402
from comfy_standin import COND, UNCOND, comfy_model, unet_call  # noqa: E402
from helpers import tiny_unet, unet_inputs  # noqa: E402
from utils.extra_config import load_extra_path_config  # noqa: E402

LAYER_KEYS = [("input", 1), ("input", 3), ("middle", 0), ("output", 0), ("output", 1), ("output", 2), ("output", 3)]


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def recording_patch(calls: list, tag: str = ""):
    def patch(q, k, v, extra_options):
        calls.append((tag, dict(extra_options)))
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])

    return patch


@pytest.mark.parametrize("depth", [1, 2])
def test_unpatched_run_equals_the_ldm_unet(depth):
    unet = tiny_unet(depth=depth)
    x, t, context = unet_inputs(batch=2)
    with torch.no_grad():
        expected = unet(x, t, context)
    torch.testing.assert_close(unet_call(comfy_model(unet), x, t, context, [UNCOND, COND]), expected)
    assert (
        "forward" in unet.input_blocks[1][1].__dict__
        if depth > 1
        else "forward" not in unet.input_blocks[1][1].__dict__
    )


def test_replace_patches_see_comfyuis_extra_options():
    unet = tiny_unet(depth=2)
    model = comfy_model(unet)
    calls: list = []
    for name, number in LAYER_KEYS:
        for index in range(2):
            model.set_model_attn2_replace(recording_patch(calls), name, number, index)
    x, t, context = unet_inputs(batch=4, tokens=154)
    sigmas = torch.tensor([3.0, 3.0])
    unet_call(model, x, t, context, [COND, UNCOND], sigmas)
    extra = calls[0][1]
    assert set(extra) == {
        "cond_or_uncond", "uuids", "sigmas", "original_shape", "transformer_index", "block", "activations_shape",
        "block_index", "n_heads", "dim_head", "attn_precision",
    }  # fmt: skip
    assert extra["cond_or_uncond"] == [COND, UNCOND] and extra["sigmas"] is sigmas
    assert extra["original_shape"] == [4, 4, 8, 8] and extra["activations_shape"] == [4, 32, 8, 8]
    assert (extra["n_heads"], extra["dim_head"], extra["attn_precision"]) == (2, 16, None)
    seen = [(e["block"], e["block_index"], e["transformer_index"]) for _, e in calls]
    expected = [(key, i, n) for n, key in enumerate(LAYER_KEYS) for i in range(2)]
    assert seen == expected


def test_three_part_key_first_then_two_part(unet):
    model = comfy_model(unet)
    calls: list = []
    model.set_model_attn2_replace(recording_patch(calls, "two"), "input", 1)
    model.set_model_attn2_replace(recording_patch(calls, "three"), "input", 1, 0)
    model.set_model_attn2_replace(recording_patch(calls, "fallback"), "output", 2)
    x, t, context = unet_inputs(batch=2)
    unet_call(model, x, t, context, [UNCOND, COND])
    assert [(tag, e["block"]) for tag, e in calls] == [("three", ("input", 1)), ("fallback", ("output", 2))]


def test_attn2_patch_and_output_patch_wrap_the_replace(unet):
    model = comfy_model(unet)
    order = []

    def before(n, context, value, extra_options):
        order.append("attn2_patch")
        return n, context, value * 0  # the replace patch gets to_v of this value

    def replace(q, k, v, extra_options):
        order.append("replace")
        assert torch.count_nonzero(v) == 0
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])

    model.set_model_attn2_patch(before)
    model.set_model_attn2_replace(replace, "middle", 0, 0)
    model.set_model_attn2_output_patch(lambda n, extra_options: order.append("output") or n)
    x, t, context = unet_inputs(batch=2)
    unet_call(model, x, t, context, [UNCOND, COND])
    assert order[:3] == ["attn2_patch", "output", "attn2_patch"] and order.count("replace") == 1
    assert order[order.index("replace") - 1 : order.index("replace") + 2] == ["attn2_patch", "replace", "output"]


def test_clone_deep_copies_model_options_and_shares_the_model(unet):
    model = comfy_model(unet)
    patch = ipa.Attn2Replace(None, sigma_start=1.0, sigma_end=0.0)
    model.set_model_attn2_replace(patch, "input", 1)
    clone = model.clone()
    clone.set_model_attn2_replace(recording_patch([]), "input", 3)
    table, cloned = (m.model_options["transformer_options"]["patches_replace"]["attn2"] for m in (model, clone))
    assert list(table) == [("input", 1)] and set(cloned) == {("input", 1), ("input", 3)}
    assert cloned[("input", 1)] is not patch and cloned[("input", 1)].kwargs == patch.kwargs
    assert clone.model is model.model and clone.get_model_object("diffusion_model") is unet
    clone.model_patches_to(torch.device("cpu"))
    assert cloned[("input", 1)].to_calls == [torch.device("cpu")] and patch.to_calls == []


def test_sampler_batches_negative_first_and_skips_it_at_cfg_1():
    a, b = torch.zeros(1, 77, 8), torch.zeros(1, 154, 8)
    assert samplers.batches([a, a]) == [[UNCOND, COND]]
    assert samplers.batches([a, a], split=True) == [[UNCOND], [COND]]
    assert samplers.batches([a, None]) == [[COND]]
    assert samplers.batches([b, a]) == [[UNCOND, COND]]  # 77 and 154 tokens join at 154
    assert samplers.batches([torch.zeros(1, 77 * 5, 8), a]) == [[COND], [UNCOND]]  # lcm/min above 4: apart
    x = torch.zeros(1, 4, 8, 8)
    calls = []

    class Model:
        def apply_model(self, x, t, c_crossattn, transformer_options):
            calls.append((transformer_options["cond_or_uncond"], c_crossattn.shape[1], transformer_options["sigmas"]))
            return torch.zeros_like(x)

    sigma = torch.tensor([2.0])
    samplers.sampling_function(Model(), x, sigma, a, b, 1.0, {})
    samplers.sampling_function(Model(), x, sigma, a, b, 7.0, {})
    assert [(c[0], c[1]) for c in calls] == [([COND], 154), ([UNCOND, COND], 154)]
    assert all(c[2] is sigma for c in calls)


def test_percent_to_sigma_follows_the_schedule():
    sampling = model_sampling.ModelSamplingDiscrete()
    assert (sampling.percent_to_sigma(0.0), sampling.percent_to_sigma(1.0)) == (999999999.9, 0.0)
    sigmas = [sampling.percent_to_sigma(p) for p in (0.01, 0.25, 0.5, 0.75, 0.99)]
    assert sigmas == sorted(sigmas, reverse=True)
    assert sampling.percent_to_sigma(0.5) == pytest.approx(float(sampling.sigma(torch.tensor(499.5))))
    assert float(sampling.sigma_max) == pytest.approx(14.6146, abs=1e-3)  # SD's schedule
    assert model_sampling.ModelSamplingDiscreteFlow().percent_to_sigma(0.25) == 0.75


def test_attention_override_takes_over_the_call():
    q = k = v = torch.randn(2, 5, 8)
    seen = []

    def override(func, *args, **kwargs):
        seen.append(args[3])
        return func(*args, **kwargs) * 0

    out = attention.optimized_attention(q, k, v, 2, transformer_options={"optimized_attention_override": override})
    assert seen == [2] and torch.count_nonzero(out) == 0
    plain = attention.optimized_attention(q, k, v, 2)
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(t.reshape(2, 5, 2, 4).transpose(1, 2) for t in (q, k, v))
    )
    torch.testing.assert_close(plain, expected.transpose(1, 2).reshape(2, 5, 8))


def test_extra_model_paths_yaml(tmp_path):
    folder_paths.reset(str(tmp_path / "ComfyUI"))
    (tmp_path / "extra.yaml").write_text(
        "a:\n  base_path: ../models\n  loras: |\n    one\n    two\n"
        f"b:\n  is_default: true\n  loras: {tmp_path / 'first'}\n"
    )
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "extra.yaml").write_text((tmp_path / "extra.yaml").read_text())
    load_extra_path_config(str(tmp_path / "cfg" / "extra.yaml"))
    assert folder_paths.get_folder_paths("loras") == [
        str(tmp_path / "first"),
        str(tmp_path / "ComfyUI" / "models" / "loras"),
        str(tmp_path / "models" / "one"),
        str(tmp_path / "models" / "two"),
    ]
    (tmp_path / "models" / "two").mkdir(parents=True)
    (tmp_path / "models" / "two" / "x.safetensors").write_bytes(b"")
    (tmp_path / "models" / "two" / "x.txt").write_bytes(b"")
    assert folder_paths.get_filename_list("loras") == ["x.safetensors"]
    assert folder_paths.get_full_path("loras", "x.safetensors") == str(tmp_path / "models" / "two" / "x.safetensors")
    assert folder_paths.get_full_path("loras", "../two/x.safetensors") is None


def test_ipadapter_plus_standin_registers_adds_and_skips_the_middle(unet):
    adapter = ipa.FakeIPAdapter(unet)
    assert [key for key, _ in adapter.layers] == [k for k in LAYER_KEYS if k[0] != "middle"] + [("middle", 1)]
    model = ipa.apply_ipadapter(ipa.apply_ipadapter(comfy_model(unet), adapter), adapter, start_at=0.5)
    table = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(len(patch.callback) == 2 for patch in table.values())
    assert [kw["module_key"] for kw in table[("output", 0)].kwargs] == ["5", "5"]
    called = []
    for key, patch in table.items():
        original = patch.__call__
        table[key] = lambda q, k, v, e, _key=key, _p=original: called.append(_key) or _p(q, k, v, e)
    x, t, context = unet_inputs(batch=2)
    unet_call(model, x, t, context, [UNCOND, COND])
    assert sorted(called) == sorted(k for k in table if k[0] != "middle")
