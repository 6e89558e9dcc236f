"""Stand-in for modules/paths.py (models_path and script_path; tests point them at a tmp dir)."""

from __future__ import annotations

import os

script_path: str = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data_path: str = script_path
models_path: str = os.path.join(data_path, "models")
