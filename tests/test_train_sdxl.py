"""SDXL in the trainer: an sgm-format single-file checkpoint loads into diffusers/transformers modules that compute
what sgm computes (two text encoders, pooled text, size conditioning), AesEmb comes from both encoders, and a
training run writes an adapter that the A1111 path loads onto the ldm UNet and mixes to the same numbers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_checkpoint import (
    SDXL_UNET_PARAMS,
    TINY_OPTIONS,
    TinyLdmModel,
    original_config,
    write_dataset,
    write_tokenizer,
)

from vmix_ext.adapter import Dimension
from vmix_ext.hooks import ValueMixer
from vmix_ext.library import AdapterLibrary
from vmix_ext.mixing import MixOptions
from vmix_ext.weights import check_adapter_fits
from vmix_train.checkpoint import CheckpointError, load_single_file
from vmix_train.config import RunConfig, TrainingOptions
from vmix_train.dataset import load_dataset
from vmix_train.embeddings import aesthetic_embeddings
from vmix_train.loop import Trainer, stream

DIMS = (Dimension("light", "natural lighting", "sks1"), Dimension("color", "vivid colour", "sks2"))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl")
    model = TinyLdmModel(family="sdxl")
    path = model.save(folder / "tiny-sdxl.safetensors")
    tokenizer = write_tokenizer(folder / "tokenizer")
    config = original_config(unet_params=SDXL_UNET_PARAMS, family="sdxl")
    base = load_single_file(path, original_config=config, tokenizer=tokenizer)
    return model, base, path, tokenizer


def sgm_text(model: TinyLdmModel, base, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What sgm's conditioner gives for ``texts``: CLIP ViT-L's ``hidden_states[11]`` of 12 layers (here the
    penultimate) and bigG's penultimate block without ``ln_final``, concatenated; and bigG's pooled vector,
    ``ln_final(last)[end of text] @ text_projection``. bigG's tokens are padded with 0 after the end of text."""
    ids = base.tokenize(texts)
    eos = base.eos_token_id
    ids_g = ids.masked_fill((ids == eos).int().cumsum(-1) > 1, 0)
    with torch.no_grad():
        first = model.clip(ids, output_hidden_states=True).hidden_states[-2]
        out = model.clip_g(ids_g, output_hidden_states=True)
        end = (ids_g == eos).int().argmax(-1)
        pooled = out.last_hidden_state[torch.arange(len(texts)), end] @ model.text_projection
    return torch.cat([first, out.hidden_states[-2]], dim=-1), pooled


def test_sdxl_modules_compute_what_sgm_computes(sdxl):
    model, base, _, _ = sdxl
    assert base.family == "sdxl"
    assert base.scheduler.config.prediction_type == "epsilon"
    assert base.vae.config.scaling_factor == pytest.approx(0.13025)
    texts = ["a cat in the rain", "a dog"]
    text = base.encode(texts)
    context, pooled = sgm_text(model, base, texts)
    assert text.context.shape == (2, 77, 2048) and text.pooled.shape == (2, 1280)
    torch.testing.assert_close(text.context, context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text.pooled, pooled, atol=1e-5, rtol=1e-5)
    dropped = base.encode(["", "a dog"], zero_empty=True)  # A1111's empty negative prompt; sgm's caption dropout
    assert not dropped.context[0].any() and not dropped.pooled[0].any()
    torch.testing.assert_close(dropped.context[1], context[1], atol=1e-5, rtol=1e-5)
    assert base.encode([""]).context.abs().sum() > 0  # without zero_empty the empty text is encoded
    ids_g = base.tokenize_2(["a dog"])
    assert ids_g[0, 5] == base.eos_token_id and bool((ids_g[0, 6:] == 0).all())  # <start> a d o g <end> 0 …

    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([10, 700])
    sizes = torch.tensor([[1024.0, 768, 0, 64, 16, 16], [512, 512, 32, 0, 16, 16]])
    with torch.no_grad():
        expected = model.unet(x, t, context=context, y=model.sdxl_vector(pooled, sizes))
        got = base.unet(
            x, t, encoder_hidden_states=context, added_cond_kwargs={"text_embeds": pooled, "time_ids": sizes}
        )
        other_sizes = base.unet(
            x, t, encoder_hidden_states=context, added_cond_kwargs={"text_embeds": pooled, "time_ids": sizes.flip(0)}
        )
    torch.testing.assert_close(got.sample, expected, atol=1e-5, rtol=1e-5)
    assert (other_sizes.sample - got.sample).abs().max() > 1e-3  # the size conditioning reaches the output


def test_sdxl_aesthetic_embeddings_are_both_encoders_end_of_text_rows(sdxl):
    model, base, _, _ = sdxl
    positive, negative = aesthetic_embeddings(DIMS, base)
    assert positive.shape == negative.shape == (2, 2048)
    context, _ = sgm_text(model, base, ["natural lighting", "vivid colour"])
    # <start> n a t u r a l l i g h t i n g <end>: the end-of-text token is at 16, then 12.
    torch.testing.assert_close(positive, torch.stack([context[0, 16], context[1, 12]]), atol=1e-5, rtol=1e-5)


def test_sdxl_refuses_clip_skip(sdxl):
    _, _, path, tokenizer = sdxl
    config = original_config(unet_params=SDXL_UNET_PARAMS, family="sdxl")
    with pytest.raises(CheckpointError, match=r"SDXL always uses both text encoders' penultimate layers"):
        load_single_file(path, original_config=config, tokenizer=tokenizer, clip_skip=2)


def test_family_defaults_for_learning_rate_and_resolution():
    options = TrainingOptions()
    sdxl = options.for_model("sdxl", "epsilon")
    assert (sdxl.learning_rate, sdxl.resolution) == (1e-5, 1024)  # the paper's SDXL rate, SDXL's size
    assert (options.for_model("sd1", "epsilon").learning_rate, options.for_model("sd1", "epsilon").resolution) == (
        1e-4,
        512,
    )
    assert options.for_model("sd2", "v_prediction").resolution == 768
    assert options.for_model("sd2", "epsilon").resolution == 512
    chosen = dataclasses.replace(options, learning_rate=3e-5, resolution=640).for_model("sdxl", "epsilon")
    assert (chosen.learning_rate, chosen.resolution) == (3e-5, 640)


def test_a_tiny_sdxl_run_writes_an_adapter_the_a1111_path_loads(sdxl, tmp_path):
    model, base, path, _ = sdxl
    sizes = [(24, 16), (16, 32), (16, 16), (40, 20)]  # (width, height)
    data = write_dataset(tmp_path / "data", sizes, ["light", "color"])
    options = dataclasses.replace(
        TINY_OPTIONS,  # 2 steps of 2 images in 16² px buckets
        learning_rate=1e-2,
        sample_count=1,
        sample_every=2,
        caption_dropout=0.5,
        seed=1,  # one whose dropout draws for the first 4 positions are mixed (checked below)
        save_dtype="fp32",
    )
    models = tmp_path / "models" / "VMix"
    run = RunConfig(path, data, models, DIMS, options, name="sdxl-vmix")
    trainer = Trainer(run, base, load_dataset(data, ["light", "color"]), device="cpu", progress=False)

    # Buckets of 16² px in 8-px steps up to 3:1: 8x24, 16x16, 24x8. 24x16 (3:2) goes to the square, 16x32 (1:2)
    # to 8x24 and 40x20 (2:1) to 24x8, the nearest aspect ratios on a log scale.
    expected_buckets = {0: (16, 16), 1: (8, 24), 2: (16, 16), 3: (24, 8)}
    for step in (0, 1):
        items = trainer.items(step, 0)
        batch = trainer.batch(step, 0)
        assert batch.added["text_embeds"].shape == (2, 1280)
        buckets = {expected_buckets[index] for _, index in items}
        assert len(buckets) == 1  # a batch never mixes buckets
        (bucket_width, bucket_height) = buckets.pop()
        assert batch.latents.shape[-2:] == (bucket_height // 2, bucket_width // 2)  # the tiny VAE halves
        for row, (_, index) in zip(batch.added["time_ids"].tolist(), items, strict=True):
            width, height = sizes[index]
            scale = max(bucket_width / width, bucket_height / height)  # resized to cover the bucket
            top = (max(bucket_height, round(height * scale)) - bucket_height) // 2
            left = (max(bucket_width, round(width * scale)) - bucket_width) // 2
            # original size, crop corner, target size = the bucket
            assert row == [height, width, top, left, bucket_height, bucket_width]

    positions = [position for step in (0, 1) for position, _ in trainer.items(step, 0)]
    dropped = [bool(torch.rand((), generator=stream(1, "dropout", p)) < 0.5) for p in positions]
    assert any(dropped) and not all(dropped)
    for step in (0, 1):
        batch = trainer.batch(step, 0)
        for row in (0, 1):
            is_zero = not batch.context[row].any() and not batch.added["text_embeds"][row].any()
            assert is_zero == dropped[2 * step + row]  # a dropped caption is SDXL's zero conditioning

    trainer.run()
    assert (models / "samples" / "step-000002.png").is_file()  # SDXL sampling (pooled text, sizes) ran

    library = AdapterLibrary(models)  # what the A1111 script reads models/VMix with
    assert "sdxl-vmix" in library.names()
    adapter = library.load("sdxl-vmix")
    assert adapter.family == "sdxl" and adapter.context_dim == 2048
    assert library.header("sdxl-vmix").training["learning_rate"] == 1e-2
    check_adapter_fits(adapter, model.unet, library.path_for("sdxl-vmix"))

    generator = torch.Generator().manual_seed(3)
    x, t = torch.randn(1, 4, 8, 8, generator=generator), torch.tensor([500])
    context, pooled = sgm_text(model, base, ["a dog"])
    size = torch.tensor([[16.0, 16, 0, 0, 16, 16]])
    values = library.values("sdxl-vmix", {"light": 1.0, "color": 1.0})
    with torch.no_grad():
        with ValueMixer(values, MixOptions(scale=1.0)) as mixer:
            mixer.attach(model.unet)
            ldm = model.unet(x, t, context=context, y=model.sdxl_vector(pooled, size))
        with ValueMixer(values, MixOptions(scale=1.0)) as mixer:
            mixer.attach(base.unet)
            added = {"text_embeds": pooled, "time_ids": size}
            diffusers = base.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
        plain = model.unet(x, t, context=context, y=model.sdxl_vector(pooled, size))
    torch.testing.assert_close(diffusers, ldm, atol=1e-5, rtol=1e-5)
    assert (ldm - plain).abs().max() > 1e-4  # the trained adapter changes the output
