"""Files with the permissions users expect: safetensors' writer creates files readable by their owner only (0600);
a file VMix writes gets what ``open()`` would give it under the user's umask (0644 with the usual 022)."""

from __future__ import annotations

import os


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
    os.chmod(path, 0o666 & ~current_umask())
