"""The adapters in the VMix folder: listing, loading with a cache, and V_a ready for a generation."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch

from .adapter import VMixAdapter
from .weights import AdapterFileError, AdapterHeader, load_adapter, read_header

SUFFIX = ".safetensors"


class AdapterLibrary:
    """Adapters are named by their path below the folder, without the suffix (``styles/film`` for
    ``<folder>/styles/film.safetensors``). Loaded adapters and their V_a are cached by file size and mtime, so
    an edited file is read again and an unchanged one costs nothing on the next generation."""

    def __init__(self, folder: str | os.PathLike[str], keep_loaded: int = 2) -> None:
        self.folder = Path(folder)
        self.keep_loaded = keep_loaded
        self._adapters: OrderedDict[tuple[str, int, int], VMixAdapter] = OrderedDict()
        self._values: OrderedDict[tuple[object, ...], dict[str, torch.Tensor]] = OrderedDict()

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        found = (p for p in self.folder.rglob("*" + SUFFIX) if p.is_file())
        return sorted(p.relative_to(self.folder).with_suffix("").as_posix() for p in found)

    def path_for(self, name: str) -> Path:
        if not name:
            raise LookupError("no VMix adapter is selected; pick one in the Adapter list")
        path = (self.folder / name).with_suffix(SUFFIX) if not name.endswith(SUFFIX) else self.folder / name
        if path.is_file():
            return path
        available = self.names()
        hint = f"found: {', '.join(available)}" if available else "the folder holds no .safetensors adapters"
        raise LookupError(f"no VMix adapter named '{name}' in {self.folder} ({hint})")

    def header(self, name: str) -> AdapterHeader:
        return read_header(self.path_for(name))

    def headers(self) -> list[AdapterHeader | AdapterFileError]:
        """Every adapter's header, or the error that stops it from loading (for listings that must not fail)."""
        result: list[AdapterHeader | AdapterFileError] = []
        for name in self.names():
            try:
                result.append(self.header(name))
            except AdapterFileError as exc:
                result.append(exc)
        return result

    def load(self, name: str) -> VMixAdapter:
        path = self.path_for(name)
        key = _file_key(path)
        adapter = self._adapters.get(key)
        if adapter is None:
            adapter = load_adapter(path)
            self._adapters[key] = adapter
            while len(self._adapters) > self.keep_loaded:
                self._adapters.popitem(last=False)
        self._adapters.move_to_end(key)
        return adapter

    def values(self, name: str, strengths: dict[str, float]) -> dict[str, torch.Tensor]:
        """V_a of every layer in fp32 on the CPU for these strengths, computed once and reused while unchanged."""
        adapter = self.load(name)
        key = (*_file_key(self.path_for(name)), tuple(sorted(strengths.items())))
        values = self._values.get(key)
        if values is None:
            with torch.no_grad():
                values = adapter.aesthetic_values(strengths, dtype=torch.float32)
            self._values[key] = values
            while len(self._values) > self.keep_loaded:
                self._values.popitem(last=False)
        self._values.move_to_end(key)
        return values

    def clear(self) -> None:
        self._adapters.clear()
        self._values.clear()


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
