"""Stand-in for Forge's ``backend/modules/k_model.py``: the ``KModel`` wrapper held by ``UnetPatcher.model``."""

from __future__ import annotations

import torch

from backend.modules.k_prediction import Prediction


class KModel(torch.nn.Module):
    """Mirrors ``backend/modules/k_model.py: KModel`` (attributes only; ``apply_model`` is not reproduced).

    ``diffusion_model`` is the UNet; ``predictor`` converts between sigma, timestep and sampling percent.
    """

    def __init__(self, model, diffusers_scheduler=None, k_predictor=None, config=None):
        super().__init__()
        del diffusers_scheduler
        self.config = config
        dtype = next(model.parameters()).dtype
        self.storage_dtype = dtype
        self.computation_dtype = dtype
        self.diffusion_model = model
        self.predictor = k_predictor if k_predictor is not None else Prediction()
