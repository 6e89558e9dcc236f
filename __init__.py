"""ComfyUI's entry point to VMix: ComfyUI imports this file from ``custom_nodes/<folder>/``.

The A1111 and Forge web UIs never import it (they load ``scripts/*.py``, ``install.py`` and ``preload.py`` by path).
Outside ComfyUI (pytest imports the ``__init__.py`` of every folder it collects from) it defines empty mappings and
imports nothing, so it is inert there.

ComfyUI does not put the node folder on ``sys.path``. Adding it would make every file here (``install.py``,
``preload.py``, ``scripts``, ``tests``) importable by every other node pack, so only this folder's two packages are
registered, under their own names.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGES = ("vmix_ext", "vmix_comfy")


def _inside_comfyui() -> bool:
    # folder_paths is ComfyUI's own top-level module, imported before any custom node.
    return importlib.util.find_spec("folder_paths") is not None


def _import_package(name: str) -> ModuleType:
    """Import ``<this folder>/<name>`` as the top-level package ``name`` (an already imported one is kept)."""
    if name in sys.modules:
        return sys.modules[name]
    folder = os.path.join(_HERE, name)
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"VMix: cannot import the package {name} from {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


NODE_CLASS_MAPPINGS: dict[str, Any] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

if _inside_comfyui():
    for _name in _PACKAGES:
        _import_package(_name)
    from vmix_comfy.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
