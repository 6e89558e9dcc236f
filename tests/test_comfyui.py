"""VMix's ComfyUI nodes on real ldm layers, through the ComfyUI stand-in in tests/comfyui."""

from __future__ import annotations

import copy
import functools
import math
import os
import sys

import pytest
import torch
from torch import nn

COMFY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "comfyui")
if COMFY not in sys.path:
    sys.path.insert(0, COMFY)

import folder_paths  # noqa: E402
import ipadapter_plus as ipa  # noqa: E402
from comfy import model_base, samplers  # noqa: E402
from comfy.ldm.modules import attention as comfy_attention  # noqa: E402
from comfy_standin import COND, UNCOND, comfy_model, unet_call  # noqa: E402
from helpers import DIMENSIONS, literal_eq9_unet, random_adapter, tiny_unet, unet_inputs  # noqa: E402
from utils.extra_config import load_extra_path_config  # noqa: E402

from vmix_comfy import apply as vmix_apply  # noqa: E402
from vmix_comfy import folders  # noqa: E402
from vmix_comfy.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, ApplyVMix, LoadVMixAdapter  # noqa: E402
from vmix_ext.adapter import VMixAdapter  # noqa: E402
from vmix_ext.layers import cross_attention_layers  # noqa: E402
from vmix_ext.patcher import is_vmix_patch  # noqa: E402
from vmix_ext.settings import SettingsError  # noqa: E402
from vmix_ext.weights import AdapterFileError, save_adapter  # noqa: E402

STRENGTHS = {"color": 1.0, "lighting": 0.5, "focus": 0.0}
DIMENSIONS_TEXT = "color, lighting:0.5"


# -- fixtures and node calls -------------------------------------------------------------------------------------


@pytest.fixture
def comfy_root(tmp_path):
    """A fresh ComfyUI installation at tmp_path with the node pack's folder registered, as at ComfyUI start-up."""
    folder_paths.reset(str(tmp_path))
    folders.register()
    os.makedirs(os.path.join(folder_paths.models_dir, "vmix"))
    return tmp_path


@functools.cache
def unet_and_adapter(depth: int = 1) -> tuple[nn.Module, VMixAdapter]:
    """A tiny SD 1.x-shaped UNet and a random adapter for it, built once per depth (tests do not change them)."""
    unet = tiny_unet(depth=depth)
    return unet, random_adapter(unet)


@pytest.fixture
def sd1():
    return unet_and_adapter()


def save(adapter: VMixAdapter, root, name: str = "film.safetensors") -> str:
    path = os.path.join(root, "models", "vmix", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_adapter(adapter, path)
    return name


def load_node(name: str) -> vmix_apply.LoadedAdapter:
    return LoadVMixAdapter().load(name)[0]


def apply_node(model, loaded, strength=1.0, dimensions="all", start_percent=0.0, end_percent=1.0, cond_only=False):
    return ApplyVMix().apply(model, loaded, strength, dimensions, start_percent, end_percent, cond_only)[0]


def rows_of(roles: list[int], rows_per_chunk: int) -> torch.Tensor:
    """1 for the conditional rows of a batch laid out as ``roles``, 0 for the others."""
    return torch.tensor([float(r == COND) for r in roles for _ in range(rows_per_chunk)])


def reference_output(unet, adapter, strengths, scale, x, t, context, rows=None):
    reference = literal_eq9_unet(unet, adapter, strengths, scale, None if rows is None else (lambda _: rows))
    with torch.no_grad():
        return reference(x, t, context)


# -- node contract -----------------------------------------------------------------------------------------------


def test_node_classes_follow_the_comfyui_contract(comfy_root, sd1):
    save(sd1[1], comfy_root)
    assert NODE_DISPLAY_NAME_MAPPINGS == {"VMixAdapterLoader": "Load VMix Adapter", "ApplyVMix": "Apply VMix"}
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "VMix"
        assert node_id in NODE_DISPLAY_NAME_MAPPINGS
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional"}
        function = getattr(cls(), cls.FUNCTION)
        names = [*spec["required"], *spec.get("optional", {})]
        assert list(function.__code__.co_varnames[1 : function.__code__.co_argcount]) == names
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)

    loader = LoadVMixAdapter.INPUT_TYPES()["required"]
    assert loader["adapter_name"][0] == ["film.safetensors"]
    assert LoadVMixAdapter.RETURN_TYPES == ("VMIX_ADAPTER", "STRING")

    inputs = ApplyVMix.INPUT_TYPES()["required"]
    assert list(inputs) == ["model", "adapter", "strength", "dimensions", "start_percent", "end_percent", "cond_only"]
    assert inputs["model"] == ("MODEL",) and inputs["adapter"] == ("VMIX_ADAPTER",)
    strength = inputs["strength"]
    assert strength[0] == "FLOAT" and (strength[1]["min"], strength[1]["max"], strength[1]["default"]) == (0, 2, 1)
    for name, default in (("start_percent", 0.0), ("end_percent", 1.0)):  # as Apply ControlNet (Advanced) has them
        assert inputs[name] == ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.001, **tooltip(name)})
    assert inputs["dimensions"][0] == "STRING" and inputs["dimensions"][1]["default"] == "all"
    assert inputs["cond_only"][0] == "BOOLEAN" and inputs["cond_only"][1]["default"] is False
    assert ApplyVMix.RETURN_TYPES == ("MODEL",)


def tooltip(name: str) -> dict[str, str]:
    return {"tooltip": ApplyVMix.TOOLTIPS[name]}


# -- the adapter folder ------------------------------------------------------------------------------------------


def test_adapters_are_listed_from_models_vmix_and_extra_model_paths(tmp_path, sd1):
    """extra_model_paths.yaml is read before custom nodes load (its 'vmix:' entry then has no extension filter) and
    may be read again later; both ways its folders are listed with models/vmix, .safetensors files only."""
    folder_paths.reset(str(tmp_path / "ComfyUI"))
    shared = tmp_path / "shared"
    (shared / "vmix" / "styles").mkdir(parents=True)
    save_adapter(sd1[1], str(shared / "vmix" / "styles" / "film.safetensors"))
    (shared / "vmix" / "notes.txt").write_text("not an adapter")
    yaml_path = tmp_path / "extra_model_paths.yaml"
    yaml_path.write_text("mine:\n  base_path: shared\n  vmix: vmix\n")
    load_extra_path_config(str(yaml_path))
    assert folder_paths.folder_names_and_paths["vmix"][1] == set()  # what ComfyUI holds before the node pack loads

    folders.register()
    folders.register()  # idempotent
    save(sd1[1], tmp_path / "ComfyUI", "local.safetensors")
    paths, extensions = folder_paths.folder_names_and_paths["vmix"]
    assert paths == [str(shared / "vmix"), os.path.join(folder_paths.models_dir, "vmix")]
    assert extensions == {".safetensors"}
    assert folders.adapter_names() == ["local.safetensors", os.path.join("styles", "film.safetensors")]
    assert LoadVMixAdapter.INPUT_TYPES()["required"]["adapter_name"][0] == folders.adapter_names()

    later = tmp_path / "later"
    (later / "vmix").mkdir(parents=True)
    save_adapter(sd1[1], str(later / "vmix" / "late.safetensors"))
    (tmp_path / "more.yaml").write_text(f"other:\n  vmix: {later / 'vmix'}\n")
    load_extra_path_config(str(tmp_path / "more.yaml"))
    assert "late.safetensors" in folders.adapter_names()
    assert folder_paths.folder_names_and_paths["vmix"][1] == {".safetensors"}


def test_loader_reads_the_file_and_names_its_dimensions(comfy_root, sd1):
    name = save(sd1[1], comfy_root)
    loaded, dimensions = LoadVMixAdapter().load(name)
    assert dimensions == "color, lighting, focus"
    assert loaded.dimension_names == ("color", "lighting", "focus")
    for mine, theirs in zip(loaded.adapter.state_dict().values(), sd1[1].state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)


def test_loader_refuses_broken_and_missing_files_in_words(comfy_root, sd1):
    name = save(sd1[1], comfy_root)
    path = folders.adapter_path(name)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(AdapterFileError, match=r"'film.safetensors': is truncated"):
        load_node(name)
    with open(os.path.join(comfy_root, "models", "vmix", "lora.safetensors"), "wb") as f:
        f.write(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(AdapterFileError, match="not a VMix adapter"):
        load_node("lora.safetensors")
    with pytest.raises(FileNotFoundError, match=r"'gone.safetensors' was not found in the vmix model folders"):
        load_node("gone.safetensors")


def test_is_changed_follows_the_file(comfy_root, sd1):
    name = save(sd1[1], comfy_root)
    before = LoadVMixAdapter.IS_CHANGED(name)
    assert before == LoadVMixAdapter.IS_CHANGED(name)
    path = folders.adapter_path(name)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert LoadVMixAdapter.IS_CHANGED(name) != before
    assert LoadVMixAdapter.IS_CHANGED("gone.safetensors") == ""


# -- the patched model equals Eq. 9 ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("tokens", [77, 154])
@pytest.mark.parametrize("cond_only", [False, True])
@pytest.mark.parametrize("roles", [[UNCOND, COND], [COND, UNCOND]])
def test_patched_model_equals_eq9(comfy_root, depth, tokens, cond_only, roles):
    unet, adapter = unet_and_adapter(depth)
    model = comfy_model(unet)
    patched = apply_node(model, load_node(save(adapter, comfy_root)), 1.3, DIMENSIONS_TEXT, cond_only=cond_only)
    x, t, context = unet_inputs(batch=4, tokens=tokens)
    rows = rows_of(roles, 2) if cond_only else None
    expected = reference_output(unet, adapter, STRENGTHS, 1.3, x, t, context, rows)
    out = unet_call(patched, x, t, context, roles)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(out, unet_call(model, x, t, context, roles), atol=1e-4)


@pytest.mark.parametrize("family, width", [("sd2", 1024), ("sdxl", 2048)])
def test_sd2_and_sdxl_shaped_models_equal_eq9(comfy_root, family, width):
    unet = tiny_unet(context_dim=width, depth=2 if family == "sdxl" else 1)
    adapter = random_adapter(unet)
    assert adapter.family == family
    model_class = model_base.SDXL if family == "sdxl" else model_base.BaseModel
    patched = apply_node(comfy_model(unet, model_class), load_node(save(adapter, comfy_root)), 0.7)
    x, t, context = unet_inputs(batch=2, context_dim=width)
    expected = reference_output(unet, adapter, None, 0.7, x, t, context)
    torch.testing.assert_close(unet_call(patched, x, t, context, [UNCOND, COND]), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("with_negative", [True, False])
def test_sampler_calls_equal_eq9_joint_split_and_without_negative(comfy_root, sd1, split, with_negative):
    """Through samplers.calc_cond_batch: a joint [negative, positive] call, separate calls, and a step without the
    negative (cfg 1); cond-only mixes into the positive rows only, wherever they are."""
    unet, adapter = sd1
    patched = apply_node(comfy_model(unet), load_node(save(adapter, comfy_root)), 1.0, cond_only=True)
    x, _, cond = unet_inputs(batch=1)
    uncond = unet_inputs(batch=1, seed=9)[2] if with_negative else None
    sigma = torch.tensor([1.0])

    class Reference(model_base.BaseModel):
        def run_diffusion_model(self, x, timestep, context, transformer_options):
            rows = (context == cond).flatten(1).all(1).float()  # the rows that carry the positive prompt
            return reference_output(unet, adapter, None, 1.0, x, timestep, context, rows)

    expected = samplers.calc_cond_batch(Reference(unet), [cond, uncond], x, sigma, {}, split)
    out = samplers.calc_cond_batch(patched.model, [cond, uncond], x, sigma, patched.model_options, split)
    for mine, theirs in zip(out, expected, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


# -- nothing added where nothing should be ----------------------------------------------------------------------


def test_untrained_adapter_and_strength_zero_are_bit_identical(comfy_root, sd1):
    unet, trained = sd1
    torch.manual_seed(5)
    untrained = VMixAdapter.untrained(unet, DIMENSIONS, torch.randn(3, 768), torch.randn(3, 768), "sd1")
    model = comfy_model(unet)
    x, t, context = unet_inputs(batch=2)
    baseline = unet_call(model, x, t, context, [UNCOND, COND])
    for adapter, strength in ((untrained, 1.0), (untrained, 2.0), (trained, 0.0)):
        loaded = load_node(save(adapter, comfy_root, f"a{strength}.safetensors"))
        for cond_only in (False, True):
            patched = apply_node(model, loaded, strength, "color, lighting:0.5", 0.2, 0.9, cond_only)
            sigmas = torch.tensor([patched.model.model_sampling.percent_to_sigma(0.5)])
            assert torch.equal(unet_call(patched, x, t, context, [UNCOND, COND], sigmas), baseline)


def test_the_input_model_is_left_as_it_was(comfy_root, sd1):
    unet, adapter = sd1
    model = comfy_model(unet)
    previous = ipa.apply_ipadapter(model, ipa.FakeIPAdapter(unet))
    options_before = copy.copy(previous.model_options["transformer_options"]["patches_replace"]["attn2"])
    weights_before = {k: v.clone() for k, v in unet.state_dict().items()}
    x, t, context = unet_inputs(batch=2)
    before = unet_call(previous, x, t, context, [UNCOND, COND])

    patched = apply_node(previous, load_node(save(adapter, comfy_root)), 1.0)

    assert patched is not previous and patched.model is previous.model
    assert previous.model_options["transformer_options"]["patches_replace"]["attn2"] == options_before
    assert not any(is_vmix_patch(p) for p in options_before.values())
    assert all(torch.equal(v, weights_before[k]) for k, v in unet.state_dict().items())
    assert torch.equal(unet_call(previous, x, t, context, [UNCOND, COND]), before)
    assert not torch.allclose(unet_call(patched, x, t, context, [UNCOND, COND]), before, atol=1e-4)


def test_a_later_apply_vmix_replaces_the_earlier_one(comfy_root, sd1):
    unet, adapter = sd1
    loaded = load_node(save(adapter, comfy_root))
    model = comfy_model(unet)
    x, t, context = unet_inputs(batch=2)
    chained = apply_node(apply_node(model, loaded, 2.0, "focus"), loaded, 0.5, DIMENSIONS_TEXT)
    alone = apply_node(model, loaded, 0.5, DIMENSIONS_TEXT)
    assert torch.equal(unet_call(chained, x, t, context, [UNCOND, COND]), unet_call(alone, x, t, context, [1, 0]))
    table = chained.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(is_vmix_patch(p) and p.previous is None and p.mixer.options.scale == 0.5 for p in table.values())
    off = apply_node(apply_node(model, loaded, 2.0), loaded, 0.0)  # a later strength 0 switches VMix off
    assert torch.equal(unet_call(off, x, t, context, [UNCOND, COND]), unet_call(model, x, t, context, [1, 0]))


# -- composing with IPAdapter_plus -------------------------------------------------------------------------------


def softmax_attention(q, k, v, heads):
    split = [t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v)]
    weights = (split[0] @ split[1].transpose(-1, -2) / math.sqrt(split[0].shape[-1])).softmax(-1)
    out = weights @ split[2]
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


def add_ip_term(reference: nn.Module, ipadapter: ipa.FakeIPAdapter, roles: list[int], weight: float) -> nn.Module:
    """The hand-built reference for VMix + IP-Adapter: each layer's literal Eq. 9 output plus
    to_out(weight · softmax(q·K_ipᵀ/√d)·V_ip), with the image tokens of each row's role, on every layer whose
    IP-Adapter key ComfyUI looks up (all but the middle block's)."""
    for path, layer in cross_attention_layers(reference).items():
        if path.startswith("middle_block"):
            continue
        key = ipadapter.module_key(path)
        to_k, to_v = ipadapter.to_kvs[key + "_to_k_ip"], ipadapter.to_kvs[key + "_to_v_ip"]

        def forward(x, context=None, mask=None, _inner=layer.forward, _layer=layer, _k=to_k, _v=to_v):
            rows = x.shape[0] // len(roles)
            images = torch.cat([(ipadapter.cond, ipadapter.uncond)[r].expand(rows, -1, -1) for r in roles])
            image_term = weight * softmax_attention(_layer.to_q(x), _k(images), _v(images), _layer.heads)
            return _inner(x, context) + image_term @ _layer.to_out[0].weight.T

        layer.forward = forward
    return reference


@pytest.mark.parametrize("sdxl", [False, True])
@pytest.mark.parametrize("order", ["ipadapter first", "vmix first"])
def test_vmix_and_ipadapter_plus_both_act_in_either_order(comfy_root, sdxl, order):
    unet = tiny_unet(context_dim=2048, depth=2) if sdxl else tiny_unet()
    adapter = random_adapter(unet)
    ipadapter = ipa.FakeIPAdapter(unet)
    loaded = load_node(save(adapter, comfy_root))
    model = comfy_model(unet)
    if order == "ipadapter first":
        both = apply_node(ipa.apply_ipadapter(model, ipadapter, weight=0.8), loaded, 1.2)
    else:
        both = ipa.apply_ipadapter(apply_node(model, loaded, 1.2), ipadapter, weight=0.8)
    roles = [UNCOND, COND]
    x, t, context = unet_inputs(batch=2, context_dim=2048 if sdxl else 768)
    reference = add_ip_term(literal_eq9_unet(unet, adapter, None, 1.2), ipadapter, roles, 0.8)
    with torch.no_grad():
        expected = reference(x, t, context)
    out = unet_call(both, x, t, context, roles)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    vmix_only = unet_call(apply_node(model, loaded, 1.2), x, t, context, roles)
    ipadapter_only = unet_call(ipa.apply_ipadapter(model, ipadapter, weight=0.8), x, t, context, roles)
    assert not torch.allclose(out, vmix_only, atol=1e-4) and not torch.allclose(out, ipadapter_only, atol=1e-4)


def test_ipadapter_vmix_ipadapter_vmix_chain(comfy_root, sd1):
    """IP-Adapter, VMix, a second IP-Adapter, a second VMix: both IP-Adapters act once, the second VMix replaces
    the first."""
    unet, adapter = sd1
    first, second = ipa.FakeIPAdapter(unet, seed=7), ipa.FakeIPAdapter(unet, seed=8)
    loaded = load_node(save(adapter, comfy_root))
    model = ipa.apply_ipadapter(comfy_model(unet), first, weight=0.6)
    model = ipa.apply_ipadapter(apply_node(model, loaded, 2.0, "focus"), second, weight=0.9)
    model = apply_node(model, loaded, 0.5, DIMENSIONS_TEXT)
    roles = [COND, UNCOND]
    reference = literal_eq9_unet(unet, adapter, STRENGTHS, 0.5)
    reference = add_ip_term(add_ip_term(reference, first, roles, 0.6), second, roles, 0.9)
    x, t, context = unet_inputs(batch=2)
    with torch.no_grad():
        expected = reference(x, t, context)
    torch.testing.assert_close(unet_call(model, x, t, context, roles), expected, atol=1e-5, rtol=0)


# -- the percent window ------------------------------------------------------------------------------------------


def test_start_and_end_percent_mean_what_they_mean_for_controlnet(comfy_root, sd1):
    """Active while percent_to_sigma(end) <= sigma <= percent_to_sigma(start), as ControlNet's get_control skips
    when ``t > timestep_range[0] or t < timestep_range[1]``."""
    unet, adapter = sd1
    loaded = load_node(save(adapter, comfy_root))
    model = comfy_model(unet)
    windowed = apply_node(model, loaded, 1.0, start_percent=0.25, end_percent=0.75)
    always = apply_node(model, loaded, 1.0)
    sampling = model.get_model_object("model_sampling")
    sigma_start, sigma_end = sampling.percent_to_sigma(0.25), sampling.percent_to_sigma(0.75)
    assert sampling.sigma_max > sigma_start > sigma_end > sampling.sigma_min
    x, t, context = unet_inputs(batch=2)
    for sigma in (sigma_start * 1.01, sigma_start, (sigma_start + sigma_end) / 2, sigma_end, sigma_end * 0.99):
        sigmas = torch.tensor([sigma])
        controlnet_active = not (sigma > sigma_start or sigma < sigma_end)
        expected = always if controlnet_active else model
        out = unet_call(windowed, x, t, context, [UNCOND, COND], sigmas)
        assert torch.equal(out, unet_call(expected, x, t, context, [UNCOND, COND], sigmas)), sigma
    huge = torch.tensor([1e9])  # a full window has no sigma check at all
    assert torch.equal(unet_call(always, x, t, context, [1, 0], huge), unet_call(always, x, t, context, [1, 0]))
    with pytest.raises(ValueError, match=r"start_percent \(0.6\) must be smaller than end_percent \(0.6\)"):
        apply_node(model, loaded, 1.0, start_percent=0.6, end_percent=0.6)


# -- refusals ----------------------------------------------------------------------------------------------------


def test_an_adapter_for_another_family_is_refused_before_anything_is_patched(comfy_root, sd1):
    loaded = load_node(save(sd1[1], comfy_root))
    sdxl = comfy_model(tiny_unet(context_dim=2048, depth=2), model_base.SDXL)
    with pytest.raises(AdapterFileError, match=r"'film.safetensors': was made for SD 1.x .* the loaded model is SDXL"):
        apply_node(sdxl, loaded)
    assert sdxl.model_options == {"transformer_options": {}}

    sdxl_unet = tiny_unet(context_dim=2048, depth=2)
    sdxl_adapter = load_node(save(random_adapter(sdxl_unet), comfy_root, "xl.safetensors"))
    refiner = comfy_model(tiny_unet(context_dim=1280, depth=2), model_base.SDXLRefiner)
    with pytest.raises(AdapterFileError, match=r"made for SDXL \(context width 2048\) .* is SDXL refiner"):
        apply_node(refiner, sdxl_adapter)


def test_models_without_cross_attention_are_refused(comfy_root, sd1):
    class DoubleStreamBlock(nn.Module):  # Flux's blocks attend through one qkv projection, and have no attn2
        def __init__(self) -> None:
            super().__init__()
            self.img_attn = nn.ModuleDict({"qkv": nn.Linear(8, 24), "proj": nn.Linear(8, 8)})

    flux = comfy_model(nn.Sequential(DoubleStreamBlock()), model_base.Flux)
    with pytest.raises(ValueError, match=r"this model \(Flux\) has no cross-attention layers .* not with Flux, SD3"):
        apply_node(flux, load_node(save(sd1[1], comfy_root)))


def test_dimension_text_is_checked_against_the_adapter(comfy_root, sd1):
    loaded = load_node(save(sd1[1], comfy_root))
    model = comfy_model(sd1[0])
    with pytest.raises(SettingsError, match=r"dimension\(s\) colour not in this adapter; it has: color, lighting"):
        apply_node(model, loaded, 1.0, "colour, lighting")
    with pytest.raises(
        SettingsError, match=r"the strength of VMix dimension 'color' must be a number from 0\.0 to 1\.0, got '1\.5'"
    ):
        apply_node(model, loaded, 1.0, "color:1.5")
    with pytest.raises(ValueError, match=r"strength must be from 0 to 2, got 2\.5"):
        apply_node(model, loaded, 2.5)
    names = loaded.dimension_names
    assert vmix_apply.dimension_strengths("", names) == vmix_apply.dimension_strengths(" All ", names)
    assert vmix_apply.dimension_strengths("all", names) == {"color": 1.0, "lighting": 1.0, "focus": 1.0}
    assert vmix_apply.dimension_strengths("none", names) == {"color": 0.0, "lighting": 0.0, "focus": 0.0}
    assert vmix_apply.dimension_strengths(" lighting:0.5 ,color", names) == STRENGTHS


# -- the host's attention --------------------------------------------------------------------------------------


def test_the_hosts_attention_function_precision_and_override_are_used(comfy_root, sd1, monkeypatch):
    """VMix calls ComfyUI's optimized_attention as it is at call time, with the block's attn_precision and the
    transformer options, so an optimized_attention_override reaches through it."""
    unet, adapter = sd1
    patched = apply_node(comfy_model(unet), load_node(save(adapter, comfy_root)), 1.0)
    calls = []
    original = comfy_attention.optimized_attention

    def recording(q, k, v, heads, **kwargs):
        calls.append((heads, kwargs.get("attn_precision"), kwargs.get("transformer_options", {}).get("block")))
        return original(q, k, v, heads, **kwargs)

    monkeypatch.setattr(comfy_attention, "optimized_attention", recording)
    block = unet.input_blocks[1][1].transformer_blocks[0]
    monkeypatch.setattr(block, "attn_precision", torch.float32, raising=False)
    x, t, context = unet_inputs(batch=2)
    unet_call(patched, x, t, context, [UNCOND, COND])
    cross = calls[1::2]  # attn1 and attn2 alternate, block by block
    assert len(calls) == 14 and cross[0] == (2, torch.float32, ("input", 1))
    assert [c[2] for c in cross[1:]] == [("input", 3), ("middle", 0), *[("output", i) for i in range(4)]]
    assert all(c[1] is None for c in cross[1:])

    overridden = []

    def override(func, *args, **kwargs):
        overridden.append(kwargs["transformer_options"]["block"])
        return func(*args, **kwargs)

    patched.model_options["transformer_options"]["optimized_attention_override"] = override
    monkeypatch.setattr(comfy_attention, "optimized_attention", original)
    unet_call(patched, x, t, context, [UNCOND, COND])
    assert len(overridden) == 14  # every attn1 and every VMix-patched attn2


def test_comfyui_moves_and_loads_what_vmix_wraps():
    """ComfyUI's model_patches_to / model_patches_models ask only the patch under each key: VMix passes both on to
    the IP-Adapter patch it wraps, and returns itself so the table keeps VMix on top."""
    from vmix_ext.hooks import ValueMixer
    from vmix_ext.patcher import TwoPartKeyAlias, VMixAttentionPatch

    class Wrapped:
        def __init__(self):
            self.moved_to = []

        def __call__(self, q, k, v, extra_options):
            return v

        def to(self, device):
            self.moved_to.append(device)
            return self

        def models(self):
            return ["ip-adapter model"]

    wrapped = Wrapped()
    patch = VMixAttentionPatch(ValueMixer({}), "input_blocks.1.1.transformer_blocks.0.attn2", None, wrapped)
    alias = TwoPartKeyAlias(patch)
    assert patch.to("cuda:1") is patch and alias.to(torch.float16) is alias
    assert wrapped.moved_to == ["cuda:1", torch.float16]
    assert patch.models() == ["ip-adapter model"] and alias.models() == []
    assert VMixAttentionPatch(ValueMixer({}), "x", None).models() == []


def test_block_multipliers_equal_a_per_block_eq9_and_default_to_one(comfy_root):
    """The optional input/middle/output multipliers of λ (the web UI's per-block λ): equal to Eq. 9 with λ scaled per
    part of the UNet; left out (a workflow saved before they existed), they are 1."""
    unet, adapter = unet_and_adapter(1)
    model = comfy_model(unet)
    loaded = load_node(save(adapter, comfy_root))
    optional = ApplyVMix.INPUT_TYPES()["optional"]
    assert {name: spec[1]["default"] for name, spec in optional.items()} == {
        "input_scale": 1.0,
        "middle_scale": 1.0,
        "output_scale": 1.0,
    }
    patched = ApplyVMix().apply(model, loaded, 0.8, "all", 0.0, 1.0, False, 0.5, 0.0, 2.0)[0]
    x, t, context = unet_inputs(batch=2)
    reference = literal_eq9_unet(unet, adapter, None, 0.8, blocks=(0.5, 0.0, 2.0))
    with torch.no_grad():
        expected = reference(x, t, context)
    torch.testing.assert_close(unet_call(patched, x, t, context, [UNCOND, COND]), expected, atol=1e-5, rtol=0)
    plain = ApplyVMix().apply(model, loaded, 0.8, "all", 0.0, 1.0, False)[0]
    torch.testing.assert_close(
        unet_call(plain, x, t, context, [UNCOND, COND]),
        reference_output(unet, adapter, None, 0.8, x, t, context),
        atol=1e-5,
        rtol=0,
    )
    with pytest.raises(ValueError, match="block multipliers"):
        ApplyVMix().apply(model, loaded, 0.8, "all", 0.0, 1.0, False, -1.0)
