"""A1111: forward hooks on every ``attn2.to_v`` of the UNet about to sample (see ``vmix_ext.hooks``).

Every attention optimisation A1111 offers calls ``self.to_v(context)`` on the whole batch, so a hook that adds λ·V_a
to that output is Eq. 9 under all of them, with Lora, --medvram and FP8 storage. The hooks are attached when a
sampling pass starts and removed when it ends.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vmix_ext.hooks import remove_vmix_hooks
from vmix_ext.session import VMixRun


class A1111Backend:
    name = "A1111"

    def unet(self, p: Any) -> nn.Module:
        return p.sd_model.model.diffusion_model

    def check_model(self, p: Any) -> None:
        """Every model A1111 loads has cross-attention (SD 1.x, 2.x, SDXL); the adapter check does the rest."""

    def begin_pass(self, p: Any, run: VMixRun) -> None:
        unet = self.unet(p)
        run.check_fits(unet)
        run.mixer.attach(unet)

    def end_pass(self, p: Any, run: VMixRun | None) -> None:
        if run is not None:
            run.first_mixer.detach()
            run.hires_mixer.detach()
        try:
            # Also hooks a lost run left (a reloaded script, a crash), but not those of a generation sampling now.
            remove_vmix_hooks(self.unet(p), stale_only=True)
        except AttributeError:
            pass  # no model loaded
