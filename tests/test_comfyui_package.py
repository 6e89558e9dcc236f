"""One repository for every host: ComfyUI loads the root __init__.py the way it loads custom_nodes/*, the web UIs and
pytest are not affected by it, and pyproject.toml carries the Comfy registry's metadata."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFY = ROOT / "tests" / "comfyui"
WEBUI_ONLY = {"gradio", "modules", "launch", "modules_forge", "backend"}


def run_python(code: str, cwd: Path, pythonpath: list[Path]) -> dict:
    """Run ``code`` in a fresh interpreter (nothing of this test process's imports) and return the JSON it prints."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath)), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_comfyui_loads_the_node_pack_from_custom_nodes(tmp_path):
    """As nodes.load_custom_node does: the folder's __init__.py under a path-derived module name, the folder not on
    sys.path. The two nodes register, the vmix folder is known, and nothing else of the repository becomes
    importable."""
    custom_nodes = tmp_path / "ComfyUI" / "custom_nodes"
    custom_nodes.mkdir(parents=True)
    (custom_nodes / "ComfyUI-VMix").symlink_to(ROOT, target_is_directory=True)
    report = run_python(
        f"""
        import importlib.util, json, sys
        import folder_paths, nodes
        folder_paths.reset({str(tmp_path / "ComfyUI")!r})
        pack = {str(custom_nodes / "ComfyUI-VMix")!r}
        ok = nodes.load_custom_node(pack)
        import vmix_ext, vmix_comfy
        print(json.dumps({{
            "ok": ok,
            "errors": [repr(e) for e in nodes.LOAD_ERRORS.values()],
            "nodes": {{k: v.__module__ for k, v in nodes.NODE_CLASS_MAPPINGS.items() if "VMix" in k}},
            "names": {{k: v for k, v in nodes.NODE_DISPLAY_NAME_MAPPINGS.items() if "VMix" in k}},
            "vmix_folder": folder_paths.folder_names_and_paths["vmix"][0],
            "packages": [vmix_ext.__file__, vmix_comfy.__file__],
            "on_path": [p for p in sys.path if "ComfyUI-VMix" in p or p == {str(ROOT)!r}],
            "importable": [m for m in ("install", "preload", "scripts", "vmix_train", "helpers")
                           if importlib.util.find_spec(m) is not None],
            "webui": sorted(m for m in sys.modules if m.split(".")[0] in {sorted(WEBUI_ONLY)!r}),
        }}))
        """,
        cwd=tmp_path,
        pythonpath=[COMFY],
    )
    assert report["ok"] and not report["errors"]
    assert report["nodes"] == {"VMixAdapterLoader": "vmix_comfy.nodes", "ApplyVMix": "vmix_comfy.nodes"}
    assert report["names"] == {"VMixAdapterLoader": "Load VMix Adapter", "ApplyVMix": "Apply VMix"}
    assert report["vmix_folder"] == [str(tmp_path / "ComfyUI" / "models" / "vmix")]
    pack = custom_nodes / "ComfyUI-VMix"
    assert report["packages"] == [str(pack / "vmix_ext" / "__init__.py"), str(pack / "vmix_comfy" / "__init__.py")]
    assert report["on_path"] == [] and report["importable"] == [] and report["webui"] == []


def test_outside_comfyui_the_root_init_is_inert(tmp_path):
    """pytest imports the root __init__.py as a package (named after the checkout's folder) when it collects
    tests/; without ComfyUI's folder_paths it must import nothing and register nothing."""
    report = run_python(
        f"""
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("checkout", {str(ROOT / "__init__.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(json.dumps({{
            "mappings": [module.NODE_CLASS_MAPPINGS, module.NODE_DISPLAY_NAME_MAPPINGS],
            "loaded": sorted(m for m in ("torch", "vmix_ext", "vmix_comfy", "folder_paths") if m in sys.modules),
        }}))
        """,
        cwd=tmp_path,
        pythonpath=[],
    )
    assert report == {"mappings": [{}, {}], "loaded": []}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_each_host_imports_only_its_own_glue():
    web_ui_entry_points = [*sorted((ROOT / "scripts").glob("*.py")), ROOT / "install.py", ROOT / "preload.py"]
    for path in web_ui_entry_points:
        assert not imported_modules(path) & {"vmix_comfy", "folder_paths", "comfy"}, path
    for path in sorted((ROOT / "vmix_comfy").glob("*.py")):
        assert not imported_modules(path) & WEBUI_ONLY, path
        assert imported_modules(path) <= {"__future__", "os", "typing", "collections", "torch", "vmix_ext"} | {
            "folder_paths",
            "comfy",
        }, path
    for path in sorted((ROOT / "vmix_ext").glob("*.py")):
        assert not imported_modules(path) & {"vmix_comfy", "folder_paths", "comfy", *WEBUI_ONLY}, path


def test_pyproject_has_the_comfy_registry_metadata():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project, comfy = config["project"], config["tool"]["comfy"]
    # The registry's node id: under 100 characters, letters, digits, "-", "_" and "." only, starting with a letter,
    # no two special characters in a row.
    assert (
        re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*", project["name"]) and len(project["name"]) < 100
    )
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert "ComfyUI" in project["description"] and project["dependencies"] == []
    assert set(comfy) >= {"PublisherId", "DisplayName", "Icon"}
    assert all(isinstance(comfy[key], str) for key in ("PublisherId", "DisplayName", "Icon"))
    assert comfy["DisplayName"] == "VMix"
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    assert config["tool"]["ruff"]["line-length"] == 120  # the existing tool sections are still there
