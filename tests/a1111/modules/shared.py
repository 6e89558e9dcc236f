"""Stand-in for modules/shared.py: opts, cmd_opts, state, sd_model and models_path."""

from __future__ import annotations

import argparse
from typing import Any

from modules import paths, shared_state

OPTION_DEFAULTS: dict[str, Any] = {
    "batch_cond_uncond": True,
    "persistent_cond_cache": True,
    "skip_early_cond": 0.0,
    "s_min_uncond": 0.0,
    "s_min_uncond_all": False,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False,
    "sd_model_checkpoint": None,
    "sd_checkpoints_limit": 1,
    "CLIP_stop_at_last_layers": 1,
    "add_model_hash_to_info": True,
    "add_model_name_to_info": True,
    "add_version_to_infotext": False,
    "token_merging_ratio": 0.0,
    "token_merging_ratio_hr": 0.0,
    "img2img_fix_steps": False,
    "initial_noise_multiplier": 1.0,
    "return_grid": True,
    "face_restoration": False,
    "tiling": False,
}


class Options:
    """Mirrors modules/options.py: Options — attribute access to settings in .data with registered defaults."""

    def __init__(self) -> None:
        object.__setattr__(self, "data", {})
        object.__setattr__(self, "data_labels", dict(OPTION_DEFAULTS))

    def __getattr__(self, item: str) -> Any:
        data = object.__getattribute__(self, "data")
        if item in data:
            return data[item]
        labels = object.__getattribute__(self, "data_labels")
        if item in labels:
            return labels[item]
        raise AttributeError(f"'Options' object has no attribute '{item}'")

    def __setattr__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        """Mirrors Options.set: stores a value."""
        self.data[key] = value
        return True

    def get_default(self, key: str) -> Any:
        """Mirrors Options.get_default."""
        return self.data_labels.get(key)

    def add_option(self, key: str, info: Any) -> None:
        """Mirrors Options.add_option (on_ui_settings); the stand-in keeps info.default as the default."""
        self.data_labels[key] = getattr(info, "default", info)

    def reset(self) -> None:
        """Stand-in helper: drop all set values and extra registered options."""
        self.data.clear()
        self.data_labels.clear()
        self.data_labels.update(OPTION_DEFAULTS)


opts = Options()
cmd_opts = argparse.Namespace(
    no_prompt_history=True,
    api=False,
    nowebui=False,
    embeddings_dir="",
    lowvram=False,
    medvram=False,
    no_hashing=False,
    api_auth=None,
)
state = shared_state.State()
models_path: str = paths.models_path
sd_model: Any = None
"""The loaded model; processing.StableDiffusionProcessing.sd_model reads this (its setter is a no-op)."""
demo: Any = None
