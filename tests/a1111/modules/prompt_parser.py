"""Stand-in for modules/prompt_parser.py: only ``DictWithShape``, the container A1111 keeps SDXL conditioning in."""

from __future__ import annotations

from typing import Any

import torch


class DictWithShape(dict):
    """Mirrors prompt_parser.DictWithShape: SDXL's conditioning ({"crossattn": (B, T, 2048), "vector": (B, 2816)}),
    with ``shape`` answering for the cross-attention context, so code written for SD 1.x tensors (``.shape[0]``,
    ``.shape[1]``) works on it."""

    def __init__(self, x: dict[str, Any], shape: Any = None) -> None:
        super().__init__()
        self.update(x)

    @property
    def shape(self) -> torch.Size:
        return self["crossattn"].shape
