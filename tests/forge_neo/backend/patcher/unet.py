"""Stand-in for Forge Neo's ``backend/patcher/unet.py``: ``UnetPatcher``, the object at
``p.sd_model.forge_objects.unet``."""

from __future__ import annotations

from backend.modules.k_model import KModel
from backend.patcher.base import ModelPatcher


class UnetPatcher(ModelPatcher):
    """Mirrors ``UnetPatcher`` (the registry part). Its ``clone`` is ``ModelPatcher.clone`` plus the sampling extras
    (as in the Neo line's later ``unet.py``, e.g. the fork Skimcult/sd-webui-forge-neo @ 3809dc5e: ``n =
    super().clone()``); the extras are not reproduced. An earlier stored version (@ 1f7084af) built a fresh patcher
    without copying ``model_options``, which would drop every patch on each clone; that one is not mirrored."""

    @classmethod
    def from_model(cls, model, diffusers_scheduler=None, config=None, k_predictor=None):
        """Mirrors ``UnetPatcher.from_model``: wrap a bare UNet in a ``KModel`` and a patcher."""
        del diffusers_scheduler, config, k_predictor
        return cls(KModel(model))
