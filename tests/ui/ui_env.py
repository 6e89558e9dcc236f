"""Whether this Python can run the UI tests: real gradio in a version a host ships, and for the browser tests
Playwright with Debian's Chromium. Imports neither, so the main test run can ask without side effects.

Without them the UI tests are skipped (the main environment has no gradio: its UI tests use the stand-in in
``tests/a1111/gradio``). With ``VMIX_UI_TESTS=required`` (``.ci/run`` sets it in the UI environments) a missing
piece is an error instead, so CI can never pass on skipped UI tests.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST_GRADIO = ("3.41.2", "4.40.0")  # A1111 1.10 / reForge / Forge Classic; Forge / Forge Neo
CHROMIUM = Path(os.environ.get("VMIX_CHROMIUM", "/usr/bin/chromium"))


def _required() -> bool:
    return os.environ.get("VMIX_UI_TESTS") == "required"


def _skip_or_fail(reason: str) -> None:
    if _required():
        raise RuntimeError(f"VMIX_UI_TESTS=required, but {reason}")
    pytest.skip(reason, allow_module_level=True)


def gradio_problem() -> str | None:
    """Why real gradio cannot be used here, or None."""
    loaded = sys.modules.get("gradio")
    if loaded is not None and Path(loaded.__file__ or "").resolve().is_relative_to(ROOT):
        return "this process already imported the gradio stand-in of tests/a1111"
    spec = importlib.util.find_spec("gradio")
    if spec is None or spec.origin is None:
        return "real gradio is not installed (see docs/testing.md, UI tests)"
    if Path(spec.origin).resolve().is_relative_to(ROOT):
        return "the gradio on sys.path is the stand-in of tests/a1111"
    version = importlib.metadata.version("gradio")
    if version not in HOST_GRADIO:
        return f"gradio {version} is installed; the hosts ship {' and '.join(HOST_GRADIO)}"
    return None


def require_gradio() -> None:
    problem = gradio_problem()
    if problem is not None:
        _skip_or_fail(problem)


def require_browser() -> None:
    require_gradio()
    if importlib.util.find_spec("playwright") is None:
        _skip_or_fail("playwright is not installed")
    if not CHROMIUM.exists():
        _skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
