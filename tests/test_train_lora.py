"""The trainer's optional LoRA: hooks that start as a no-op and come off cleanly, a kohya-format file whose keys A1111
and Forge place on the right ldm layers, and numbers that match the hosts' weight merge.

The two host stand-ins below were written from reading the hosts' loaders, not copied:
- A1111: extensions-builtin/Lora/networks.py, ``convert_diffusers_name_to_compvis`` (diffusers block numbers to ldm
  ones, with three ldm input/output blocks per level) and ``assign_network_names_to_compvis_modules`` (every module of
  ``sd_model.model`` under its dotted name with '.' -> '_', so UNet layers are ``diffusion_model_…``), and
  ``load_network`` (split at the first '.', then the converted name, then ``lora_unet`` -> ``diffusion_model``).
- Forge: backend/patcher/lora.py ``model_lora_keys_unet``, which uses packages_3rdparty/comfyui_lora_collection
  (lora.py ``model_lora_keys_unet``: ``lora_unet_<diffusers key without .weight, '.' -> '_'>`` -> the model's
  ``diffusion_model.<ldm key>``; utils.py ``unet_to_diffusers``: the diffusers -> ldm map built from the UNet config).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from helpers import random_adapter, tiny_diffusers_unet
from ldm.modules.attention import SpatialTransformer
from safetensors.torch import load_file, safe_open, save_file
from tiny_checkpoint import (
    CONTEXT_DIM,
    SDXL_UNET_PARAMS,
    UNET_PARAMS,
    TinyLdmModel,
    original_config,
    write_tokenizer,
)
from torch import nn

from vmix_ext.hooks import ValueMixer
from vmix_ext.mixing import MixOptions
from vmix_train.checkpoint import load_single_file
from vmix_train.lora import LoraError, LoraSet, lora_targets, merged_weight, read_lora_file, webui_layout_problem

# Two ResNets per level as in every SD UNet: A1111's converter assumes that layout (see webui_layout_problem).
SD_LAYOUT = {**UNET_PARAMS, "num_res_blocks": 2}
RANK, ALPHA = 4, 2.0  # alpha != rank, so the alpha/rank scale is tested too


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora")
    model = TinyLdmModel(unet_params=SD_LAYOUT)
    path = model.save(folder / "tiny-sd1.safetensors")
    base = load_single_file(
        path, original_config=original_config(unet_params=SD_LAYOUT), tokenizer=write_tokenizer(folder / "tok")
    )
    return model, base, path


def inputs(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=generator).to(dtype)
    context = torch.randn(2, 77, CONTEXT_DIM, generator=generator).to(dtype)
    return x, torch.tensor([10, 700]), context


def randomise_up(lora: LoraSet, seed: int = 3, std: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pair in lora.pairs().values():
            pair.lora_up.weight.copy_(torch.randn(pair.lora_up.weight.shape, generator=generator) * std)


def run(unet: nn.Module, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x, t, context = inputs(seed, dtype)
    return unet(x, t, encoder_hidden_states=context).sample


# -- host stand-ins -------------------------------------------------------------------------------------------------


def a1111_layer_names(ldm_unet: nn.Module) -> dict[str, nn.Module]:
    """A1111's network_layer_mapping for the UNet: ``sd_model.model`` holds it as ``diffusion_model``."""
    return {("diffusion_model." + name).replace(".", "_"): module for name, module in ldm_unet.named_modules()}


def a1111_convert(key: str) -> str:
    """The UNet block part of A1111's convert_diffusers_name_to_compvis (attentions keep their suffix; three ldm
    blocks per level, a fixed number)."""
    m = re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        level, index = int(m[1]), int(m[3])
        return f"diffusion_model_input_blocks_{1 + level * 3 + index}_{1 if m[2] == 'attentions' else 0}_{m[4]}"
    m = re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        return f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{m[3]}"
    m = re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
    if m:
        level, index = int(m[1]), int(m[3])
        return f"diffusion_model_output_blocks_{level * 3 + index}_{1 if m[2] == 'attentions' else 0}_{m[4]}"
    return key


def a1111_find(file_key: str, layers: dict[str, nn.Module]) -> tuple[str, nn.Module | None]:
    """What A1111's load_network does with one file key: (the part, the module it lands on or None)."""
    base, _, part = file_key.partition(".")
    module = layers.get(a1111_convert(base))
    if module is None and "lora_unet" in base:  # its fallback for keys already in ldm form (SDXL LoRAs)
        module = layers.get(base.replace("lora_unet", "diffusion_model"))
    return part, module


_TRANSFORMER_LINEARS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
_TRANSFORMER_LINEARS += ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")


def forge_key_map(params: dict) -> dict[str, str]:
    """Forge's UNet LoRA key map (kohya form only) for an ldm config: ``lora_unet_<diffusers path>`` -> ldm weight."""
    levels, per_level, depth = len(params["channel_mult"]), params["num_res_blocks"], params["transformer_depth"]
    has_attention = [2**level in params["attention_resolutions"] for level in range(levels)]
    pairs: list[tuple[str, str]] = []  # (diffusers transformer path, ldm transformer path)
    for level in range(levels):
        for i in range(per_level):
            if has_attention[level]:
                pairs.append(
                    (f"down_blocks.{level}.attentions.{i}", f"input_blocks.{1 + (per_level + 1) * level + i}.1")
                )
    pairs.append(("mid_block.attentions.0", "middle_block.1"))
    for level in range(levels):
        for i in range(per_level + 1):
            if has_attention[levels - 1 - level]:
                pairs.append((f"up_blocks.{level}.attentions.{i}", f"output_blocks.{(per_level + 1) * level + i}.1"))
    key_map = {}
    for diffusers, ldm in pairs:
        subs = ["proj_in", "proj_out"]
        subs += [f"transformer_blocks.{t}.{s}" for t in range(depth) for s in _TRANSFORMER_LINEARS]
        for sub in subs:
            key_map["lora_unet_" + f"{diffusers}.{sub}".replace(".", "_")] = f"diffusion_model.{ldm}.{sub}.weight"
    return key_map


def ldm_transformer_linears(ldm_unet: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside the ldm UNet's SpatialTransformers, by its ldm name: what the LoRA must cover."""
    found = {}
    for name, module in ldm_unet.named_modules():
        if isinstance(module, SpatialTransformer):
            for sub, layer in module.named_modules():
                if isinstance(layer, nn.Linear):
                    found[f"{name}.{sub}"] = layer
    return found


# -- tests ----------------------------------------------------------------------------------------------------------


def test_targets_are_the_transformer_linears_in_fp32_with_up_zero(tiny):
    model, base, _ = tiny
    lora = LoraSet(base.unet, RANK, ALPHA, seed=0)
    assert len(lora.paths) == len(ldm_transformer_linears(model.unet)) == 11 * 12  # 11 transformers here
    assert all(isinstance(m, nn.Linear) for m in lora_targets(base.unet).values())
    names = [n for n, _ in lora.named_parameters()]
    assert names[0] == "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"
    assert names == [n for n, _ in LoraSet(base.unet, RANK, ALPHA, seed=5).named_parameters()]  # stable names
    for pair in lora.pairs().values():
        assert pair.lora_down.weight.dtype == pair.lora_up.weight.dtype == torch.float32
        assert pair.lora_down.weight.shape[0] == pair.lora_up.weight.shape[1] == RANK
        assert not pair.lora_up.weight.any() and pair.lora_down.weight.abs().sum() > 0
        bound = 1 / pair.lora_down.in_features**0.5  # kaiming_uniform(a=√5) = U(±1/√fan_in)
        assert pair.lora_down.weight.abs().max() <= bound
    assert lora.scale == ALPHA / RANK
    assert torch.equal(
        next(iter(LoraSet(base.unet, RANK, seed=7).parameters())),
        next(iter(LoraSet(base.unet, RANK, seed=7).parameters())),
    )


def test_sd1_style_conv_projections_are_skipped_and_other_layouts_flagged():
    unet = tiny_diffusers_unet()  # SD 1.x style: 1x1 conv proj_in/proj_out; one ResNet per level
    paths = list(lora_targets(unet))
    assert paths and not any("proj_in" in p or "proj_out" in p for p in paths)
    assert len(paths) == (2 + 1 + 4) * 10  # down, mid, up transformers; 10 Linear layers each
    assert "1 ResNet block(s) per level" in webui_layout_problem(unet)


def test_fresh_lora_is_a_no_op_random_up_changes_output_detach_restores(tiny):
    _, base, _ = tiny
    with torch.no_grad():
        plain = run(base.unet)
        lora = LoraSet(base.unet, RANK, ALPHA, seed=0).attach(base.unet)
        try:
            assert torch.equal(run(base.unet), plain)
            randomise_up(lora)
            changed = run(base.unet)
            assert (changed - plain).abs().max() > 1e-2
            lora.multiplier = 0.0
            assert torch.equal(run(base.unet), plain)
            lora.multiplier = 1.0
        finally:
            lora.detach()
        assert torch.equal(run(base.unet), plain)
        assert lora.attached_unet is None
        assert not any(m._forward_hooks for m in base.unet.modules())


def test_every_saved_key_lands_on_an_ldm_layer_in_a1111_and_forge(tiny, tmp_path):
    model, base, _ = tiny
    tensors = assert_keys_land_once_in_both_hosts(model, base, SD_LAYOUT, tmp_path)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in tensors
    assert a1111_convert("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q") == (
        "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    )
    assert a1111_convert("lora_unet_up_blocks_1_attentions_2_proj_out") == "diffusion_model_output_blocks_5_1_proj_out"


def test_sdxl_lora_keys_land_on_the_sgm_unet_layers_in_a1111_and_forge(tmp_path):
    """SDXL's layout: no attention at the first level, two transformer blocks per layer, 2048-wide context."""
    params = {**SDXL_UNET_PARAMS, "num_res_blocks": 2, "attention_resolutions": [2]}
    model = TinyLdmModel(unet_params=params, family="sdxl")
    path = model.save(tmp_path / "tiny-sdxl.safetensors")
    config = original_config(unet_params=params, family="sdxl")
    base = load_single_file(path, original_config=config, tokenizer=write_tokenizer(tmp_path / "tok"))
    tensors = assert_keys_land_once_in_both_hosts(model, base, params, tmp_path)
    assert "lora_unet_down_blocks_1_attentions_1_transformer_blocks_1_attn2_to_k.lora_down.weight" in tensors
    assert not any(k.startswith("lora_unet_down_blocks_0_") for k in tensors)
    assert read_lora_file(tmp_path / "style.safetensors")[1]["ss_base_model_version"] == "sdxl_base_v1-0"


def assert_keys_land_once_in_both_hosts(model: TinyLdmModel, base, params: dict, tmp_path) -> dict[str, torch.Tensor]:
    """Save a LoRA of ``base.unet``; every key must land on the same ldm Linear under A1111's and Forge's
    conversions, with the right shapes, and every transformer Linear of ``model.unet`` must get exactly one pair."""
    assert webui_layout_problem(base.unet) is None
    lora = LoraSet(base.unet, RANK, ALPHA, seed=0)
    path = lora.save(tmp_path / "style.safetensors")
    tensors = load_file(str(path))

    ldm_state = {"diffusion_model." + k for k in model.unet.state_dict()}
    a1111_layers = a1111_layer_names(model.unet)
    forge = forge_key_map(params)
    ldm_by_id = {id(m): n for n, m in model.unet.named_modules()}
    placed: dict[str, set[str]] = {}
    for key, value in tensors.items():
        part, module = a1111_find(key, a1111_layers)
        assert module is not None, f"A1111 would not match {key}"
        assert isinstance(module, nn.Linear) and part in ("lora_down.weight", "lora_up.weight", "alpha")
        if part == "lora_down.weight":
            assert tuple(value.shape) == (RANK, module.in_features)
        elif part == "lora_up.weight":
            assert tuple(value.shape) == (module.out_features, RANK)
        else:
            assert value.dim() == 0 and value.item() == ALPHA
        base_key = key.partition(".")[0]
        assert forge[base_key] in ldm_state  # Forge's load_lora looks the base key up in this map
        assert forge[base_key] == f"diffusion_model.{ldm_by_id[id(module)]}.weight"  # both hosts pick one layer
        placed.setdefault(ldm_by_id[id(module)], set()).add(part)
    assert set(placed) == set(ldm_transformer_linears(model.unet))  # every target covered, each once
    assert all(parts == {"lora_down.weight", "lora_up.weight", "alpha"} for parts in placed.values())
    return tensors


def test_merging_the_file_into_the_ldm_unet_gives_the_hooked_diffusers_output(tiny, tmp_path):
    model, base, _ = tiny
    x, t, context = inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(
            base.unet(x, t, encoder_hidden_states=context).sample,
            model.unet(x, t, context=context),
            atol=1e-5,
            rtol=1e-5,
        )  # the same weights without LoRA
        lora = LoraSet(base.unet, RANK, ALPHA, seed=0)
        randomise_up(lora)
        path = lora.save(tmp_path / "style.safetensors", dtype=torch.float32)
        with lora.attach(base.unet):
            hooked = base.unet(x, t, encoder_hidden_states=context).sample

        merged = copy.deepcopy(model.unet)
        layers = a1111_layer_names(merged)
        tensors = load_file(str(path))
        for key in [k for k in tensors if k.endswith(".lora_down.weight")]:
            name = key.removesuffix(".lora_down.weight")
            _, module = a1111_find(key, layers)
            down, up = tensors[key], tensors[f"{name}.lora_up.weight"]
            alpha = tensors[f"{name}.alpha"].item()
            original = module.weight.clone()
            module.weight.copy_(original + (alpha / down.shape[0]) * up @ down)
            torch.testing.assert_close(module.weight, merged_weight(original, down, up, alpha))  # lora.py's helper
        ldm = merged(x, t, context=context)
        plain = model.unet(x, t, context=context)
    torch.testing.assert_close(ldm, hooked, atol=1e-5, rtol=1e-5)
    assert (ldm - plain).abs().max() > 1e-2  # the LoRA matters in this comparison


def test_lora_and_vmix_hooks_compose_in_either_order(tiny):
    _, base, _ = tiny
    values = {k: v.detach() for k, v in random_adapter(base.unet).aesthetic_values({"color": 1.0}).items()}
    lora = LoraSet(base.unet, RANK, ALPHA, seed=0)
    randomise_up(lora)
    with torch.no_grad():
        plain = run(base.unet)
        with ValueMixer(values, MixOptions(scale=0.8)) as mixer:
            mixer.attach(base.unet)
            with lora.attach(base.unet):
                vmix_first = run(base.unet)
        with lora.attach(base.unet):
            lora_only = run(base.unet)
            with ValueMixer(values, MixOptions(scale=0.8)) as mixer:
                mixer.attach(base.unet)
                lora_first = run(base.unet)
    torch.testing.assert_close(vmix_first, lora_first, atol=1e-5, rtol=1e-5)  # sums in another order
    assert (vmix_first - lora_only).abs().max() > 1e-3 and (lora_only - plain).abs().max() > 1e-3


def test_save_load_round_trip_and_header(tiny, tmp_path):
    _, base, _ = tiny
    lora = LoraSet(base.unet, RANK, ALPHA, seed=0)
    randomise_up(lora)
    exact = lora.save(
        tmp_path / "exact.safetensors", {"ss_output_name": "style", "ss_network_dim": "99"}, torch.float32
    )
    assert not list(tmp_path.glob("*.tmp"))
    loaded = LoraSet.load(exact, base.unet)
    assert (loaded.rank, loaded.alpha, loaded.paths) == (lora.rank, lora.alpha, lora.paths)
    for (name, value), (name2, value2) in zip(lora.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert name == name2 and torch.equal(value, value2) and value2.dtype == torch.float32
    with safe_open(str(exact), "pt") as handle:
        meta = handle.metadata()
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_network_dim"] == str(RANK) and float(meta["ss_network_alpha"]) == ALPHA  # ours win over "99"
    assert meta["ss_output_name"] == "style" and meta["ss_v2"] == "False"

    half = LoraSet.load(lora.save(tmp_path / "half.safetensors"), base.unet)  # fp16 by default
    assert load_file(str(tmp_path / "half.safetensors"))[next(iter(lora.state_dict()))].dtype == torch.float16
    for value, value2 in zip(lora.state_dict().values(), half.state_dict().values(), strict=True):
        assert torch.equal(value.half().float(), value2)

    fresh = LoraSet(base.unet, RANK, ALPHA, seed=9)
    fresh.load_state_dict(lora.state_dict())  # what a training state restores, by the same names
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), lora.parameters(), strict=True))


def test_bad_files_name_the_file(tiny, tmp_path):
    _, base, checkpoint = tiny
    with pytest.raises(LoraError, match=re.escape(str(checkpoint)) + ".*not a kohya-format UNet LoRA"):
        LoraSet.load(checkpoint, base.unet)
    good = LoraSet(base.unet, RANK, ALPHA, seed=0).save(tmp_path / "good.safetensors")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(LoraError, match=re.escape(str(damaged)) + ".*not a readable"):
        LoraSet.load(damaged, base.unet)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file")
    with pytest.raises(LoraError, match=re.escape(str(garbage))):
        LoraSet.load(garbage, base.unet)
    with pytest.raises(LoraError, match=r"nothing\.safetensors.*not found"):
        LoraSet.load(tmp_path / "nothing.safetensors", base.unet)
    (tmp_path / "old.ckpt").write_bytes(b"never unpickled")
    with pytest.raises(LoraError, match=r"old\.ckpt.*pickle"):
        LoraSet.load(tmp_path / "old.ckpt", base.unet)

    tensors = load_file(str(good))
    partial = {k: v for k, v in tensors.items() if "proj_in" not in k}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(LoraError, match=r"partial\.safetensors.*lacks lora_unet_down_blocks_0_attentions_0_proj_in"):
        LoraSet.load(tmp_path / "partial.safetensors", base.unet)
    wrong = dict(tensors)
    key = next(k for k in wrong if k.endswith("lora_up.weight"))
    wrong[key] = torch.zeros(wrong[key].shape[0] + 1, RANK, dtype=torch.float16)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(LoraError, match=r"wrong\.safetensors.*has shape"):
        LoraSet.load(tmp_path / "wrong.safetensors", base.unet)


def test_bf16_unet_keeps_fp32_lora_weights_and_gradients_reach_them(tiny):
    _, base, _ = tiny
    unet = copy.deepcopy(base.unet).to(torch.bfloat16)
    lora = LoraSet(unet, RANK, ALPHA, seed=0)
    with lora.attach(unet):
        output = run(unet, dtype=torch.bfloat16)
        assert output.dtype == torch.bfloat16
        output.float().pow(2).mean().backward()
        for pair in lora.pairs().values():
            assert pair.lora_up.weight.dtype == torch.float32 and pair.lora_up.weight.grad.dtype == torch.float32
            assert pair.lora_down.weight.grad is not None  # zero until up moves away from zero
        assert sum(p.lora_up.weight.grad.abs().sum() for p in lora.pairs().values()) > 0

        lora.zero_grad()
        randomise_up(lora)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as the training loop runs it
            loss = run(unet, dtype=torch.bfloat16).float().pow(2).mean()
        loss.backward()
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in lora.parameters())
        assert all(p.lora_down.weight.grad.abs().sum() > 0 for p in lora.pairs().values())
    assert not any(p.requires_grad for p in unet.parameters())
