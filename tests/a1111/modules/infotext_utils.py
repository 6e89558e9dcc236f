"""Stand-in for modules/infotext_utils.py (1.10; formerly generation_parameters_copypaste.py): quoting, parsing
and pasting of infotext."""

from __future__ import annotations

import json
import re
from typing import Any

import gradio as gr

from modules import errors, script_callbacks

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
re_imagesize = re.compile(r"^(\d+)x(\d+)$")
type_of_gr_update = type(gr.update())


def quote(text: Any) -> Any:
    """Mirrors infotext_utils.quote: JSON-quote values containing ',', newline or ':'; others unchanged."""
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    """Mirrors infotext_utils.unquote: json.loads a "quoted" value, else return it unchanged."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None) -> dict[str, Any]:
    """Mirrors parse_generation_parameters: prompt lines, 'Negative prompt:' lines, and the last line's 'k: v'
    pairs (only if it holds >= 3 of them). Values stay strings; 'WxH' values split into k-1/k-2; a few host
    defaults are filled in (Clip skip, Hires ..., Schedule type, ...)."""
    res: dict[str, Any] = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in re_param.findall(lastline):
        try:
            if v and v[0] == '"' and v[-1] == '"':
                v = unquote(v)
            m = re_imagesize.match(v)
            if m is not None:
                res[f"{k}-1"] = m.group(1)
                res[f"{k}-2"] = m.group(2)
            else:
                res[k] = v
        except Exception:
            errors.report(f'Error parsing "{k}: {v}"')
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    res.setdefault("Clip skip", "1")
    for key, default in (
        ("Hires resize-1", 0),
        ("Hires resize-2", 0),
        ("Hires sampler", "Use same sampler"),
        ("Hires checkpoint", "Use same checkpoint"),
        ("Hires prompt", ""),
        ("Hires negative prompt", ""),
        ("Schedule type", "Automatic"),
        ("RNG", "GPU"),
    ):
        res.setdefault(key, default)
    for key in skip_fields or []:
        res.pop(key, None)
    return res


def paste(infotext: str, paste_fields: list[tuple[Any, Any]]) -> list[Any]:
    """Mirrors connect_paste's paste_func: parse, fire infotext_pasted callbacks (they may edit params), then per
    (component, key-or-callable): None -> gr.update() (unchanged); a gr.update dict passes through; otherwise the
    value is cast to type(component.value) ('False' -> False for bools, float() for ints); a failed cast or a
    raising callable leaves the component unchanged. Returns the list of gr.update dicts, one per field."""
    params = parse_generation_parameters(infotext)
    script_callbacks.infotext_pasted_callback(infotext, params)
    res: list[Any] = []
    for output, key in paste_fields:
        if callable(key):
            try:
                v = key(params)
            except Exception:
                errors.report(f"Error executing {key}", exc_info=True)
                v = None
        else:
            v = params.get(key, None)
        if v is None:
            res.append(gr.update())
        elif isinstance(v, type_of_gr_update):
            res.append(v)
        else:
            try:
                valtype = type(output.value)
                if valtype is bool and v == "False":
                    val: Any = False
                elif valtype is int:
                    val = float(v)
                else:
                    val = valtype(v)
                res.append(gr.update(value=val))
            except Exception:
                res.append(gr.update())
    return res


def apply_paste(infotext: str, paste_fields: list[tuple[Any, Any]]) -> list[Any]:
    """Stand-in helper: paste() then write each update's value into its component; returns the new values."""
    values = []
    for (component, _), upd in zip(paste_fields, paste(infotext, paste_fields), strict=True):
        if isinstance(upd, dict) and "value" in upd:
            component.value = upd["value"]
        values.append(component.value)
    return values
