"""diffusers UNets (the trainer's model implementation) are addressed by the same ldm layer paths."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from helpers import DIMENSIONS, SD15_UNET_CONFIG, random_adapter, tiny_diffusers_unet, tiny_unet
from ldm.modules.diffusionmodules.openaimodel import UNetModel

from vmix_ext.adapter import VMixAdapter
from vmix_ext.hooks import ValueMixer, has_vmix_hooks
from vmix_ext.layers import cross_attention_layers, diffusers_to_ldm_path, layer_widths
from vmix_ext.mixing import MixOptions, tile_tokens
from vmix_ext.weights import check_adapter_fits

SD15_DIFFUSERS = {"cross_attention_dim": 768, "attention_head_dim": 8}
SDXL_DIFFUSERS = {
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


def test_sd15_paths_match_ldm_exactly():
    with torch.device("meta"):  # names and widths only: no memory for 860M parameters
        diffusers_unet = UNet2DConditionModel(**SD15_DIFFUSERS)
        ldm_unet = UNetModel(**SD15_UNET_CONFIG)
    assert layer_widths(diffusers_unet) == layer_widths(ldm_unet)
    assert len(layer_widths(ldm_unet)) == 16


def test_sdxl_paths_follow_the_ldm_convention():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_DIFFUSERS)
    widths = layer_widths(unet)
    assert len(widths) == 70
    assert widths["input_blocks.7.1.transformer_blocks.3.attn2"] == (2048, 1280)
    assert widths["input_blocks.4.1.transformer_blocks.1.attn2"] == (2048, 640)
    assert widths["middle_block.1.transformer_blocks.9.attn2"] == (2048, 1280)
    assert widths["output_blocks.0.1.transformer_blocks.9.attn2"] == (2048, 1280)
    assert widths["output_blocks.5.1.transformer_blocks.1.attn2"] == (2048, 640)
    assert not any(path.startswith(("input_blocks.1.", "input_blocks.2.", "output_blocks.6.")) for path in widths)


def test_path_translation_errors():
    assert diffusers_to_ldm_path("up_blocks.1.attentions.2.transformer_blocks.0.attn2", 2) == (
        "output_blocks.5.1.transformer_blocks.0.attn2"
    )
    with pytest.raises(ValueError, match="not a diffusers cross-attention layer path"):
        diffusers_to_ldm_path("down_blocks.0.resnets.0", 2)


def test_an_adapter_fits_both_implementations_of_one_architecture(tmp_path):
    ldm_unet, diffusers_unet = tiny_unet(768), tiny_diffusers_unet()
    assert layer_widths(diffusers_unet) == layer_widths(ldm_unet)
    adapter = random_adapter(ldm_unet)
    check_adapter_fits(adapter, diffusers_unet, tmp_path / "a.safetensors")
    made_from_diffusers = VMixAdapter.untrained(
        diffusers_unet, DIMENSIONS, torch.randn(3, 768), torch.randn(3, 768), "sd1"
    )
    assert set(made_from_diffusers.layer_paths) == set(cross_attention_layers(ldm_unet))  # module order differs


def test_hooks_on_a_diffusers_layer_equal_eq9():
    unet = tiny_diffusers_unet()
    adapter = random_adapter(tiny_unet(768))
    path = "input_blocks.1.1.transformer_blocks.0.attn2"
    layer = cross_attention_layers(unet)[path]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 32, generator=generator)
    context = torch.randn(2, 154, 768, generator=generator)
    values = adapter.aesthetic_values(None)
    with torch.no_grad():
        heads, dim = layer.heads, layer.to_q.out_features // layer.heads
        q, k, v_c = layer.to_q(x), layer.to_k(context), layer.to_v(context)
        v_a = tile_tokens(values[path], 154).expand_as(v_c)

        def split(t):
            return t.view(2, -1, heads, dim).transpose(1, 2)

        attention = (split(q) @ split(k).transpose(-1, -2) / dim**0.5).softmax(-1)
        two_terms = attention @ split(v_c) + 0.8 * (attention @ split(v_a))
        expected = layer.to_out[0](two_terms.transpose(1, 2).reshape(2, -1, heads * dim))
        with ValueMixer(values, MixOptions(scale=0.8)) as mixer:
            mixer.attach(unet)
            got = layer(x, encoder_hidden_states=context)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not has_vmix_hooks(unet)


def test_untrained_adapter_on_diffusers_is_bit_identical():
    unet = tiny_diffusers_unet()
    adapter = VMixAdapter.untrained(unet, DIMENSIONS, torch.randn(3, 768), torch.randn(3, 768), "sd1")
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 10]), torch.randn(2, 77, 768)
    uncond = context[1:]
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=context).sample
        with ValueMixer(adapter.aesthetic_values(None), MixOptions(cond_only=True)) as mixer:
            mixer.set_uncond_context(uncond)
            mixer.attach(unet)
            same = unet(x, t, encoder_hidden_states=context).sample
            assert mixer._cond_rows.tolist() == [0]  # found through encoder_hidden_states
    assert torch.equal(plain, same)
