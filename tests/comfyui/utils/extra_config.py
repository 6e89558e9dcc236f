"""Stand-in for ComfyUI's ``utils/extra_config.py`` (0.8.0): reading ``extra_model_paths.yaml``.

Each top-level section may set ``base_path`` (relative paths are taken from the yaml file's folder) and
``is_default``; every other key is a folder name whose value is one path per line, each handed to
``folder_paths.add_model_folder_path``. ComfyUI's ``main.py`` does this before it imports any custom node.
"""

from __future__ import annotations

import os

import folder_paths
import yaml


def load_extra_path_config(yaml_path: str) -> None:
    with open(yaml_path, encoding="utf-8") as stream:
        config = yaml.safe_load(stream)
    yaml_dir = os.path.dirname(os.path.abspath(yaml_path))
    for section in config.values():
        if section is None:
            continue
        section = dict(section)
        base_path = section.pop("base_path", None)
        if base_path is not None:
            base_path = os.path.expandvars(os.path.expanduser(base_path))
            if not os.path.isabs(base_path):
                base_path = os.path.abspath(os.path.join(yaml_dir, base_path))
        is_default = section.pop("is_default", False)
        for folder_name, value in section.items():
            for line in str(value).split("\n"):
                if not line:
                    continue
                if base_path:
                    full_path = os.path.join(base_path, line)
                elif os.path.isabs(line):
                    full_path = line
                else:
                    full_path = os.path.abspath(os.path.join(yaml_dir, line))
                folder_paths.add_model_folder_path(folder_name, os.path.normpath(full_path), is_default)
