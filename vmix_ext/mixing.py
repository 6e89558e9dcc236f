"""Small pieces of the VMix math shared by every host path."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MixOptions:
    """How V_a is mixed in: λ, which rows, and which part of sampling (fractions of the steps, start inclusive)."""

    scale: float = 1.0
    cond_only: bool = False
    start: float = 0.0
    end: float = 1.0

    def validate(self) -> None:
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(
                f"the VMix step window must satisfy 0 <= start < end <= 1, got start={self.start}, end={self.end}"
            )


def tile_tokens(values: torch.Tensor, tokens: int) -> torch.Tensor:
    """Repeat V_a (..., C, inner) along the token axis and cut it to ``tokens``.

    Long prompts give contexts of 77·k tokens; tiling keeps the aesthetic term as strong for every chunk instead of
    letting it fade as the prompt grows.
    """
    length = values.shape[-2]
    if tokens == length:
        return values
    repeats = -(-tokens // length)
    return torch.cat([values] * repeats, dim=-2)[..., :tokens, :]
