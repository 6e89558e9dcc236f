"""The script's ``ui()`` built inside real gradio (3.41.2 or 4.40.0) on the host page of ``host_page.py``, without a
browser: what the page is sent, the script's arguments, the paste fields, and the injected page files."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import pytest
from ui_env import HOST_GRADIO, ROOT, require_gradio

require_gradio()

import gradio as gr  # noqa: E402
import host_page  # noqa: E402
from modules import infotext_utils, scripts, txt2img  # noqa: E402

from vmix_ext.settings import INFOTEXT_ENABLED, INFOTEXT_KEYS, LABELS, elem_id  # noqa: E402

TABS = host_page.TABS


def vmix_controls(host: Any, tab: str) -> list[Any]:
    runner: scripts.ScriptRunner = host.runners[tab]
    script = runner.script("VMix")
    return runner.inputs[script.args_from : script.args_to]


def page_components(host: Any) -> dict[str, dict[str, Any]]:
    """What the browser is sent, by elem_id (the block's config in gradio 3 and 4 alike)."""
    config = host.demo.get_config_file()
    return {c["props"]["elem_id"]: c for c in config["components"] if c.get("props", {}).get("elem_id")}


def test_real_gradio_of_a_host():
    assert gr.__version__ in HOST_GRADIO
    assert not gr.__file__.startswith(str(ROOT))
    assert isinstance(gr.Blocks(), gr.blocks.BlockContext)


@pytest.mark.parametrize("tab", TABS)
def test_controls_in_the_host_args_order(host, tab):
    controls = vmix_controls(host, tab)
    ids = [c.elem_id for c in controls]
    # The switch (InputAccordion's hidden checkbox) is the first argument; every control has its own id.
    assert ids[0] == elem_id("enabled", tab) + "-checkbox" and isinstance(controls[0], gr.Checkbox)
    assert len(set(ids)) == len(ids) and all(i.startswith(f"{tab}_vmix_") for i in ids)
    kinds = {c.elem_id: type(c) for c in controls}
    assert kinds[elem_id("adapter", tab)] is gr.Dropdown
    assert kinds[elem_id("scale", tab)] is gr.Slider
    assert kinds[elem_id("dimensions", tab)] is gr.CheckboxGroup
    assert kinds[elem_id("cond_only", tab)] is gr.Checkbox
    # The labels are the ones javascript/vmix.js gives hover hints for.
    hints = (ROOT / "javascript" / "vmix.js").read_text(encoding="utf-8")
    for control in controls[1:]:
        if control.label in LABELS.values() and control.label != LABELS["enabled"]:
            assert f'"{control.label}":' in hints, control.label


@pytest.mark.parametrize("tab", TABS)
def test_what_the_page_is_sent(host, tab):
    sent = page_components(host)
    for control in vmix_controls(host, tab):
        assert control.elem_id in sent, control.elem_id
    # The switch's checkbox is hidden; the accordion carries the class the host's inputAccordion.js looks for.
    assert sent[elem_id("enabled", tab) + "-checkbox"]["props"]["visible"] is False
    assert "input-accordion" in sent[elem_id("enabled", tab)]["props"]["elem_classes"]
    # The status button vmix.js clicks is on the page (visible to gradio), hidden by style.css only.
    button = sent[elem_id("status_refresh", tab)]["props"]
    assert button.get("visible", True) is True and "vmix-hidden" in button["elem_classes"]
    assert re.search(r"\.vmix-hidden\s*\{[^}]*display:\s*none", (ROOT / "style.css").read_text(encoding="utf-8"))
    assert f"html_info_{tab}" in sent


@pytest.mark.parametrize("tab", TABS)
def test_paste_fields(host, tab):
    script = host.runners[tab].script("VMix")
    keys = [key for _, key in script.infotext_fields]
    assert keys[0] == INFOTEXT_ENABLED and set(INFOTEXT_KEYS.values()) <= set(keys)
    assert script.paste_field_names == keys
    assert [component for component, _ in script.infotext_fields] == vmix_controls(host, tab)


def test_paste_updates_are_real_gradio_updates(host):
    """The host's paste step on real components: the pasted values, as updates gradio accepts for them."""
    host.reset()
    fields = host.runners["txt2img"].script("VMix").infotext_fields
    keys = [key for _, key in fields]

    def pasted(text: str) -> dict[str, dict[str, Any]]:
        return dict(zip(keys, infotext_utils.paste(text, fields), strict=True))

    updates = pasted("a cat\nSteps: 3, Sampler: Euler, VMix adapter: mood, VMix scale: 0.5, VMix dims: warmth")
    assert updates[INFOTEXT_ENABLED]["value"] is True
    adapter = updates[INFOTEXT_KEYS["adapter"]]
    assert adapter["value"] == "mood" and "mood" in adapter["choices"]
    assert updates[INFOTEXT_KEYS["scale"]]["value"] == 0.5
    assert updates[INFOTEXT_KEYS["dimensions"]]["value"] == ["warmth"]
    for (component, key), update in zip(fields, updates.values(), strict=True):
        sent = gr.blocks.postprocess_update_dict(component, dict(update), postprocess=True)
        assert sent["__type__"] == "update", key
    off = pasted("a cat\nSteps: 3, Sampler: Euler, Seed: 1")
    assert off[INFOTEXT_ENABLED]["value"] is False
    assert "value" not in off[INFOTEXT_KEYS["adapter"]] and "value" not in off[INFOTEXT_KEYS["scale"]]


def test_ui_defaults_drive_a_generation(host):
    """The values real gradio holds for the controls at start-up are arguments process() accepts."""
    host.reset()
    runner = host.runners["txt2img"]
    args = [0, *(c.value for c in runner.inputs[1:])]  # the "Script" dropdown sends its index (type="index")
    script = runner.script("VMix")
    args[script.args_from] = True  # switched on
    args[script.args_from + 1] = "film"
    p = host_page._processing("txt2img", "a cat", 2)
    info = txt2img.txt2img(p, *args).info
    assert "VMix adapter: film" in info and "VMix error" not in info


def test_page_files_are_injected_like_the_host_does(host):
    body = urllib.request.urlopen(host.url, timeout=10).read().decode("utf-8")
    head, _, tail = body.partition("</head>")
    sources = re.findall(r'<script type="text/javascript" src="file=([^"?]+)\?', head)
    expected = [str(path) for path in host_page.page_scripts()]
    assert sources == expected
    assert sources[0].endswith("tests/ui/host/script.js") and sources[-1] == str(ROOT / "javascript" / "vmix.js")
    styles = re.findall(r'<link rel="stylesheet" property="stylesheet" href="file=([^"?]+)\?', tail)
    assert styles == [str(path) for path in host_page.page_styles()] and styles[-1] == str(ROOT / "style.css")
    for path in [*expected, *styles]:
        with urllib.request.urlopen(f"{host.url}file={path}", timeout=10) as response:
            assert response.status == 200 and response.read() == open(path, "rb").read()
