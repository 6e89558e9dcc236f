"""A WebUI single-file checkpoint loads offline into diffusers modules that compute what the ldm original computes,
and an adapter trained on them fits A1111's ldm UNet layer for layer."""

from __future__ import annotations

import pytest
import torch
from helpers import random_adapter
from safetensors.torch import save_file
from tiny_checkpoint import (
    CONTEXT_DIM,
    SD2_UNET_PARAMS,
    TINY_OPTIONS,
    TinyLdmModel,
    original_config,
    write_dataset,
    write_tokenizer,
)

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
    refiner = tmp_path / "refiner.safetensors"
    unet_weight = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}
    save_file({"conditioner.embedders.0.model.token_embedding.weight": torch.zeros(2, 2)} | unet_weight, str(refiner))
    with pytest.raises(CheckpointError, match=r"refiner\.safetensors.*SDXL refiner.*SDXL base"):
        load_single_file(refiner, tokenizer=tokenizer)
    text_only = tmp_path / "text.safetensors"
    save_file({"conditioner.embedders.1.model.token_embedding.weight": torch.zeros(2, 2)}, str(text_only))
    with pytest.raises(CheckpointError, match="not a Stable Diffusion checkpoint"):
        load_single_file(text_only, tokenizer=tokenizer)
    unknown = tmp_path / "unknown.safetensors"
    save_file(unet_weight, str(unknown))
    with pytest.raises(CheckpointError, match="no text encoder this trainer knows"):
        load_single_file(unknown, tokenizer=tokenizer)
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


def test_an_sd2_checkpoint_gives_the_penultimate_openclip_context_and_v_prediction(tmp_path):
    model = TinyLdmModel(family="sd2")
    path = model.save(tmp_path / "tiny-sd2.safetensors")
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    config = original_config(unet_params=SD2_UNET_PARAMS)
    base = load_single_file(path, original_config=config, tokenizer=tokenizer, prediction="v")
    assert base.family == "sd2" and base.scheduler.config.prediction_type == "v_prediction"
    ids = base.tokenize(["a cat"])
    eos = base.eos_token_id
    first_end = int((ids[0] == eos).nonzero()[0])
    assert (ids[0, first_end + 1 :] == 0).all()  # OpenCLIP pads with 0 after the end-of-text token, as A1111 does
    with torch.no_grad():
        hidden = model.clip(ids, output_hidden_states=True).hidden_states[-2]  # ldm's layer = "penultimate"
        expected = model.clip.final_layer_norm(hidden) if hasattr(model.clip, "final_layer_norm") else None
        if expected is None:
            expected = model.clip.text_model.final_layer_norm(hidden)
        torch.testing.assert_close(base.encode_text(["a cat"]), expected, atol=1e-5, rtol=1e-5)
        x, t = torch.randn(1, 4, 8, 8), torch.tensor([400])
        context = torch.randn(1, 77, 1024)
        torch.testing.assert_close(
            base.unet(x, t, encoder_hidden_states=context).sample,
            model.unet(x, t, context=context),
            atol=1e-5,
            rtol=1e-5,
        )


def test_an_sd2_checkpoint_needs_its_prediction_type(tmp_path):
    path = TinyLdmModel(family="sd2").save(tmp_path / "tiny-sd2.safetensors")
    with pytest.raises(CheckpointError, match=r'SD 2\.x checkpoint.*prediction = "v" or "epsilon"'):
        load_single_file(path, tokenizer=write_tokenizer(tmp_path / "tokenizer"))


def test_the_trainer_makes_an_sd2_adapter_that_fits_the_ldm_unet(tmp_path):
    import dataclasses

    from vmix_ext.adapter import Dimension
    from vmix_ext.weights import load_adapter
    from vmix_train.config import RunConfig
    from vmix_train.dataset import load_dataset
    from vmix_train.loop import Trainer

    model = TinyLdmModel(family="sd2")
    path = model.save(tmp_path / "tiny-sd2.safetensors")
    config = original_config(unet_params=SD2_UNET_PARAMS)
    base = load_single_file(path, original_config=config, tokenizer=write_tokenizer(tmp_path / "tok"), prediction="v")
    data = write_dataset(tmp_path / "data", [(16, 16)] * 4, ["light"])
    dims = (Dimension("light", "natural lighting", "sks1"),)
    options = dataclasses.replace(TINY_OPTIONS, learning_rate=0.0)  # the family's rate
    run = RunConfig(path, data, tmp_path / "out", dims, options, name="sd2-vmix")
    adapter_path = Trainer(run, base, load_dataset(data, ["light"]), device="cpu", progress=False).run()
    adapter = load_adapter(adapter_path)
    assert adapter.family == "sd2" and adapter.context_dim == 1024
    check_adapter_fits(adapter, model.unet, adapter_path)
