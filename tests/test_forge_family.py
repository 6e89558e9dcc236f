"""VMix on every Forge-family host — Forge, reForge, Forge Classic, Forge Neo — through each one's stand-in: detection,
Eq. 9 through the host's patch call and attention, the script end to end, and the built-in IP-Adapter in any order."""

from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path

import pytest
import torch
from forge_family import (
    COND,
    UNCOND,
    cross_attention,
    forge_layers,
    ip_adapter_keys,
    random_image_tokens,
    random_ip_adapter,
    reset_before_sampling,
    transformer_options,
    unet_forward,
)
from forge_hosts import HOSTS, host_environment, make_sd_model, sampling_pass, vmix_script
from helpers import DIMENSIONS, literal_eq9_forward, literal_eq9_unet, random_adapter, tiny_unet, unet_inputs

TESTS = Path(__file__).resolve().parent
if str(TESTS / "a1111") not in sys.path:  # vmix_webui imports the host's modules.*: the A1111 stand-in's
    sys.path.insert(0, str(TESTS / "a1111"))

from vmix_ext import patcher  # noqa: E402
from vmix_ext.adapter import VMixAdapter  # noqa: E402
from vmix_ext.hooks import ValueMixer  # noqa: E402
from vmix_ext.layers import cross_attention_layers  # noqa: E402
from vmix_ext.mixing import MixOptions, tile_tokens  # noqa: E402
from vmix_webui import hosts  # noqa: E402
from vmix_webui.patcher_backend import PatcherBackend  # noqa: E402

HOST_NAMES = list(HOSTS)


@pytest.fixture(params=HOST_NAMES)
def host(request):
    with host_environment(HOSTS[request.param]) as entered:
        yield entered


@pytest.fixture(scope="module", params=[(768, 1), (2048, 2)], ids=["sd1", "sdxl-depth2"])
def model(request):
    width, depth = request.param
    unet = tiny_unet(width, depth=depth)
    return unet, random_adapter(unet)


def vmix_on(host, base, adapter, options=None, mixer=None):
    """What VMix's backend does at the start of a pass on this host: clone the patcher and install its patches with
    the attention call ``hosts.detect()`` chose for the host."""
    backend = hosts.detect()
    mixer = mixer or ValueMixer(adapter.aesthetic_values(None), options or MixOptions())
    clone = base.clone()
    patcher.install(clone.model_options, mixer, backend.attention, adapter.layer_paths)
    return clone


# --- detection --------------------------------------------------------------------------------------------------------


def test_detect_picks_the_hosts_backend_and_its_attention(host, monkeypatch):
    module = importlib.import_module(host.attention_module)
    original = getattr(module, host.attention_name)
    calls = []

    @functools.wraps(original)  # keeps the signature, which detection reads
    def spy(*args, **kwargs):
        calls.append((len(args), sorted(kwargs)))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, host.attention_name, spy)
    backend = hosts.detect()
    assert isinstance(backend, PatcherBackend) and backend.name == host.name
    assert backend.families == ("SD 1.x and SDXL" if host.name == "Forge Neo" else hosts.SD_FAMILIES)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 16, generator=generator) for n in (9, 77, 77))
    extra_options = {"n_heads": 2, **({"attn_precision": None} if host.site.attn_precision else {})}
    out = backend.attention(q, k, v, extra_options)
    assert calls == [(4, sorted(host.attention_kwargs))], "VMix calls the host's function the way the host does"
    assert torch.equal(out, original(q, k, v, 2))
    if host.attention_name == "attention_function":  # Forge and Neo pick theirs by rebinding it: read at each call
        rebound = []
        monkeypatch.setattr(module, host.attention_name, lambda *a, **kw: rebound.append(a) or original(*a, **kw))
        backend.attention(q, k, v, extra_options)
        assert len(rebound) == 1 and len(calls) == 1


def test_plain_a1111_is_not_taken_for_a_forge_host():
    with host_environment(None):
        assert hosts.detect().name == "A1111"


def test_a_forge_like_host_without_either_attention_is_refused():
    with host_environment(HOSTS["Forge Classic"]):
        sys.modules["ldm_patched.ldm.modules.attention"] = None  # type: ignore[assignment]  # import fails
        backend = hosts.detect()
    assert isinstance(backend, hosts.UnsupportedBackend)
    assert "version classic" in backend.reason and "cannot patch its attention" in backend.reason


# --- Eq. 9 through each host's patch call and attention ---------------------------------------------------------------


def rows_like(roles: list[int], chunk: int) -> torch.Tensor:
    return torch.tensor([1.0 if role == COND else 0.0 for role in roles for _ in range(chunk)])


@pytest.mark.parametrize("roles", [[UNCOND, COND], [COND, UNCOND], [COND]], ids=["uc-c", "c-uc", "c"])
@pytest.mark.parametrize("cond_only", [False, True], ids=["all-rows", "cond-only"])
@pytest.mark.parametrize("tokens", [77, 154])
def test_patch_on_real_ldm_layers_equals_eq9(host, model, roles, cond_only, tokens):
    unet, adapter = model
    layers = cross_attention_layers(unet)
    chunk = 2
    generator = torch.Generator().manual_seed(len(roles) + tokens)
    context = torch.randn(chunk * len(roles), tokens, adapter.context_dim, generator=generator)
    weight = rows_like(roles, chunk) if cond_only else torch.ones(context.shape[0])
    f_a = adapter.aesthetic_context(None).detach()
    w_va = dict(zip(adapter.layer_paths, (proj.weight.detach() for proj in adapter.value_projs), strict=True))
    patched = vmix_on(host, host.unet_patcher(unet), adapter, MixOptions(scale=1.5, cond_only=cond_only))
    info = forge_layers(unet)
    # one layer of each block kind, with every transformer block in it (block_index 0 and 1 on the SDXL shape)
    checked = [p for p in layers if p.split(".transformer_blocks.")[0] in ("input_blocks.1.1", "middle_block.1")]
    assert len(checked) == (4 if adapter.context_dim == 2048 else 2)
    for path in checked:
        x = torch.randn(chunk * len(roles), 64 if "input" in path else 16, layers[path].to_q.in_features)
        reference = literal_eq9_forward(layers[path], f_a, w_va[path], 1.5, rows_to_mix=lambda _: weight)
        expected = reference(x, context)
        options = transformer_options(host.site, patched.model_options, roles, torch.ones(chunk))
        options["original_shape"] = [chunk * len(roles), 4, 8, 8]
        block, block_index = info[path]["block"], info[path]["block_index"]
        with torch.no_grad():
            got = cross_attention(host.site, layers[path], x, context, options, block, block_index)
        # float32 sums over a 2048-wide context round at about 1e-5 of the largest value
        tolerance = 1e-5 * max(1.0, float(expected.detach().abs().max()))
        torch.testing.assert_close(got, expected.detach(), atol=tolerance, rtol=0, msg=path)


@pytest.fixture(scope="module")
def whole_unet_case(model):
    """Inputs of one whole-UNet call and its literal Eq. 9 result (λ 0.7), computed once per model."""
    unet, adapter = model
    x, t, context = unet_inputs(batch=2, context_dim=adapter.context_dim)
    return x, t, context, literal_eq9_unet(unet, adapter, None, 0.7)(x, t, context=context).detach()


@pytest.mark.parametrize("roles", [[UNCOND, COND], [COND, UNCOND]], ids=["uc-c", "c-uc"])
def test_whole_unet_through_the_hosts_patches_equals_eq9(host, model, whole_unet_case, roles):
    unet, adapter = model
    x, t, context, expected = whole_unet_case
    patched = vmix_on(host, host.unet_patcher(unet), adapter, MixOptions(scale=0.7))
    with torch.no_grad():
        got = unet_forward(host.site, unet, x, t, context, patched.model_options, roles)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_zero_scale_and_untrained_adapter_are_bit_identical(host, model):
    unet, adapter = model
    x, t, context = unet_inputs(batch=4, context_dim=adapter.context_dim)
    base = host.unet_patcher(unet)
    generator = torch.Generator().manual_seed(5)
    untrained = VMixAdapter.untrained(
        unet, DIMENSIONS, *(torch.randn(3, adapter.context_dim, generator=generator) for _ in range(2)), adapter.family
    )
    with torch.no_grad():
        plain = unet_forward(host.site, unet, x, t, context, base.model_options, [UNCOND, COND])
        for candidate, scale in ((adapter, 0.0), (untrained, 1.0)):
            patched = vmix_on(host, base, candidate, MixOptions(scale=scale))
            out = unet_forward(host.site, unet, x, t, context, patched.model_options, [UNCOND, COND])
            assert torch.equal(out, plain), (candidate is untrained, scale)


# --- cond-only on reForge, whose extra_options have no cond_mark / cond_indices ---------------------------------------


def test_cond_only_on_reforge_reads_cond_or_uncond():
    with host_environment(HOSTS["reForge"]) as host:
        unet = tiny_unet(768)
        adapter = random_adapter(unet)
        patched = vmix_on(host, host.unet_patcher(unet), adapter, MixOptions(scale=1.0, cond_only=True))
        by_key = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
        seen = []
        vmix_patch = by_key[("input", 1, 0)]

        def watching(q, k, v, extra_options):
            seen.append(set(extra_options))
            return vmix_patch(q, k, v, extra_options)

        by_key[("input", 1, 0)] = watching
        x, t, context = unet_inputs(batch=2, context_dim=768)
        uncond = unet_inputs(batch=2, context_dim=768, seed=9)[2]
        rows = torch.tensor([0.0, 0.0, 1.0, 1.0])  # [UNCOND, COND]: the second chunk is the prompt
        expected = literal_eq9_unet(unet, adapter, None, 1.0, rows_to_mix=lambda _: rows)
        both = torch.cat([uncond, context])
        x, t = torch.cat([x, x]), torch.cat([t, t])
        with torch.no_grad():
            got = unet_forward(host.site, unet, x, t, both, patched.model_options, [UNCOND, COND])
            reference = expected(x, t, context=both)
            plain = unet(x, t, both)
    [keys] = seen
    assert not keys & {"cond_mark", "cond_indices", "uncond_indices"} and "cond_or_uncond" in keys
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[:2], plain[:2], atol=1e-5, rtol=0)  # the negative prompt's rows are untouched
    assert (got[2:] - plain[2:]).abs().max() > 1e-3


# --- the built-in IP-Adapter and VMix, in any order -------------------------------------------------------------------

ORDERS = {
    "ip-ip-vmix": ("ip", "ip", "vmix"),  # IP-Adapter registers first (two units, so two conditions per layer)
    "vmix-ip-ip": ("vmix", "ip", "ip"),  # VMix first: the IP-Adapter finds VMix's patch and calls set_new_condition
    "ip-vmix-ip": ("ip", "vmix", "ip"),
}


def ip_units(unet, adapter):
    """Two IP-Adapter units with their own projections, image tokens and weights, registered the way the real
    ``IPAdapterApply`` registers (SDXL, told by the 2048-wide context, gets 3-part keys; SD 1.x 2-part keys)."""
    keys = ip_adapter_keys(unet, three_part=adapter.context_dim == 2048)
    width = adapter.context_dim
    units = [(random_ip_adapter(unet, keys, seed=7), random_image_tokens(width, seed=8), 0.8)]
    units.append((random_ip_adapter(unet, keys, seed=9), random_image_tokens(width, seed=10), 0.5))

    def apply(patcher_, unit):
        from lib_ipadapter.IPAdapterPlus import IPAdapterApply

        state, embeds, weight = unit
        return IPAdapterApply().apply_ipadapter(state, patcher_, weight, embeds=embeds, keys=keys)[0]

    return keys, units, apply


def mixed_then_ip_reference(host, unet, adapter, ip_patcher, scale=1.0):
    """A patcher whose every layer adds λ·V_a to v by hand and then calls the IP-Adapter's own patch of that layer
    (3-part key first, then 2-part, as the UNet looks them up)."""
    ip_patches = ip_patcher.model_options["transformer_options"]["patches_replace"]["attn2"]
    values = adapter.aesthetic_values(None)
    manual = host.unet_patcher(unet).clone()
    for path in adapter.layer_paths:
        name, number, index = patcher.patch_key(path)
        ip = ip_patches.get((name, number, index)) or ip_patches[(name, number)]

        def mixed(q, k, v, extra_options, ip=ip, v_a=values[path]):
            return ip(q, k, v + scale * tile_tokens(v_a, v.shape[1]), extra_options)

        manual.set_model_attn2_replace(mixed, name, number, index)
    return manual


@pytest.fixture(scope="module")
def ip_references():
    """Per host and model, computed once: the UNet inputs, the reference result (λ·V_a mixed into v, then both
    IP-Adapter units), and the results of the IP-Adapter alone and of VMix alone."""
    return {}


def ip_reference(cache, host, unet, adapter, apply, units, mixer):
    key = (host.name, adapter.context_dim)
    if key not in cache:
        ip_alone = apply(apply(host.unet_patcher(unet), units[0]), units[1])
        reference = mixed_then_ip_reference(host, unet, adapter, ip_alone)
        vmix_alone = vmix_on(host, host.unet_patcher(unet), adapter, mixer=mixer)
        x, t, context = unet_inputs(batch=2, context_dim=adapter.context_dim)
        with torch.no_grad():
            outs = [
                unet_forward(host.site, unet, x, t, context, p.model_options, [UNCOND, COND])
                for p in (reference, ip_alone, vmix_alone)
            ]
        cache[key] = (x, t, context, *outs)
    return cache[key]


@pytest.mark.parametrize("order", ORDERS)
def test_ip_adapter_and_vmix_in_any_order(host, model, order, ip_references):
    unet, adapter = model
    keys, units, apply = ip_units(unet, adapter)
    mixer = ValueMixer(adapter.aesthetic_values(None), MixOptions(scale=1.0))
    current, pending = host.unet_patcher(unet), iter(units)
    for step in ORDERS[order]:
        current = apply(current, next(pending)) if step == "ip" else vmix_on(host, current, adapter, mixer=mixer)
    again = vmix_on(host, current, adapter, mixer=mixer)  # hires without a reset: VMix installs a second time
    x, t, context, expected, ip_alone, vmix_alone = ip_reference(
        ip_references, host, unet, adapter, apply, units, mixer
    )
    with torch.no_grad():
        both = unet_forward(host.site, unet, x, t, context, current.model_options, [UNCOND, COND])
        twice = unet_forward(host.site, unet, x, t, context, again.model_options, [UNCOND, COND])
    torch.testing.assert_close(both, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(twice, expected, atol=1e-5, rtol=0)
    assert (both - ip_alone).abs().max() > 1e-3, "VMix took effect"
    assert (both - vmix_alone).abs().max() > 1e-3, "the IP-Adapter took effect"
    by_key = current.model_options["transformer_options"]["patches_replace"]["attn2"]
    for key in keys:  # VMix holds every key, and the IP-Adapter patch it wraps has both conditions
        assert patcher.is_vmix_patch(by_key[key]), key
        assert by_key[key].previous.weights == [0.8, 0.5], f"both IP-Adapter conditions are kept on {key}"
    for patch in again.model_options["transformer_options"]["patches_replace"]["attn2"].values():
        assert patcher.is_vmix_patch(patch) and not patcher.is_vmix_patch(patch.previous), "one VMix term"


@pytest.mark.parametrize("host", ["Forge Neo"], indirect=True)
@pytest.mark.parametrize("width, depth", [(768, 1), (2048, 2)], ids=["sd1", "sdxl-depth2"])
def test_ip_adapter_after_vmix_with_the_neo_forks_copying_registration(host, width, depth, monkeypatch):
    """The Forge Neo fork AiWithYou/aikimi-forge-neo (f728aa34) registers a later condition on a shallow copy of the
    patch under its key and stores the copy there (upstream Neo's own file was not seen). On SD 1.x that key is the
    2-part one, where VMix keeps an alias of the 3-part key's patch, so the copy still adds to the patch the UNet
    calls."""
    from lib_ipadapter import IPAdapterPlus

    monkeypatch.setattr(IPAdapterPlus, "set_model_patch_replace", IPAdapterPlus.set_model_patch_replace_copying)
    unet = tiny_unet(width, depth=depth)
    adapter = random_adapter(unet)
    _, units, apply = ip_units(unet, adapter)
    current = apply(apply(vmix_on(host, host.unet_patcher(unet), adapter), units[0]), units[1])
    reference = mixed_then_ip_reference(host, unet, adapter, apply(apply(host.unet_patcher(unet), units[0]), units[1]))
    x, t, context = unet_inputs(batch=2, context_dim=width)
    with torch.no_grad():
        got = unet_forward(host.site, unet, x, t, context, current.model_options, [UNCOND, COND])
        expected = unet_forward(host.site, unet, x, t, context, reference.model_options, [UNCOND, COND])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# --- the script end to end on each host -------------------------------------------------------------------------------

ARGS = [True, "film", 1.25, ["color", "lighting", "focus"], False, 0.0, 1.0]


@pytest.fixture()
def host_script(host, tmp_path):
    """scripts/vmix.py loaded while ``host``'s stand-in is on sys.path, with an SD 1.x model built the host's way."""
    with vmix_script(host, tmp_path) as loaded:
        yield loaded


def txt2img_p(args):
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", steps=4, width=64, height=64)
    p.script_args_value = args
    return p


def sample(host, p, x, t, context):
    """One UNet call of the pass with the patcher the host samples with: ``p.sd_model.forge_objects.unet``."""
    unet_patcher = p.sd_model.forge_objects.unet
    with torch.no_grad():
        return unet_forward(
            host.site, unet_patcher.model.diffusion_model, x, t, context, unet_patcher.model_options, [UNCOND, COND]
        )


def test_script_patches_each_pass_and_ends_clean(host, host_script):
    module, script, unet, adapter = host_script
    assert module.BACKEND.name == host.name
    if host.name == "Forge Neo":
        assert not hasattr(module.shared.sd_model, "is_sd2"), "Neo's models have no SD 2.x flag at all"
    p = txt2img_p(ARGS)
    script.process(p, *ARGS)
    assert "VMix error" not in p.extra_generation_params, p.extra_generation_params
    x, t, context = unet_inputs(batch=2, context_dim=768)
    expected = literal_eq9_unet(unet, adapter, None, 1.25)(x, t, context=context).detach()
    with torch.no_grad():
        plain = unet(x, t, context=context)
    base = p.sd_model.forge_objects_after_applying_lora.unet
    for hires in (False, True):  # Forge and Neo call process_before_every_sampling twice for hires, once unreset
        sampling_pass(host, p, script, ARGS, hires=hires)
        torch.testing.assert_close(sample(host, p, x, t, context), expected, atol=1e-5, rtol=0)
        by_key = p.sd_model.forge_objects.unet.model_options["transformer_options"]["patches_replace"]["attn2"]
        assert all(patcher.is_vmix_patch(patch) and patch.previous is None for patch in by_key.values())
        assert "patches_replace" not in base.model_options["transformer_options"], "the host's own patcher is clean"
    p.is_hr_pass = False  # sample_hr_pass ends; the host calls post_sample after it
    script.post_sample(p, None, *ARGS)
    assert p.sd_model.forge_objects.unet is base, "the patcher VMix found is back once the pass ends"
    torch.testing.assert_close(sample(host, p, x, t, context), plain, atol=1e-5, rtol=0)
    script.postprocess_batch(p, *ARGS, batch_number=0)
    script.postprocess(p, None, *ARGS)
    assert module.generation.run_of(p) is None
    assert p.extra_generation_params["VMix adapter"] == "film" and p.extra_generation_params["VMix scale"] == "1.25"


@pytest.mark.parametrize(
    "host, family", [("Forge Neo", "flux"), ("reForge", "sd3"), ("Forge", "flux")], indirect=["host"]
)
def test_models_without_cross_attention_are_refused(host, host_script, family, capfd):
    import html

    from modules import shared

    module, script, _, _ = host_script
    shared.sd_model = make_sd_model(host, torch.nn.Linear(2, 2), family)
    p = txt2img_p(ARGS)
    script.process(p, *ARGS)
    error = p.extra_generation_params["VMix error"]
    families = "SD 1.x and SDXL" if host.name == "Forge Neo" else "SD 1.x, SD 2.x and SDXL"
    assert "has no cross-attention layers" in error and f"VMix on {host.name} works with {families} models" in error
    assert "VMix adapter" not in p.extra_generation_params, "nothing in the infotext would switch VMix on"
    assert error in html.unescape(module.status.current("txt2img", "film"))
    sampling_pass(host, p, script, ARGS)
    assert "patches_replace" not in p.sd_model.forge_objects.unet.model_options["transformer_options"]
    assert "[VMix]" in capfd.readouterr().err


@pytest.mark.parametrize("ip_first", [True, False], ids=["ip-adapter-first", "vmix-first"])
def test_script_with_the_ip_adapter_in_the_same_pass(host, host_script, ip_first):
    """The built-in IP-Adapter applies from ControlNet's process_before_every_sampling, which the host may run
    before or after VMix's: ``forge_objects.unet = apply_ipadapter(model=forge_objects.unet)``."""
    _, script, unet, adapter = host_script
    _, units, apply = ip_units(unet, adapter)

    def ip_adapter_unit(p):
        p.sd_model.forge_objects.unet = apply(p.sd_model.forge_objects.unet, units[0])

    p = txt2img_p(ARGS)
    script.process(p, *ARGS)
    reset_before_sampling(p.sd_model)
    if ip_first:
        ip_adapter_unit(p)
    script.process_before_every_sampling(p, *ARGS, x=None, noise=None, c=None, uc=None)
    if not ip_first:
        ip_adapter_unit(p)
    reference = mixed_then_ip_reference(host, unet, adapter, apply(host.unet_patcher(unet), units[0]), scale=1.25)
    x, t, context = unet_inputs(batch=2, context_dim=768)
    with torch.no_grad():
        expected = unet_forward(host.site, unet, x, t, context, reference.model_options, [UNCOND, COND])
    torch.testing.assert_close(sample(host, p, x, t, context), expected, atol=1e-5, rtol=0)
    script.post_sample(p, None, *ARGS)
    left = p.sd_model.forge_objects.unet.model_options["transformer_options"].get("patches_replace", {})
    assert not any(patcher.is_vmix_patch(patch) for patch in left.get("attn2", {}).values()), "VMix is gone"
    assert bool(left) == ip_first, "what the pass ends with is the patcher VMix found (the IP-Adapter's, if first)"
    script.postprocess(p, None, *ARGS)
