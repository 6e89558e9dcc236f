"""The adapter folder of this web UI and its file hashes, through the host's own cached hashing."""

from __future__ import annotations

import os
from typing import Any

from modules import paths, shared

from vmix_ext.library import AdapterLibrary
from vmix_ext.weights import short_hash as own_hash

try:
    from modules import hashes as _host_hashes  # A1111 1.x and the Forge family
except ImportError:  # pragma: no cover - a host without it
    _host_hashes = None


def adapter_folder() -> str:
    """``--vmix-dir`` (added by preload.py) or ``models/VMix``."""
    configured = getattr(shared.cmd_opts, "vmix_dir", None)
    return configured or os.path.join(paths.models_path, "VMix")


_libraries: dict[str, AdapterLibrary] = {}


def library() -> AdapterLibrary:
    """The library of the configured folder (one per folder, so its cache of loaded adapters is kept)."""
    folder = adapter_folder()
    if folder not in _libraries:
        _libraries.clear()
        _libraries[folder] = AdapterLibrary(folder)
    return _libraries[folder]


def short_hash(name: str) -> str:
    """The first 10 hex digits of the file's sha256, as the host shows checkpoint and Lora hashes; "" with
    ``--no-hashing``. The host caches hashes in its cache.json by title, so a file is hashed once."""
    path = library().path_for(name)
    if _host_hashes is not None:
        digest: Any = _host_hashes.sha256(str(path), f"vmix/{name}")
        return digest[:10] if digest else ""
    return own_hash(path)
