"""The resumable training state: trainable weights, optimizer moments, loss history, step, and the EMA of the
weights when the run keeps one (all float32, whatever dtype the adapter files are saved in).

Stored as one safetensors file (no pickle, like every file this project reads), written to a temporary name and
renamed into place, so a run killed while saving keeps the previous state intact. Non-tensor parts (the step,
the optimizer's hyperparameters, the run's fingerprint) go in the header's metadata as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from vmix_train.files import save_safetensors

STATE_FILE = "training-state.safetensors"
STATE_FORMAT = "vmix-training-state"


class StateError(ValueError):
    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"training state '{path}': {problem}")


@dataclass
class TrainingState:
    step: int  # optimizer steps done
    weights: dict[str, torch.Tensor]  # the trainable parameters by name
    optimizer: dict[str, Any]  # torch.optim.Optimizer.state_dict()
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    fingerprint: dict[str, Any] = field(default_factory=dict)  # what must not change between a run and its resume
    ema: dict[str, torch.Tensor] | None = None  # the exponential moving average of ``weights``, when kept
    ema_updates: int = 0  # how many optimizer steps the average has taken in (its decay warms up with it)


def save_state(state: TrainingState, path: str | Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state.weights.items():
        tensors[f"weight.{name}"] = value
    optimizer_meta: dict[str, Any] = {"param_groups": state.optimizer["param_groups"], "scalars": {}}
    for index, slots in state.optimizer["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{slot}"] = value
            else:  # e.g. a plain-number step counter in some optimizers
                optimizer_meta["scalars"].setdefault(str(index), {})[slot] = value
    tensors["loss.history"] = torch.tensor(state.losses, dtype=torch.float64)
    for name, value in (state.ema or {}).items():
        tensors[f"ema.{name}"] = value
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {
        "format": STATE_FORMAT,
        "step": str(state.step),
        "optimizer": json.dumps(optimizer_meta),
        "fingerprint": json.dumps(state.fingerprint, sort_keys=True),
        "ema_updates": str(state.ema_updates),
    }
    save_safetensors(tensors, path, metadata)


def load_state(path: str | Path) -> TrainingState:
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise StateError(path, f"cannot be read ({exc}); delete it to start the run afresh") from None
    if metadata.get("format") != STATE_FORMAT:
        raise StateError(path, "is not a VMix training state")
    try:
        return _parse(metadata, tensors)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise StateError(path, f"has a damaged header ({exc!r}); delete it to start the run afresh") from None


def _parse(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> TrainingState:
    step = int(metadata["step"])
    optimizer_meta = json.loads(metadata["optimizer"])
    fingerprint = json.loads(metadata["fingerprint"])
    ema_updates = int(metadata.get("ema_updates", "0"))
    weights: dict[str, torch.Tensor] = {}
    optim_state: dict[int, dict[str, Any]] = {}
    ema: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "weight":
            weights[rest] = value
        elif kind == "ema":
            ema[rest] = value
        elif kind == "optim":
            index, _, slot = rest.partition(".")
            optim_state.setdefault(int(index), {})[slot] = value
    for index, scalars in optimizer_meta.get("scalars", {}).items():
        optim_state.setdefault(int(index), {}).update(scalars)
    losses = tensors.get("loss.history", torch.zeros(0)).tolist()
    groups = optimizer_meta["param_groups"]
    for group in groups:  # JSON has no tuples; torch's optimizers keep betas as one
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    optimizer = {"state": optim_state, "param_groups": groups}
    if not isinstance(fingerprint, dict):
        raise TypeError("the fingerprint is not an object")
    return TrainingState(step, weights, optimizer, losses, fingerprint, ema or None, ema_updates)


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The settings a resumed run may not change, with their saved and current values."""
    return [
        f"{key}: {saved.get(key)!r} in the saved run, {current.get(key)!r} now"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
