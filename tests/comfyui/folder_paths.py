"""Stand-in for ComfyUI's ``folder_paths.py`` (0.8.0; see tests/comfyui/README.md): the model-folder table and the
functions VMix uses. Written from the source, not copied.

``folder_names_and_paths`` maps a folder name to ``(paths, extensions)``; an empty extension set lists every file.
``add_model_folder_path`` appends a path (or puts it first with ``is_default``) and creates an entry with no
extension filter for a new name, which is what ``extra_model_paths.yaml`` does for names ComfyUI does not know yet.
Simplification: no file-list cache (the real one re-lists when a folder's mtime changes, so the visible result is
the same for the tests).

``reset(base_path)`` is not ComfyUI's: it rebuilds the table as ComfyUI builds it at import, under ``base_path``
(at import: this folder, as ComfyUI uses the folder of its own ``folder_paths.py``).
"""

from __future__ import annotations

import os

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
base_path = ""
models_dir = ""


def reset(new_base_path: str) -> None:
    """A fresh table for a ComfyUI installed at ``new_base_path`` (a few of the built-in folders)."""
    global base_path, models_dir
    base_path = os.path.abspath(new_base_path)
    models_dir = os.path.join(base_path, "models")
    folder_names_and_paths.clear()
    folder_names_and_paths["checkpoints"] = ([os.path.join(models_dir, "checkpoints")], supported_pt_extensions)
    folder_names_and_paths["loras"] = ([os.path.join(models_dir, "loras")], supported_pt_extensions)
    folder_names_and_paths["custom_nodes"] = ([os.path.join(base_path, "custom_nodes")], set())


def map_legacy(folder_name: str) -> str:
    return {"unet": "diffusion_models", "clip": "text_encoders"}.get(folder_name, folder_name)


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())
        return
    paths = folder_names_and_paths[folder_name][0]
    if full_folder_path in paths:
        if is_default and paths[0] != full_folder_path:
            paths.remove(full_folder_path)
            paths.insert(0, full_folder_path)
    elif is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    return list(folder_names_and_paths[map_legacy(folder_name)][0])


def _files_below(directory: str) -> list[str]:
    found = []
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True):
        subdirs[:] = [d for d in subdirs if d != ".git"]
        found += [os.path.relpath(os.path.join(dirpath, name), directory) for name in filenames]
    return found


def get_filename_list(folder_name: str) -> list[str]:
    """Files below every path of the folder, relative to their path, filtered by extension, sorted, deduplicated."""
    paths, extensions = folder_names_and_paths[map_legacy(folder_name)]
    names: set[str] = set()
    for path in paths:
        for name in _files_below(path):
            if not extensions or os.path.splitext(name)[1].lower() in extensions:
                names.add(name)
    return sorted(names)


def get_full_path(folder_name: str, filename: str) -> str | None:
    """The first path of the folder that holds ``filename`` as a file; None when none does (or no such folder)."""
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")  # no escaping the folder with ../
    for path in folder_names_and_paths[folder_name][0]:
        full_path = os.path.join(path, filename)
        if os.path.isfile(full_path):
            return full_path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full_path = get_full_path(folder_name, filename)
    if full_path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full_path


reset(os.path.dirname(os.path.abspath(__file__)))
