"""An exponential moving average of the trained weights; with it on, the saved adapter holds the average.

After each optimizer step, for every trained tensor: ema ← d·ema + (1 − d)·weight, with the decay warming up as
diffusers' EMAModel does, d = min(decay, (1 + n) / (10 + n)) for the n-th update (from 0), so the first steps are
not dominated by the untrained start. Kept in float32 on the weights' device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch


def ema_decay(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (counted from 0)."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightAverage:
    def __init__(self, params: Mapping[str, torch.Tensor], decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().to(torch.float32).clone() for name, p in params.items()}

    @torch.no_grad()
    def update(self, params: Mapping[str, torch.Tensor]) -> None:
        d = ema_decay(self.decay, self.updates)
        for name, value in params.items():
            self.shadow[name].mul_(d).add_(value.detach().to(torch.float32), alpha=1 - d)
        self.updates += 1

    def load(self, shadow: Mapping[str, torch.Tensor], updates: int) -> None:
        missing = sorted(set(self.shadow) - set(shadow))
        if missing:
            raise KeyError(missing[0])
        with torch.no_grad():
            for name, value in self.shadow.items():
                value.copy_(shadow[name])
        self.updates = updates

    @contextlib.contextmanager
    def applied(self, params: Mapping[str, torch.nn.Parameter]) -> Iterator[None]:
        """The parameters hold the average inside the block and their own values again after it, bit for bit."""
        kept = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(kept[name])
