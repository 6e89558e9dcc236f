"""Writing files the way users expect: atomically (a kill while saving leaves the old file whole) and with the
permissions the user's umask gives (``vmix_ext.permissions``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from vmix_ext.permissions import give_normal_permissions


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary path)``, give the file normal permissions, then rename it over ``path``. A failure
    (or a kill) at any point leaves ``path`` as it was and removes the temporary file where it can."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # several processes may write to one folder
    try:
        write(tmp)
        give_normal_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> Path:
    """``safetensors.torch.save_file`` made atomic and with normal permissions."""
    return write_atomically(path, lambda tmp: save_file(dict(tensors), str(tmp), metadata=dict(metadata or {})))
