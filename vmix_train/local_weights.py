"""Third-party metric models (the LAION aesthetic head, FID's Inception) as local safetensors files.

Both are published as PyTorch pickles. They are converted once, here, with ``torch.load(weights_only=True)`` (the
only place this project reads a pickle); everything else reads the safetensors file, with an error that names the
file and says how to convert it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def read_tensors(path: str | Path, what: str, error: type[Exception], convert_command: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise error(
            f"{what} {path.name} is not a readable safetensors file ({exc}); convert the published .pth with "
            f"`{convert_command}`"
        ) from None


def convert_pickle(
    source: str | Path, target: str | Path, check: Callable[[Path], object], error: type[Exception]
) -> None:
    """The published ``.pth`` state dict as safetensors; ``check`` loads the result, and a file it refuses is not
    left behind."""
    state = torch.load(str(source), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise error(f"{source} does not hold a state dict")
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    target = Path(target)
    tmp = target.with_name(target.name + ".tmp")
    save_file(tensors, str(tmp))
    try:
        check(tmp)
    except Exception:
        tmp.unlink()
        raise
    tmp.replace(target)


def conversion_command(
    convert: Callable[[str, str], None], errors: tuple[type[Exception], ...], source: str, target: str
) -> int:
    """A command line's conversion: one ``[VMix]`` line and status 2 for a file that cannot be converted."""
    try:
        convert(source, target)
    except (*errors, OSError, RuntimeError) as exc:
        print(f"[VMix] {exc}", file=sys.stderr)
        return 2
    print(f"[VMix] wrote {target}")
    return 0
