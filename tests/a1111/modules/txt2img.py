"""Stand-in for modules/txt2img.py: the UI entry point."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import modules.scripts
from modules import processing


def txt2img(p: processing.StableDiffusionProcessingTxt2Img, *args: Any) -> processing.Processed:
    """Mirrors txt2img.txt2img (after txt2img_create_processing built p): p.scripts = scripts_txt2img,
    p.script_args = args (the UI tuple: selected-script index, then every script's component values); then
    `with closing(p)`: the selected script's run(), or process_images(p). p.close() runs even on exceptions."""
    p.scripts = modules.scripts.scripts_txt2img
    p.script_args = args
    with closing(p):
        processed = modules.scripts.scripts_txt2img.run(p, *p.script_args)
        if processed is None:
            processed = processing.process_images(p)
    return processed
