"""One generation's VMix: the adapter, its V_a for the chosen dimensions, and the hooks on the current UNet.

Host glue creates a ``VMixRun`` when a generation starts, calls ``ensure_on`` before every sampling pass (hires fix
may bring another checkpoint), and ``close`` when the generation ends, whatever way it ends.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import forge
from .families import family_label
from .forge import AttentionFunction
from .hooks import ValueMixer
from .library import AdapterLibrary
from .mixing import MixOptions
from .settings import VMixSettings
from .weights import check_adapter_fits, short_hash


class VMixRun:
    def __init__(self, settings: VMixSettings, library: AdapterLibrary) -> None:
        self.settings = settings
        self.path = library.path_for(settings.adapter)
        self.adapter = library.load(settings.adapter)
        self.strengths = settings.strengths(self.adapter.dimension_names)
        options = MixOptions(settings.scale, settings.cond_only, settings.start, settings.end)
        self.mixer = ValueMixer(library.values(settings.adapter, self.strengths), options)
        self.hash = short_hash(self.path)

    def ensure_on(self, unet: nn.Module) -> None:
        """Attach to ``unet`` unless already there; an adapter that does not fit is refused before any step."""
        if self.mixer.attached_unet is unet:
            return
        self.mixer.detach()
        check_adapter_fits(self.adapter, unet, self.path)
        self.mixer.attach(unet)

    def install_on_forge(self, patcher: Any, attention: AttentionFunction) -> None:
        """Register the replace patches on a cloned Forge UnetPatcher (Forge rebuilds it before every pass)."""
        check_adapter_fits(self.adapter, patcher.model.diffusion_model, self.path)
        forge.install(patcher, self.mixer, attention, self.adapter.layer_paths)

    def infotext(self) -> dict[str, object]:
        return self.settings.to_infotext(self.hash)

    def status(self) -> str:
        on = [name for name, w in self.strengths.items() if w > 0]
        return (
            f"{self.settings.adapter} [{self.hash}] · {family_label(self.adapter.family)} · "
            f"λ {self.settings.scale:g} · {', '.join(on) if on else 'no dimension on'}"
        )

    def close(self) -> None:
        self.mixer.close()
