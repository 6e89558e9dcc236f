"""Stand-in for modules/hashes.py (A1111 1.10 / Forge dfdcbab): ``sha256(filename, title, use_addnet_hash=False)``.

The host keeps sha256 digests in its cache (``cache("hashes")``, cache.json) by title and file mtime, computes a
missing one unless ``--no-hashing`` is set (then it returns None), and prints nothing VMix depends on. This stand-in
keeps the cache in a dict and counts how often a file was really hashed.
"""

from __future__ import annotations

import hashlib
import os

from modules import shared

cache: dict[str, dict[str, float | str]] = {}
computed: list[str] = []  # stand-in only: titles hashed from the file's bytes


def sha256(filename: str, title: str, use_addnet_hash: bool = False) -> str | None:
    mtime = os.path.getmtime(filename)
    cached = cache.get(title)
    if cached is not None and cached["mtime"] >= mtime:
        return str(cached["sha256"])
    if shared.cmd_opts.no_hashing:
        return None
    digest = hashlib.sha256()
    with open(filename, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    cache[title] = {"mtime": mtime, "sha256": digest.hexdigest()}
    computed.append(title)
    return digest.hexdigest()
