"""Stand-in for modules/img2img.py: the UI entry point."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import modules.scripts
from modules import processing


def img2img(p: processing.StableDiffusionProcessingImg2Img, *args: Any) -> processing.Processed:
    """Mirrors img2img.img2img (non-batch mode): p.scripts/p.script_args set, then `with closing(p)`: the selected
    script's run(p, *args) or process_images(p)."""
    p.scripts = modules.scripts.scripts_img2img
    p.script_args = args
    with closing(p):
        processed = modules.scripts.scripts_img2img.run(p, *args)
        if processed is None:
            processed = processing.process_images(p)
    return processed
