"""One generation's VMix: the adapter, its V_a for the chosen dimensions, and the mixer that adds them.

Host glue creates a ``VMixRun`` when a generation starts, attaches its mixer (hooks or patches) for each sampling
pass, and calls ``close`` when the generation ends, whatever way it ends. The run holds no reference to a UNet.
"""

from __future__ import annotations

import weakref

from torch import nn

from .families import family_label
from .hooks import ValueMixer
from .library import AdapterLibrary
from .mixing import MixOptions
from .settings import VMixSettings
from .weights import check_adapter_fits, short_hash


class VMixRun:
    def __init__(self, settings: VMixSettings, library: AdapterLibrary, file_hash: str | None = None) -> None:
        self.settings = settings
        self.path = library.path_for(settings.adapter)
        self.adapter = library.load(settings.adapter)
        self.strengths = settings.strengths(self.adapter.dimension_names)
        options = MixOptions(settings.scale, settings.cond_only, settings.start, settings.end)
        self.mixer = ValueMixer(library.values(settings.adapter, self.strengths), options)
        self.hash = file_hash if file_hash is not None else short_hash(self.path)
        self._fitted: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    def check_fits(self, unet: nn.Module) -> None:
        """Refuse an adapter that does not fit ``unet``; each UNet is checked once per generation (hires fix may
        bring a second checkpoint, which is checked when its pass starts)."""
        if unet in self._fitted:
            return
        check_adapter_fits(self.adapter, unet, self.path)
        self._fitted.add(unet)

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
