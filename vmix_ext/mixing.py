"""Small pieces of the VMix math shared by every host path."""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK_GROUPS = ("input", "middle", "output")  # the UNet's three parts, by the first element of an ldm layer path
_GROUP_OF_PREFIX = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}


@dataclass
class MixOptions:
    """How V_a is mixed in: λ, which rows, which part of sampling (fractions of the steps, start inclusive), and a
    multiplier of λ per part of the UNet (input, middle, output blocks)."""

    scale: float = 1.0
    cond_only: bool = False
    start: float = 0.0
    end: float = 1.0
    blocks: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def validate(self) -> None:
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(
                f"the VMix step window must satisfy 0 <= start < end <= 1, got start={self.start}, end={self.end}"
            )
        if len(self.blocks) != len(BLOCK_GROUPS) or any(not 0.0 <= b for b in self.blocks):
            raise ValueError(
                f"the VMix block multipliers must be 3 numbers >= 0 (input, middle, output), got {self.blocks}"
            )

    def layer_scale(self, path: str) -> float:
        """λ for one layer: the global λ times its part's multiplier (a path outside the three parts gets λ)."""
        group = _GROUP_OF_PREFIX.get(path.split(".", 1)[0])
        if group is None:
            return self.scale
        return self.scale * self.blocks[BLOCK_GROUPS.index(group)]


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
