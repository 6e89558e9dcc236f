"""Stand-in for ``ldm_patched/modules/model_base.py``: the ``BaseModel`` a UNet patcher wraps."""

from __future__ import annotations

from torch import nn


class BaseModel(nn.Module):
    """Mirrors ``BaseModel`` (attributes only): ``diffusion_model`` is the UNet. The host builds it from a model
    config; the stand-in takes a built one. No ``model_sampling`` schedule (``apply_model`` is not reproduced)."""

    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model
