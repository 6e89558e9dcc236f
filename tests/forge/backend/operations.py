"""Stand-in for Forge's ``backend/operations.py``: the Linear class Forge builds its UNets with.

Forge constructs every model inside ``using_forge_operations()``, which temporarily replaces ``torch.nn.Linear``
(and Conv/Norm/Embedding) with ``ForgeOperations.Linear`` and friends. So in a Forge UNet ``attn2.to_v`` is a
``torch.nn.Module`` with ``in_features``, ``out_features``, ``weight`` and ``bias``, but NOT a ``torch.nn.Linear``.
(With GGUF or NF4/FP4 checkpoints it is ``ForgeOperationsGGUF.Linear`` / ``ForgeLoader4Bit``, whose ``weight`` is
a packed tensor.)
"""

from __future__ import annotations

import torch


class ForgeOperations:
    """Mirrors ``backend/operations.py: ForgeOperations`` (only ``Linear``)."""

    class Linear(torch.nn.Module):
        """Mirrors ``ForgeOperations.Linear``: plain ``nn.Module`` holding ``weight``/``bias``; forward is
        ``F.linear`` (Forge casts the weight to the input's device/dtype first when manual cast is on)."""

        def __init__(self, in_features, out_features, *args, **kwargs):
            super().__init__()
            del args, kwargs
            self.in_features = in_features
            self.out_features = out_features
            self.weight = None
            self.scale_weight = None
            self.bias = None
            self.parameters_manual_cast = False

        def forward(self, x):
            weight = self.weight.to(device=x.device, dtype=x.dtype)
            bias = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
            return torch.nn.functional.linear(x, weight, bias)
