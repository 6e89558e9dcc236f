"""The files the host injects into the page stay in step with the Python side."""

from __future__ import annotations

import re
from pathlib import Path

from vmix_ext.settings import LABELS

ROOT = Path(__file__).resolve().parents[1]


def test_every_hint_names_a_vmix_label():
    script = (ROOT / "javascript" / "vmix.js").read_text(encoding="utf-8")
    keys = re.findall(r'^\s*"([^"]+)":', script, flags=re.MULTILINE)
    assert keys, "no hints found"
    assert set(keys) <= set(LABELS.values()), set(keys) - set(LABELS.values())


def test_status_classes_are_styled():
    css = (ROOT / "style.css").read_text(encoding="utf-8")
    glue = (ROOT / "scripts" / "vmix.py").read_text(encoding="utf-8")
    for css_class in ("vmix-status", "vmix-error"):
        assert f".{css_class}" in css and css_class in glue
