"""Stand-in for Forge Neo's ``backend/modules/k_model.py``: the ``KModel`` a UNet patcher wraps."""

from __future__ import annotations

from torch import nn


class KModel(nn.Module):
    """Mirrors ``KModel`` (attributes only): ``diffusion_model`` is the UNet. No ``predictor`` schedule
    (``apply_model`` is not reproduced)."""

    def __init__(self, model, diffusers_scheduler=None, k_predictor=None, config=None):
        super().__init__()
        del diffusers_scheduler, k_predictor
        self.config = config
        self.diffusion_model = model
