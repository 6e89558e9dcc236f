"""Checks the command line makes before it loads anything: the device, the output folder, optional packages.

Each failure is a UsageError whose message says what is wrong and what to do; the command line prints it as one
``[VMix]`` line and exits with status 2.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from vmix_train.cache import default_folder
from vmix_train.config import RunConfig
from vmix_train.events import tensorboard_missing

DEVICE_KINDS = ("cpu", "cuda", "mps")


class UsageError(ValueError):
    pass


def check_device(text: str | None) -> torch.device | None:
    """The device ``--device`` names, if this machine has it; None when not given (the best one is used)."""
    if text is None:
        return None
    try:
        device = torch.device(text.strip())
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_KINDS:
        raise UsageError(f"--device {text!r} is not a device VMix can use; give cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"
            raise UsageError(
                f"--device {text}: no CUDA GPU is available (this torch {torch.__version__} has {build}); "
                "use --device cpu, or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(
                f"--device {text}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
                if count
                else f"--device {text}: this machine has no CUDA GPU"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {text}: Apple's MPS is not available on this machine; use --device cpu")
    if device.type == "cpu" and device.index not in (None, 0):
        raise UsageError(f"--device {text}: the CPU has no index; give --device cpu")
    return device


def check_writable_folder(folder: Path, label: str = "[output] folder") -> None:
    """``folder`` must be a folder (or be creatable) and writable by this user."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{label} {folder} is a file; give a folder (it is created if it does not exist)")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{label} {folder} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == folder else f"cannot be created: {existing} is not writable"
        raise UsageError(f"{label} {folder} {what} for this user; choose another folder")


def check_run(config: RunConfig, device: torch.device | None) -> None:
    """Everything about the run that can be known before the model is loaded."""
    check_writable_folder(config.output_dir)
    if config.train.cache:
        check_writable_folder(
            config.cache_folder or default_folder(config.dataset), "the cache folder (set [data] cache_folder)"
        )
    chosen = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.train.mixed_precision == "fp16" and chosen.type != "cuda":
        raise UsageError(f'mixed_precision = "fp16" needs a CUDA GPU; use "bf16" or "no" on {chosen.type}')
    if config.tensorboard:
        problem = tensorboard_missing()
        if problem:
            raise UsageError(problem)
    if config.train.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(
            'optimizer = "adamw8bit" needs the bitsandbytes package (pip install bitsandbytes); '
            'or use optimizer = "adamw"'
        )
