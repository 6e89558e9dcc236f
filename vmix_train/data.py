"""The training data path: which images each step trains on, their latents and their captions' text conditioning.

Two ways to the same batches:

- with ``cache`` on (the default), a first pass computes what is missing from the on-disk cache (``cache.py``): the
  VAE's latent distribution for every image in its bucket, decoded by DataLoader workers and encoded in batches, and
  the text encoders' output for every caption and for the empty caption (caption dropout). Training then reads one
  entry at a time from the shards and runs neither the VAE nor the text encoders.
- with ``cache`` off, DataLoader workers decode each micro-batch's images ahead of the step, and the VAE and the
  text encoders run on every batch.

Either way every random choice is made here, in the training process, from (seed, position in the run): caption
dropout, the latent drawn from the VAE's distribution (mean + std·noise), the diffusion noise and timestep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from vmix_train.buckets import Bucket, BucketSettings, Placement, StepPlan, make_buckets, nearest_bucket, place
from vmix_train.cache import CacheStore, default_folder, entry_key, file_identity, weights_hash
from vmix_train.config import TrainingOptions
from vmix_train.dataset import Example
from vmix_train.distributed import World, barrier
from vmix_train.errors import TrainingError
from vmix_train.images import PlacedImages, collate, image_size, load_placed, unpack
from vmix_train.model import BaseModel, TextConditioning
from vmix_train.streams import stream

TEXT_BATCH = 64  # captions per text-encoder call while caching
_TOKENIZER_PROBE = "A probe, to tell tokenizers apart: 0123 é ß ü 漢字 ;:!?"

Item = tuple[int, int]  # (position in the run, example index)


def bucket_settings(options: TrainingOptions) -> BucketSettings:
    """``options`` resolved by ``for_model`` (no 0 left for the resolution or the sides)."""
    return BucketSettings(
        enabled=options.buckets,
        resolution=options.resolution,
        step=options.bucket_step,
        min_side=options.bucket_min_side,
        max_side=options.bucket_max_side,
        max_aspect=options.bucket_max_aspect,
    )


def run_buckets(options: TrainingOptions) -> list[Bucket]:
    """The run's buckets; a TrainingError that says what to change when none fits the bounds."""
    settings = bucket_settings(options)
    buckets = make_buckets(settings)
    if not buckets:
        raise TrainingError(
            f"no bucket fits: resolution {settings.resolution} (area {settings.resolution}²) in steps of "
            f"{settings.step} px with sides from {settings.min_side} to {settings.max_side} and aspect ratios up to "
            f"{settings.max_aspect:g}. Lower bucket_step or bucket_min_side, raise bucket_max_side or "
            "bucket_max_aspect, or set buckets = false"
        )
    return buckets


class TrainingData:
    """The run's data, planned once: every image's bucket and crop, the order of the steps, the cache."""

    def __init__(
        self,
        examples: Sequence[Example],
        base: BaseModel,
        options: TrainingOptions,
        *,
        global_batch: int,
        dataset_folder: Path,
        cache_folder: Path | None = None,
        world: World | None = None,
        device: torch.device | None = None,
        text_dtype: torch.dtype = torch.float32,
        progress: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.examples = list(examples)
        self.base = base
        self.options = options
        self.world = world or World()
        self.device = device or torch.device("cpu")
        self.text_dtype = text_dtype
        self.progress = progress
        self.log = log
        self.global_batch = global_batch
        self.buckets = run_buckets(options)
        self.placements: list[Placement] = []
        bucket_of: list[int] = []
        number = {bucket: n for n, bucket in enumerate(self.buckets)}
        for example in self.examples:
            width, height = example.size if example.size != (0, 0) else image_size(example.image)
            bucket = nearest_bucket(self.buckets, width, height)
            self.placements.append(place(width, height, bucket))
            bucket_of.append(number[bucket])
        self.plan = StepPlan(bucket_of, len(self.buckets), global_batch, options.seed)
        self.dataset_folder = dataset_folder
        self.store: CacheStore | None = None
        self._latent_keys: list[str] = []
        self._text_side = ""  # the hash of everything a text entry depends on besides its caption
        if options.cache:
            self.store = CacheStore(cache_folder or default_folder(dataset_folder))
            # The VAE by its weights (two checkpoints with the same VAE share latents); the text side by the
            # checkpoint's hash (its weights when it has none, e.g. a model built in code) and the tokenizer.
            vae = weights_hash([base.vae]) if base.vae is not None else "pixels"
            for example, placement in zip(self.examples, self.placements, strict=True):
                facts = {
                    "kind": "latent",
                    **file_identity(example.image, dataset_folder),
                    "bucket": [placement.bucket.width, placement.bucket.height],
                    "resized": list(placement.resized),
                    "crop": list(placement.crop),
                    "vae": vae,
                }
                self._latent_keys.append(entry_key(facts))
            tokenizers = [base.tokenize, *([base.tokenize_2] if base.tokenize_2 is not None else [])]
            text_side = {
                "model": base.hash or weights_hash(base.text_encoders),
                "tokenizer": [t([_TOKENIZER_PROBE]).tolist() for t in tokenizers],
                "clip_skip": base.clip_skip,
                "family": base.family,
                "dtype": str(text_dtype),
            }
            self._text_side = entry_key(text_side)
        self._prepared = False
        self.computed = {"latents": 0, "texts": 0}  # entries this run computed (the rest came from the cache)

    # -- the plan ------------------------------------------------------------------------------------------------

    def items(self, step: int, micro: int, batch_size: int) -> list[Item]:
        """This process's micro-batch ``micro`` of optimizer step ``step``: stream positions and example indices.
        Step s covers the positions [s·G, (s+1)·G) of the global batch G, all from one bucket, whatever the number of
        processes, so runs with 1 or n processes and the same G see the same images with the same noise."""
        _, members = self.plan.step(step)
        chunk = micro * self.world.size + self.world.rank
        start = chunk * batch_size
        return [(step * self.global_batch + i, members[i]) for i in range(start, start + batch_size)]

    def bucket_counts(self) -> dict[Bucket, int]:
        return {self.buckets[b]: len(m) for b, m in enumerate(self.plan.members) if m}

    def time_ids(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.tensor([self.placements[i].time_ids for i in indices], dtype=torch.float32)

    # -- the cache -----------------------------------------------------------------------------------------------

    def text_key(self, caption: str) -> str:
        return entry_key({"kind": "text", "text_side": self._text_side, "caption": caption})

    def prepare(self) -> None:
        """Compute what the cache lacks (split over the processes), then read its index. Nothing without a cache."""
        if self.store is None or self._prepared:
            return
        missing = sorted(
            {key: i for i, key in enumerate(self._latent_keys) if key not in self.store}.items(),
        )
        mine = [index for _, index in missing[self.world.rank :: self.world.size]]
        if missing:
            self.log(f"[VMix] caching the latents of {len(missing)} image(s) in {self.store.folder}")
        self._cache_latents(mine)
        captions = sorted({e.caption for e in self.examples} | {""})  # "": a dropped caption
        wanted = [c for c in captions if self.text_key(c) not in self.store]
        if wanted:
            self.log(f"[VMix] caching the text-encoder outputs of {len(wanted)} caption(s)")
        self._cache_texts(wanted[self.world.rank :: self.world.size])
        barrier(self.world)
        self.store.refresh()
        absent = [k for k in self._latent_keys if k not in self.store] + [
            c for c in captions if self.text_key(c) not in self.store
        ]
        if absent:
            raise TrainingError(
                f"{len(absent)} cache entries are missing in {self.store.folder} after caching; is the folder shared "
                "by every process (one filesystem)?"
            )
        self._prepared = True

    def _cache_latents(self, indices: list[int]) -> None:
        assert self.store is not None
        by_bucket: dict[Bucket, list[int]] = {}
        for index in indices:
            by_bucket.setdefault(self.placements[index].bucket, []).append(index)
        size = self.options.batch_size
        batches = [
            [(None, i) for i in group[start : start + size]]
            for group in by_bucket.values()
            for start in range(0, len(group), size)
        ]
        if not batches:
            return
        bar = _progress(len(indices), "VMix caching latents", self.progress)
        with self.store.writer("latents") as writer:
            for batch in self._loader(batches):
                _, chunk, pixels = unpack(batch)
                for index, parts in zip(chunk, self._encode_images(pixels), strict=True):
                    writer.add(self._latent_keys[index], parts)
                self.computed["latents"] += len(chunk)
                bar.update(len(chunk))
        bar.close()

    def _cache_texts(self, captions: list[str]) -> None:
        assert self.store is not None
        if not captions:
            return
        with self.store.writer("texts") as writer:
            for start in range(0, len(captions), TEXT_BATCH):
                chunk = captions[start : start + TEXT_BATCH]
                text = self.base.encode(chunk, zero_empty=True)
                for row, caption in enumerate(chunk):
                    parts = {"context": text.context[row]}
                    if text.pooled is not None:
                        parts["pooled"] = text.pooled[row]
                    writer.add(self.text_key(caption), parts)
                self.computed["texts"] += len(chunk)

    # -- images, latents, texts ----------------------------------------------------------------------------------

    def _loader(self, batches: Sequence[list[tuple[Any, int]]]) -> Any:
        paths = [e.image for e in self.examples]
        workers = self.options.num_workers
        return torch.utils.data.DataLoader(
            PlacedImages(paths, self.placements),
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )

    def feed(self, start_step: int, end_step: int, accumulation: int, batch_size: int) -> Iterator[Any]:
        """Without a cache: the pixels of this process's micro-batches from ``start_step`` on, decoded ahead by the
        DataLoader's workers; each batch comes tagged (step, micro) and with its example indices."""
        return map(unpack, self._loader(_MicroBatches(self, start_step, end_step, accumulation, batch_size)))

    @torch.no_grad()
    def _encode_images(self, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The VAE's distribution for each image (float32, on the CPU): mean and standard deviation; the pixels
        themselves when the model has no VAE."""
        if self.base.vae is None:
            return [{"mean": row} for row in pixels.float()]
        posterior = self.base.vae.encode(pixels.to(self.device, torch.float32)).latent_dist
        mean, std = posterior.mean.float().cpu(), posterior.std.float().cpu()
        return [{"mean": m, "std": s} for m, s in zip(mean, std, strict=True)]

    def latents(self, items: Sequence[Item], pixels: torch.Tensor | None = None) -> torch.Tensor:
        """The latents the UNet denoises, (B, C, h, w) float32 on the CPU: each drawn from its image's distribution
        with the noise of its position in the run, then scaled."""
        indices = [index for _, index in items]
        if self.store is not None:
            self.prepare()
            entries = [self.store.get(self._latent_keys[i]) for i in indices]
        else:
            if pixels is None:
                pixels = torch.stack([load_placed(self.examples[i].image, self.placements[i]) for i in indices])
            entries = self._encode_images(pixels)
        rows = []
        for (position, _), entry in zip(items, entries, strict=True):
            mean = entry["mean"].float()
            std = entry.get("std")
            if std is not None:
                noise = torch.randn(mean.shape, generator=stream(self.options.seed, "latent", position))
                mean = mean + std.float() * noise
            rows.append(mean)
        latents = torch.stack(rows)
        if self.base.vae is not None:
            latents = latents * self.base.vae.config.scaling_factor
        return latents

    def texts(self, captions: list[str]) -> TextConditioning:
        """The UNet's text conditioning for ``captions`` (an empty caption is a dropped one)."""
        if self.store is None:
            return self.base.encode(captions, zero_empty=True)  # dropped captions: SDXL's empty conditioning is 0
        self.prepare()
        entries = [self.store.get(self.text_key(c)) for c in captions]
        context = torch.stack([e["context"] for e in entries]).to(self.device)
        pooled = None
        if "pooled" in entries[0]:
            pooled = torch.stack([e["pooled"] for e in entries]).to(self.device)
        return TextConditioning(context, pooled)


class _MicroBatches:
    """The DataLoader's batch sampler for the uncached path: one list of ((step, micro), example index) per
    micro-batch of this process, in training order."""

    def __init__(self, data: TrainingData, start: int, end: int, accumulation: int, batch_size: int) -> None:
        self.data, self.start, self.end = data, start, end
        self.accumulation, self.batch_size = accumulation, batch_size

    def __iter__(self) -> Iterator[list[tuple[tuple[int, int], int]]]:
        for step in range(self.start, self.end):
            for micro in range(self.accumulation):
                items = self.data.items(step, micro, self.batch_size)
                yield [((step, micro), index) for _, index in items]

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.accumulation


def _progress(total: int, description: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm  # installed with diffusers and transformers

    return tqdm(total=total, desc=description, unit="image", disable=not enabled)
