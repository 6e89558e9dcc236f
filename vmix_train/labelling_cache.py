"""CLIP image embeddings cached on disk, so that labelling a grown folder embeds only the new images.

One folder per model (``clip-<identity>``) holds safetensors shards: a tensor ``embeds`` (rows, width) and, in
the metadata, the key of each row. A key is the image's resolved path, size and modification time; the identity is
a hash of the model's projection and patch weights, its dtype and its image preprocessing, so a different or
fine-tuned model, another dtype or other preprocessing starts a new cache instead of mixing embeddings. A run
killed half-way keeps the shards it wrote (one every ``flush_every`` images).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vmix_train.clip_models import ClipScorer

_SHARD = "shard-{:06d}.safetensors"


def model_identity(scorer: ClipScorer) -> str:
    """16 hex digits that change with the model's weights, dtype or image preprocessing (not with where the model
    was loaded from, so a local copy and the Hugging Face cache share a cache)."""
    digest = hashlib.sha256()
    model = scorer.model
    tensors = {
        "visual_projection": model.visual_projection.weight,
        "patch_embedding": model.vision_model.embeddings.patch_embedding.weight,
        "post_layernorm": model.vision_model.post_layernorm.weight,
    }
    for name, tensor in tensors.items():
        data = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}{tuple(data.shape)}{tensor.dtype}".encode())
        digest.update(data.numpy().tobytes())
    image_processor = getattr(scorer.processor, "image_processor", scorer.processor)
    settings = image_processor.to_dict() if hasattr(image_processor, "to_dict") else {}
    settings["class"] = type(image_processor).__name__  # the PIL and torchvision backends resize differently
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def file_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve().as_posix()}|{stat.st_size}|{stat.st_mtime_ns}"


class EmbeddingCache:
    """Embeddings by file key for one model; ``add`` keeps new rows in memory until ``flush`` writes a shard."""

    def __init__(self, folder: Path, identity: str) -> None:
        self.folder = folder / f"clip-{identity}"
        self.rows: dict[str, torch.Tensor] = {}
        self.pending: dict[str, torch.Tensor] = {}
        self.shards = 0
        if self.folder.is_dir():
            for shard in sorted(self.folder.glob("shard-*.safetensors")):
                self._read(shard)

    def _read(self, shard: Path) -> None:
        self.shards = max(self.shards, int(shard.stem.split("-")[1]) + 1)
        try:
            with safe_open(str(shard), "pt") as handle:
                keys = json.loads((handle.metadata() or {}).get("keys", "[]"))
                embeds = handle.get_tensor("embeds")
        except (SafetensorError, OSError, ValueError, KeyError):
            return  # a shard cut short by a kill: its images are embedded again
        if len(keys) == embeds.shape[0]:
            self.rows.update(zip(keys, embeds, strict=True))

    def get(self, key: str) -> torch.Tensor | None:
        return self.pending.get(key, self.rows.get(key))

    def add(self, keys: Sequence[str], embeds: torch.Tensor) -> None:
        self.pending.update(zip(keys, embeds.float(), strict=True))

    def flush(self) -> None:
        if not self.pending:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = list(self.pending)
        path = self.folder / _SHARD.format(self.shards)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"embeds": torch.stack([self.pending[k] for k in keys])}, str(tmp), {"keys": json.dumps(keys)})
        os.replace(tmp, path)
        self.shards += 1
        self.rows.update(self.pending)
        self.pending = {}


def embed_images(
    scorer: ClipScorer,
    paths: Sequence[Path],
    cache: EmbeddingCache,
    batch_size: int,
    progress: Callable[[int], object] = lambda _n: None,
    flush_every: int = 1024,
    workers: int = 4,
) -> tuple[torch.Tensor, dict[Path, str], int]:
    """(embeddings in the order of ``paths``, {path: why it could not be decoded}, how many were embedded now).

    Only images without a cached row go through the model. Images are decoded in ``workers`` threads, one batch
    ahead of the model. Rows of images that failed are zero. ``progress(n)`` is told how many images are done.
    """
    keys = [file_key(p) for p in paths]
    missing = [i for i, k in enumerate(keys) if cache.get(k) is None]
    batches = [missing[s : s + batch_size] for s in range(0, len(missing), batch_size)]
    failures: dict[Path, str] = {}
    since_flush = 0
    progress(len(paths) - len(missing))
    with ThreadPoolExecutor(max(1, workers)) as pool:

        def decode(batch: list[int]) -> list[Future]:
            return [pool.submit(_decode, paths[i]) for i in batch]

        upcoming: list[Future] = []
        try:
            upcoming = decode(batches[0]) if batches else []
            for number, batch in enumerate(batches):
                decoded, upcoming = upcoming, decode(batches[number + 1]) if number + 1 < len(batches) else []
                images, done = [], []
                for i, future in zip(batch, decoded, strict=True):
                    result = future.result()
                    if isinstance(result, str):
                        failures[paths[i]] = result
                    else:
                        images.append(result)
                        done.append(keys[i])
                if images:
                    cache.add(done, scorer.image_embeds(images))
                    since_flush += len(done)
                if since_flush >= flush_every:
                    cache.flush()
                    since_flush = 0
                progress(len(batch))
        finally:  # also on Ctrl-C: what was embedded is kept for the next run
            for future in upcoming:
                future.cancel()
            cache.flush()
    width = next((row.shape[0] for k in keys if (row := cache.get(k)) is not None), 0)
    rows = [cache.get(k) for k in keys]
    embeds = torch.stack([r if r is not None else torch.zeros(width) for r in rows]) if paths else torch.zeros(0, 0)
    return embeds, failures, len(missing) - len(failures)


def _decode(path: Path) -> Image.Image | str:
    """The image in RGB, fully decoded, or why it cannot be (a file truncated past its header shows only here)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        return f"cannot be decoded ({exc})"
