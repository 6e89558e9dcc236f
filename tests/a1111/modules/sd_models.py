"""Stand-in for modules/sd_models.py: a registry of test models instead of checkpoint files."""

from __future__ import annotations

from typing import Any

import torch

from modules import script_callbacks, shared

checkpoints_stand_in: dict[str, Any] = {}
"""Stand-in registry: checkpoint title -> model object (with .model.diffusion_model)."""

swap_mode: str = "object"
"""'object': a reload makes shared.sd_model the registered object (host with sd_checkpoints_limit > 1).
'inplace': the weights of the registered model are copied into the current object (host default limit 1)."""


class CheckpointInfo:
    """Mirrors modules/sd_models.py: CheckpointInfo (title, name, short_title, filename)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.name = title
        self.name_for_extra = title
        self.model_name = title
        self.short_title = title
        self.filename = title
        self.hash = None


def register_checkpoint(title: str, model: Any) -> None:
    """Stand-in helper: make `model` loadable under `title` (the hr_checkpoint_name / sd_model_checkpoint)."""
    model.sd_checkpoint_info = CheckpointInfo(title)
    model.sd_model_checkpoint = title
    model.sd_model_hash = f"{abs(hash(title)) % 16**8:08x}"
    checkpoints_stand_in[title] = model


def get_closet_checkpoint_match(name: str) -> CheckpointInfo | None:
    """Mirrors sd_models.get_closet_checkpoint_match: None when nothing matches."""
    return CheckpointInfo(name) if name in checkpoints_stand_in else None


def reload_model_weights(sd_model: Any = None, info: CheckpointInfo | None = None) -> Any:
    """Mirrors sd_models.reload_model_weights: load `info` (or opts.sd_model_checkpoint) unless already loaded.

    In 'inplace' mode the state dict is copied into the current object and on_model_loaded fires, as the host
    does with the default sd_checkpoints_limit=1; in 'object' mode shared.sd_model becomes another object."""
    title = info.title if info is not None else shared.opts.sd_model_checkpoint
    current = shared.sd_model
    if title is None or title not in checkpoints_stand_in:
        return current
    if current is not None and getattr(current, "sd_model_checkpoint", None) == title:
        return current
    target = checkpoints_stand_in[title]
    if swap_mode == "inplace" and current is not None:
        with torch.no_grad():
            current.model.diffusion_model.load_state_dict(target.model.diffusion_model.state_dict())
        current.sd_checkpoint_info = target.sd_checkpoint_info
        current.sd_model_checkpoint = title
        current.sd_model_hash = target.sd_model_hash
    else:
        shared.sd_model = target
    script_callbacks.model_loaded_callback(shared.sd_model)
    return shared.sd_model


class SkipWritingToConfig:
    """Mirrors sd_models.SkipWritingToConfig (a no-op context manager here)."""

    def __enter__(self) -> SkipWritingToConfig:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
