"""The ``vmix`` models folder: ``ComfyUI/models/vmix`` plus any ``vmix:`` entries of ``extra_model_paths.yaml``."""

from __future__ import annotations

import os

import folder_paths

FOLDER_NAME = "vmix"
EXTENSIONS = {".safetensors"}


def register() -> None:
    """Make ``vmix`` a ComfyUI model folder that lists ``.safetensors`` files.

    ComfyUI reads ``extra_model_paths.yaml`` before it imports custom nodes, so a ``vmix:`` entry there has already
    created the folder entry (with no extension filter): its paths are kept, in their order, and
    ``models/vmix`` is added after them. Idempotent.
    """
    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    entry = folder_paths.folder_names_and_paths.get(FOLDER_NAME)
    paths = list(entry[0]) if entry else []
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[FOLDER_NAME] = (paths, set(EXTENSIONS))


def adapter_names() -> list[str]:
    """Adapter files below every ``vmix`` folder, as paths relative to their folder (ComfyUI's combo values)."""
    return folder_paths.get_filename_list(FOLDER_NAME)


def adapter_path(name: str) -> str:
    """The file behind a combo value; a name no folder holds is an error that says where adapters go."""
    path = folder_paths.get_full_path(FOLDER_NAME, name) if name else None
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(FOLDER_NAME))
        raise FileNotFoundError(
            f"VMix adapter '{name}' was not found in the vmix model folders ({folders}); put adapter .safetensors "
            "files there (or add a 'vmix:' entry to extra_model_paths.yaml) and refresh the node list"
        )
    return path


def file_stamp(name: str) -> str:
    """Size and modification time of an adapter file, so ComfyUI reloads a file that was replaced (a new training
    checkpoint under the same name); "" for a name that is not there (the node then reports it)."""
    path = folder_paths.get_full_path(FOLDER_NAME, name) if name else None
    if path is None:
        return ""
    stat = os.stat(path)
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
