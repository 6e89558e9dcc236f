"""TensorBoard event files: loss, learning rate and gradient norm per step, and the sample grids.

Optional: ``[output] tensorboard = true`` needs the ``tensorboard`` package (torch's SummaryWriter writes the files
but imports it). View them with ``tensorboard --logdir <output folder>/logs``. A resumed run purges the events the
killed run logged after its last checkpoint, so the curves have no doubled stretch.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

MISSING = (
    "[output] tensorboard = true needs the tensorboard package: pip install tensorboard (in the trainer's "
    "environment); or set tensorboard = false"
)


def tensorboard_missing() -> str | None:
    """The message to show when the tensorboard package cannot be imported, else None."""
    try:
        importlib.import_module("tensorboard")
    except ImportError:
        return MISSING
    return None


class EventLog:
    """Event files in ``folder``; ``purge_step``: drop events at and after this step left by a killed run."""

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        problem = tensorboard_missing()
        if problem:
            raise ImportError(problem)
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self._writer: Any = SummaryWriter(str(folder), purge_step=purge_step)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self._writer.add_scalar(name, value, step)

    def image(self, tag: str, step: int, image: Image.Image) -> None:
        import numpy as np  # tensorboard needs numpy, so it is there whenever tensorboard is

        self._writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
