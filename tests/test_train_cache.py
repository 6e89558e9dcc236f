"""The latent and text caches: a second run does no VAE or text-encoder work, each kind of change recomputes exactly
the entries it affects, memory does not grow with the dataset, and the uncached path (images decoded by DataLoader
workers) trains on the same batches."""

from __future__ import annotations

import dataclasses
import gc
import os
import stat
import time

import pytest
import torch
from PIL import Image
from tiny_checkpoint import (
    TINY_OPTIONS,
    TWO_DIMENSIONS,
    TinyLdmModel,
    original_config,
    tiny_trainer,
    write_dataset,
    write_tokenizer,
)

import vmix_train.cache as cache_module
from vmix_train.cache import CacheStore
from vmix_train.checkpoint import load_single_file
from vmix_train.data import TrainingData
from vmix_train.dataset import load_dataset

NAMES = [d.name for d in TWO_DIMENSIONS]
SIZES = [(16, 16), (24, 8), (20, 16), (8, 24), (16, 16), (30, 10)]  # (width, height): three buckets
OPTIONS = TINY_OPTIONS


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-model")
    path = TinyLdmModel().save(root / "tiny.safetensors")
    tokenizer = write_tokenizer(root / "tokenizer")
    return path, tokenizer


def load_base(model):
    path, tokenizer = model
    return load_single_file(path, original_config=original_config(), tokenizer=tokenizer)


class Counting:
    """Counts the images the VAE encodes and the captions the text encoders see."""

    def __init__(self, base):
        self.images = 0
        self.captions = 0
        encode_images, encode_text = base.vae.encode, base.encode

        def vae_encode(pixels, *args, **kwargs):
            self.images += pixels.shape[0]
            return encode_images(pixels, *args, **kwargs)

        def text_encode(captions, *args, **kwargs):
            self.captions += len(captions)
            return encode_text(captions, *args, **kwargs)

        base.vae.encode = vae_encode
        base.encode = text_encode


def planned(base, folder, options=OPTIONS, cache_folder=None):
    examples = load_dataset(folder, NAMES)
    options = options.for_model(base.family, base.scheduler.config.prediction_type)  # as the Trainer resolves them
    return TrainingData(
        examples, base, options, global_batch=2, dataset_folder=folder, cache_folder=cache_folder, log=lambda _: None
    )


def test_a_second_run_does_no_vae_or_text_encoder_work(model, tmp_path):
    data = write_dataset(tmp_path / "data", SIZES, NAMES)
    losses = []
    for run in ("first", "second"):
        trainer = tiny_trainer(model, data, tmp_path / run, dataclasses.replace(OPTIONS, caption_dropout=0.5))
        counting = Counting(trainer.base)  # after AesEmb, which the trainer computes once from the label texts
        trainer.run()
        losses.append(trainer.losses)
        if run == "first":  # every image and every caption once, plus the empty caption (caption dropout)
            assert (counting.images, counting.captions) == (len(SIZES), len(SIZES) + 1)
        else:
            assert (counting.images, counting.captions) == (0, 0)
            assert trainer.data.computed == {"latents": 0, "texts": 0}
    assert losses[0] == losses[1]
    shards = list((data / "vmix-cache").glob("*.safetensors"))
    assert shards and all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask() for p in shards)

    # The uncached path (DataLoader workers decode, the VAE and the text encoders run every step) trains on the
    # same batches: the same losses up to the VAE's float rounding between batch sizes.
    options = dataclasses.replace(OPTIONS, caption_dropout=0.5, cache=False, num_workers=2)
    trainer = tiny_trainer(model, data, tmp_path / "uncached", options)
    counting = Counting(trainer.base)
    trainer.run()
    assert counting.images == 2 * 2  # two steps of two images
    assert trainer.losses == pytest.approx(losses[0], rel=1e-5)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def computed_after(data):
    data.prepare()
    return data.computed


def test_each_change_recomputes_exactly_what_it_affects(model, tmp_path):
    folder = write_dataset(tmp_path / "data", SIZES, NAMES)
    base = load_base(model)
    n, texts = len(SIZES), len(SIZES) + 1  # + the empty caption
    assert computed_after(planned(base, folder)) == {"latents": n, "texts": texts}
    assert computed_after(planned(base, folder)) == {"latents": 0, "texts": 0}

    # A caption edited: that caption only.
    metadata = folder / "metadata.jsonl"
    metadata.write_text(metadata.read_text().replace('"a dog 3"', '"a dog three"'))
    assert computed_after(planned(base, folder)) == {"latents": 0, "texts": 1}

    # Another resolution: every latent (new buckets), no text.
    assert computed_after(planned(base, folder, dataclasses.replace(OPTIONS, resolution=24))) == {
        "latents": n,
        "texts": 0,
    }

    # Square crops instead of buckets: only the images whose bucket or crop changes (not the square ones).
    square = planned(base, folder, dataclasses.replace(OPTIONS, buckets=False))
    moved = sum(p.bucket.width != p.bucket.height for p in planned(base, folder).placements)
    assert computed_after(square) == {"latents": moved, "texts": 0} and 0 < moved < n

    # An image rewritten: its latent only.
    Image.new("RGB", SIZES[2], (1, 2, 3)).save(folder / "2.png")
    os.utime(folder / "2.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert computed_after(planned(base, folder)) == {"latents": 1, "texts": 0}

    # Clip skip 2: every text, no latent.
    base.clip_skip = 2
    assert computed_after(planned(base, folder)) == {"latents": 0, "texts": texts}
    base.clip_skip = 1

    # Another checkpoint (its hash): every text; the same VAE keeps the latents.
    base.hash = "0123456789"
    assert computed_after(planned(base, folder)) == {"latents": 0, "texts": texts}

    # Another VAE (one weight changed): every latent, no text.
    with torch.no_grad():
        base.vae.encoder.conv_in.bias[0] += 0.5
    assert computed_after(planned(base, folder)) == {"latents": n, "texts": 0}

    # A run that keeps its cache elsewhere starts from nothing there.
    other = planned(base, folder, cache_folder=tmp_path / "elsewhere")
    assert computed_after(other) == {"latents": n, "texts": texts}


def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


@pytest.mark.parametrize("images", [8, 32])
def test_memory_does_not_grow_with_the_dataset(model, tmp_path, monkeypatch, images):
    """Reading every latent and text of an epoch leaves no tensor behind (the old trainer kept every latent in RAM),
    the index holds no tensors, and only a few shards are open at a time."""
    monkeypatch.setattr(cache_module, "SHARD_ENTRIES", 4)  # many small shards
    folder = write_dataset(tmp_path / "data", [(16, 16), (24, 8)] * (images // 2), NAMES)
    data = planned(load_base(model), folder)
    data.prepare()
    assert len(list((folder / "vmix-cache").glob("*.safetensors"))) >= images // 4
    assert data.store.open_shards == 0  # refreshing the index opens no shard for good
    before = live_tensors()
    for step in range(data.plan.steps_per_epoch):
        items = data.items(step, 0, 2)
        latents = data.latents(items)
        text = data.texts([data.examples[i].caption for _, i in items])
        assert latents.shape[0] == 2 and text.context.shape[0] == 2
        del latents, text
        assert data.store.open_shards <= data.store.max_open
    assert live_tensors() == before


def test_a_damaged_shard_is_ignored_and_its_entries_recomputed(model, tmp_path):
    folder = write_dataset(tmp_path / "data", SIZES, NAMES)
    base = load_base(model)
    computed_after(planned(base, folder))
    shard = sorted((folder / "vmix-cache").glob("latents-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    assert computed_after(planned(base, folder)) == {"latents": len(SIZES), "texts": 0}
    assert len(CacheStore(folder / "vmix-cache")) == len(SIZES) + len(SIZES) + 1


def test_workers_decode_the_same_batches_as_the_training_process(model, tmp_path):
    folder = write_dataset(tmp_path / "data", SIZES, NAMES)
    base = load_base(model)
    options = dataclasses.replace(OPTIONS, cache=False, num_workers=2)
    data = planned(base, folder, options)
    feed = data.feed(0, 5, accumulation=1, batch_size=2)
    for step in range(5):
        tag, indices, pixels = next(feed)
        items = data.items(step, 0, 2)
        assert tag == (step, 0) and indices == [i for _, i in items]
        direct = planned(base, folder, dataclasses.replace(options, num_workers=0)).latents(items)
        assert torch.equal(data.latents(items, pixels), direct)


def test_an_image_gone_during_the_run_is_one_message_from_the_workers(model, tmp_path):
    from vmix_train.errors import TrainingError

    folder = write_dataset(tmp_path / "data", SIZES, NAMES)
    data = planned(load_base(model), folder, dataclasses.replace(OPTIONS, cache=False, num_workers=2))
    (folder / "3.png").unlink()
    feed = data.feed(0, 20, accumulation=1, batch_size=2)
    with pytest.raises(TrainingError, match=r"3\.png: cannot be read any more .*was the dataset changed") as info:
        for _ in range(20):
            next(feed)
    assert "Traceback" not in str(info.value)
