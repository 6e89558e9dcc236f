"""Stand-in for modules/api/api.py: script lookup and script-args assembly for /sdapi/v1/txt2img and img2img."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import gradio as gr

from modules import processing, scripts, shared


class HTTPException(Exception):
    """Stands in for fastapi.HTTPException(status_code, detail)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def script_name_to_index(name: str, script_list: list) -> int:
    """Mirrors api.script_name_to_index: case-insensitive match on title(); 422 if absent."""
    try:
        return [s.title().lower() for s in script_list].index(name.lower())
    except Exception as e:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from e


def get_script(script_name: str, script_runner: scripts.ScriptRunner) -> Any:
    """Mirrors Api.get_script."""
    if script_name is None or script_name == "":
        return None
    return script_runner.scripts[script_name_to_index(script_name, script_runner.scripts)]


def init_default_script_args(script_runner: scripts.ScriptRunner) -> list:
    """Mirrors Api.init_default_script_args: [0, None...] up to the largest args_to, then each script's ui() is
    called AGAIN (twice: a truthiness test, then the values) inside gr.Blocks() and its components' .value fill
    args_from:args_to. Done once when the Api object is created."""
    last_arg_index = 1
    for script in script_runner.scripts:
        if last_arg_index < script.args_to:
            last_arg_index = script.args_to
    script_args: list = [None] * last_arg_index
    script_args[0] = 0
    with gr.Blocks():
        for script in script_runner.scripts:
            if script.ui(script.is_img2img):
                ui_default_values = [elem.value for elem in script.ui(script.is_img2img)]
                script_args[script.args_from : script.args_to] = ui_default_values
    return script_args


def init_script_args(
    alwayson_scripts: dict | None, default_script_args: list, script_runner: scripts.ScriptRunner
) -> list:
    """Mirrors Api.init_script_args (no selectable script): copy the defaults, then for each
    alwayson_scripts[name] (unknown name -> 422; selectable -> 422) that has an "args" key, overwrite positions
    args_from+idx for idx < min(script arg count, len(args)) with args[idx]. Fewer args keep the defaults for the
    rest, extra args are ignored; a dict for "args" is indexed with ints (so {"0": v} raises KeyError -> HTTP 500,
    and an empty dict changes nothing)."""
    script_args = default_script_args.copy()
    for name in (alwayson_scripts or {}).keys():
        script = get_script(name, script_runner)
        if script is None:
            raise HTTPException(status_code=422, detail=f"always on script {name} not found")
        if script.alwayson is False:
            raise HTTPException(
                status_code=422, detail="Cannot have a selectable script in the always on scripts params"
            )
        if "args" in alwayson_scripts[name]:
            request_args = alwayson_scripts[name]["args"]
            for idx in range(0, min(script.args_to - script.args_from, len(request_args))):
                script_args[script.args_from + idx] = request_args[idx]
    return script_args


def text2imgapi(
    p: processing.StableDiffusionProcessingTxt2Img,
    alwayson_scripts: dict | None = None,
    default_script_args: list | None = None,
) -> processing.Processed:
    """Mirrors Api.text2imgapi: p.is_api = True, p.scripts set, p.script_args = tuple(script_args), then
    process_images inside `with closing(p)` and shared.state.begin()/end()."""
    runner = scripts.scripts_txt2img
    defaults = default_script_args if default_script_args is not None else init_default_script_args(runner)
    script_args = init_script_args(alwayson_scripts, defaults, runner)
    with closing(p):
        p.is_api = True
        p.scripts = runner
        try:
            shared.state.begin(job="scripts_txt2img")
            p.script_args = tuple(script_args)
            processed = processing.process_images(p)
        finally:
            shared.state.end()
    return processed
