"""Helpers for tests (not a host mirror): reset global host state, load scripts, build models and p objects."""

from __future__ import annotations

import os
from typing import Any

import gradio as gr
import torch
from modules import errors, hashes, paths, script_callbacks, scripts, sd_models, shared

HERE = os.path.dirname(os.path.abspath(__file__))
XYZ_PATH = os.path.join(HERE, "builtin_scripts", "xyz_grid.py")


class StandinModel(torch.nn.Module):
    """Stands in for LatentDiffusion: only .model.diffusion_model (the UNet) is used by the stand-in sampler."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = unet
        self.model.conditioning_key = "crossattn"
        self.cond_stage_key = "txt"
        self.latent_channels = 4
        self.is_sdxl = False


def tiny_unet(seed: int = 0, context_dim: int = 64) -> torch.nn.Module:
    """A small real ldm UNetModel with deterministic weights (the suite's one builder, tests/helpers.py)."""
    from helpers import tiny_unet as build

    return build(context_dim, seed=seed)


def reset(models_path: str | None = None) -> None:
    """Reset every piece of global host state the stand-in keeps (call in a fixture before each test)."""
    scripts.scripts_data.clear()
    scripts.scripts_txt2img = scripts.ScriptRunner()
    scripts.scripts_img2img = scripts.ScriptRunner()
    script_callbacks.clear_callbacks()
    gr.reset_created()
    errors.reported.clear()
    shared.opts.reset()
    shared.state.__init__()  # type: ignore[misc]
    shared.sd_model = None
    shared.cmd_opts.no_hashing = False
    shared.cmd_opts.api_auth = None
    hashes.cache.clear()
    hashes.computed.clear()
    sd_models.checkpoints_stand_in.clear()
    sd_models.swap_mode = "object"
    if models_path is not None:
        shared.models_path = models_path
        paths.models_path = models_path


def register_model(title: str, unet: torch.nn.Module, load: bool = False) -> StandinModel:
    """Register a checkpoint; with load=True it becomes opts.sd_model_checkpoint and shared.sd_model."""
    model = StandinModel(unet)
    sd_models.register_checkpoint(title, model)
    if load:
        shared.opts.sd_model_checkpoint = title
        shared.sd_model = model
    return model


def load_script(path: str, basedir: str | None = None) -> Any:
    """Load a script file the way the host's load_scripts does (module named 'file.py')."""
    return scripts.load_script_file(path, basedir)


def load_xyz() -> Any:
    """Register the stand-in scripts/xyz_grid.py in scripts_data; returns its module."""
    return scripts.load_script_file(XYZ_PATH, os.path.dirname(HERE))


def build_runners() -> None:
    """Mirror UI creation: initialize_scripts + setup_ui for txt2img and img2img inside a gr.Blocks."""
    with gr.Blocks():
        scripts.scripts_txt2img.initialize_scripts(False)
        scripts.scripts_txt2img.setup_ui()
        scripts.scripts_img2img.initialize_scripts(True)
        scripts.scripts_img2img.setup_ui()


def ui_args(
    runner: scripts.ScriptRunner, selected: int = 0, overrides: dict[str, dict[int, Any]] | None = None
) -> list:
    """The tuple the UI would submit: [selected script index] + current .value of every input component.
    overrides maps script title -> {position within that script's args: value}."""
    args = [selected] + [c.value for c in runner.inputs[1:]]
    for title, values in (overrides or {}).items():
        script = runner.script(title)
        assert script is not None, title
        for idx, value in values.items():
            args[script.args_from + idx] = value
    return args
