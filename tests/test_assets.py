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
    glue = "".join(path.read_text(encoding="utf-8") for path in (ROOT / "vmix_webui").glob("*.py"))
    for css_class in ("vmix-status", "vmix-error", "vmix-hidden"):
        assert f".{css_class}" in css and css_class in glue


def test_the_status_refresh_script_clicks_the_button_the_ui_builds():
    """javascript/vmix.js finds the hidden button by the id vmix_webui/ui.py gives it (elem_id("status_refresh"))."""
    from vmix_ext.settings import elem_id

    script = (ROOT / "javascript" / "vmix.js").read_text(encoding="utf-8")
    for tab in ("txt2img", "img2img"):
        assert elem_id("status_refresh", tab) == tab + "_vmix_status_refresh"
    assert '"_vmix_status_refresh"' in script and '"html_info_" + tab' in script
