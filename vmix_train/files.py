"""Writing files the way users expect: atomically (a kill while saving leaves the old file whole) and with the
permissions the user's umask gives (safetensors' writer creates files readable by their owner only, 0600)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc), else by setting it back."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_normal_permissions(path: str | os.PathLike[str]) -> None:
    """rw for whom the umask allows (0644 with the usual 022), as a file made by ``open()`` would have."""
    os.chmod(path, 0o666 & ~current_umask())


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
