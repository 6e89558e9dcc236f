"""A WebUI single-file checkpoint loads offline into diffusers modules that compute what the ldm original computes,
and an adapter trained on them fits A1111's ldm UNet layer for layer."""

from __future__ import annotations

import pytest
import torch
from helpers import random_adapter
from safetensors.torch import save_file
from tiny_checkpoint import CONTEXT_DIM, TinyLdmModel, original_config, write_tokenizer

from vmix_ext.hooks import ValueMixer
from vmix_ext.mixing import MixOptions
from vmix_ext.weights import check_adapter_fits
from vmix_train.checkpoint import CheckpointError, load_single_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    model = TinyLdmModel()
    path = model.save(folder / "tiny-sd1.safetensors")
    tokenizer = write_tokenizer(folder / "tokenizer")
    base = load_single_file(path, original_config=original_config(), tokenizer=tokenizer)
    return model, base, path, tokenizer


def test_unet_vae_and_text_encoder_compute_what_the_ldm_modules_compute(tiny):
    model, base, _, _ = tiny
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([10, 700])
    context = torch.randn(2, 77, CONTEXT_DIM, generator=generator)
    with torch.no_grad():
        expected = model.unet(x, t, context=context)
        got = base.unet(x, t, encoder_hidden_states=context).sample
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        z = torch.randn(1, 4, 8, 8, generator=generator)
        decoded = model.decoder(model.post_quant_conv(z))
        torch.testing.assert_close(base.vae.decode(z).sample, decoded, atol=1e-5, rtol=1e-5)
        ids = base.tokenize(["a cat in the rain"])
        torch.testing.assert_close(base.encode_text(["a cat in the rain"]), model.clip(ids).last_hidden_state)
    assert base.family == "sd1"
    assert base.scheduler.config.prediction_type == "epsilon"
    assert base.vae.config.scaling_factor == pytest.approx(0.18215)
    assert all(not p.requires_grad for m in base.modules() for p in m.parameters())


def test_an_adapter_made_on_the_loaded_unet_mixes_the_same_on_the_ldm_unet(tiny):
    """The trainer runs diffusers, A1111 runs ldm: same layer keys, same numbers."""
    model, base, _, _ = tiny
    adapter = random_adapter(base.unet)
    check_adapter_fits(adapter, model.unet, "adapter.safetensors")
    generator = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([300, 300])
    context = torch.randn(2, 77, CONTEXT_DIM, generator=generator)
    values = {k: v.detach() for k, v in adapter.aesthetic_values({"color": 1.0}).items()}
    with torch.no_grad():
        with ValueMixer(values, MixOptions(scale=0.8)) as mixer:
            mixer.attach(model.unet)
            ldm = model.unet(x, t, context=context)
        with ValueMixer(values, MixOptions(scale=0.8)) as mixer:
            mixer.attach(base.unet)
            diffusers = base.unet(x, t, encoder_hidden_states=context).sample
        plain = model.unet(x, t, context=context)
    torch.testing.assert_close(diffusers, ldm, atol=1e-5, rtol=1e-5)
    assert (ldm - plain).abs().max() > 1e-3  # the adapter does change the output


def test_v_parameterization_gives_a_v_prediction_schedule(tiny):
    _, _, path, tokenizer = tiny
    base = load_single_file(path, original_config=original_config("v"), tokenizer=tokenizer)
    assert base.scheduler.config.prediction_type == "v_prediction"


def test_a_yaml_config_file_is_read(tiny, tmp_path):
    yaml = pytest.importorskip("yaml")
    _, _, path, tokenizer = tiny
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(original_config()))
    base = load_single_file(path, original_config=config, tokenizer=tokenizer)
    assert base.unet.config.cross_attention_dim == CONTEXT_DIM


def test_pickle_checkpoints_are_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not opened")
    with pytest.raises(CheckpointError, match=r"model\.ckpt.*pickle.*safetensors"):
        load_single_file(ckpt)


def test_unreadable_and_foreign_files_name_the_problem(tiny, tmp_path):
    _, _, _, tokenizer = tiny
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match=r"broken\.safetensors.*not a readable"):
        load_single_file(broken, tokenizer=tokenizer)
    with pytest.raises(CheckpointError, match="file not found"):
        load_single_file(tmp_path / "missing.safetensors")
    sdxl = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.1.model.token_embedding.weight": torch.zeros(2, 2)}, str(sdxl))
    with pytest.raises(CheckpointError, match=r"sdxl checkpoint.*SD 1\.x"):
        load_single_file(sdxl, tokenizer=tokenizer)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    with pytest.raises(CheckpointError, match="not a Stable Diffusion checkpoint"):
        load_single_file(lora, tokenizer=tokenizer)


def test_a_config_for_another_model_is_reported(tiny):
    _, _, path, tokenizer = tiny
    config = original_config()
    config["model"]["params"]["unet_config"]["params"]["model_channels"] = 64
    with pytest.raises(CheckpointError, match="UNet does not match the model config"):
        load_single_file(path, original_config=config, tokenizer=tokenizer)


def test_a_missing_tokenizer_says_where_to_find_one(tiny, tmp_path):
    _, _, path, _ = tiny
    with pytest.raises(CheckpointError, match=r"no CLIP tokenizer.*vocab\.json and merges\.txt"):
        load_single_file(path, original_config=original_config(), tokenizer=tmp_path)
