"""The on-disk cache of VAE latents and text-encoder outputs: safetensors shards, read lazily.

An entry is a few tensors stored under one key, a hash of everything its value depends on:

- a latent: the image file (its path in the dataset, size and modification time), its bucket, resize and crop, and
  the VAE's weights (a hash of its tensors). It holds the VAE's mean and standard deviation, not a sample, so every
  use of the image draws its own latent from the seed and its position in the run, as without the cache.
- a text: the caption, the base model (the checkpoint's hash, or the text encoders' weights), the tokenizer, clip
  skip and the dtype the encoders run in. It holds exactly what the encoders give (SDXL: also the pooled vector).

So changing a caption recomputes that caption, another resolution or bucket setting recomputes the latents but not
the texts, another clip skip the texts but not the latents. Old entries stay in their shards until the folder is
deleted (it can be, at any time; it is rebuilt).

Shards: ``<kind>-<hash of their keys>.safetensors``, written whole and renamed into place (a run killed while caching
keeps what was finished), tensors named ``<key>/<part>``. Reading opens only the shard headers to build the index
(a key and a shard number per entry) and reads one entry's tensors at a time through a few open memory-mapped
shards, so memory does not grow with the dataset.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from vmix_train.files import save_safetensors

CACHE_FORMAT = "vmix-cache"
CACHE_VERSION = 1
SHARD_BYTES = 256 * 2**20  # a shard is written once its entries reach this size (or at the end)
SHARD_ENTRIES = 4096


def entry_key(facts: Mapping[str, Any]) -> str:
    """The key of an entry: a hash of the facts its value depends on (JSON, keys sorted)."""
    text = json.dumps({"cache_version": CACHE_VERSION, **facts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def weights_hash(modules: Iterable[torch.nn.Module | None]) -> str:
    """A hash of the modules' tensors (names, dtypes, shapes, bytes): two VAEs with equal weights hash alike."""
    digest = hashlib.sha256()
    for number, module in enumerate(modules):
        if module is None:
            digest.update(f"none {number};".encode())
            continue
        for name, tensor in sorted(module.state_dict().items()):
            data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            digest.update(f"{number} {name} {tensor.dtype} {tuple(tensor.shape)};".encode())
            digest.update(data.numpy() if data.numel() else b"")  # the buffer itself, not a copy
    return digest.hexdigest()[:24]


def file_identity(path: Path, root: Path) -> dict[str, Any]:
    """What identifies an image file cheaply: its place in the dataset, size and modification time (a rewritten
    image gets a new time, so its latent is recomputed)."""
    status = path.stat()
    try:
        name = path.relative_to(root).as_posix()
    except ValueError:
        name = path.as_posix()
    return {"file": name, "bytes": status.st_size, "mtime_ns": status.st_mtime_ns}


class CacheError(OSError):
    pass


class CacheStore:
    """The shards of one cache folder: which keys they hold, and each entry's tensors on demand."""

    def __init__(self, folder: str | Path, max_open: int = 4) -> None:
        self.folder = Path(folder)
        self.max_open = max_open
        self._shards: list[Path] = []
        self._where: dict[str, int] = {}  # key -> shard number
        self._parts: dict[str, tuple[str, ...]] = {}  # key -> its tensors' part names (shared tuples)
        self._open: OrderedDict[int, Any] = OrderedDict()  # shard number -> safe_open handle, least recent first
        self.refresh()

    def refresh(self) -> None:
        """Read the shard headers again (after this or another process wrote shards)."""
        self._open.clear()
        self._shards, self._where, self._parts = [], {}, {}
        if not self.folder.is_dir():
            return
        shared: dict[tuple[str, ...], tuple[str, ...]] = {}
        for path in sorted(self.folder.glob("*.safetensors")):
            try:
                with safe_open(str(path), "pt") as handle:
                    if (handle.metadata() or {}).get("format") != CACHE_FORMAT:
                        continue
                    names = list(handle.keys())
            except (SafetensorError, OSError):
                continue  # a damaged shard is ignored; its entries are computed again
            number = len(self._shards)
            self._shards.append(path)
            parts: dict[str, list[str]] = {}
            for name in names:
                key, _, part = name.rpartition("/")
                parts.setdefault(key, []).append(part)
            for key, found in parts.items():
                if key not in self._where:  # the first shard (by name) holding a key wins: the same in every run
                    self._where[key] = number
                    group = tuple(sorted(found))
                    self._parts[key] = shared.setdefault(group, group)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    @property
    def open_shards(self) -> int:
        return len(self._open)

    def get(self, key: str) -> dict[str, torch.Tensor]:
        """The entry's tensors, read from its shard now (nothing is kept in memory)."""
        number = self._where[key]
        handle = self._open.pop(number, None)
        if handle is None:
            try:
                handle = safe_open(str(self._shards[number]), "pt")
            except (SafetensorError, OSError) as exc:
                raise CacheError(f"cache shard '{self._shards[number]}' cannot be read ({exc}); delete it") from None
        self._open[number] = handle
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return {part: handle.get_tensor(f"{key}/{part}") for part in self._parts[key]}

    def writer(self, kind: str) -> ShardWriter:
        return ShardWriter(self.folder, kind)


class ShardWriter:
    """Collects entries and writes them as shards of about ``SHARD_BYTES``; ``close`` writes the rest."""

    def __init__(self, folder: Path, kind: str) -> None:
        self.folder = folder
        self.kind = kind
        self._tensors: dict[str, torch.Tensor] = {}
        self._keys: list[str] = []
        self._bytes = 0
        self.written: list[Path] = []

    def add(self, key: str, parts: Mapping[str, torch.Tensor]) -> None:
        for part, tensor in parts.items():
            value = tensor.detach().to("cpu").contiguous()
            self._tensors[f"{key}/{part}"] = value
            self._bytes += value.numel() * value.element_size()
        self._keys.append(key)
        if self._bytes >= SHARD_BYTES or len(self._keys) >= SHARD_ENTRIES:
            self.flush()

    def flush(self) -> None:
        if not self._keys:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("\n".join(sorted(self._keys)).encode()).hexdigest()[:20]
        path = self.folder / f"{self.kind}-{name}.safetensors"
        metadata = {"format": CACHE_FORMAT, "version": str(CACHE_VERSION), "kind": self.kind}
        save_safetensors(self._tensors, path, metadata)
        self.written.append(path)
        self._tensors, self._keys, self._bytes = {}, [], 0

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        # Entries already complete are written even when the caching stops (Ctrl+C, a bad image): the next run
        # starts from them.
        try:
            self.close()
        except Exception:
            if kind is None:
                raise


def default_folder(dataset: Path) -> Path:
    return dataset / "vmix-cache"
