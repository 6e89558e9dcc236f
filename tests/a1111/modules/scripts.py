"""Stand-in for modules/scripts.py: Script base class, scripts_data registry and the ScriptRunner."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
from collections import namedtuple
from typing import Any

import gradio as gr

from modules import errors, paths

AlwaysVisible = object()


class PostSampleArgs:
    """Mirrors scripts.PostSampleArgs."""

    def __init__(self, samples: Any) -> None:
        self.samples = samples


class PostprocessImageArgs:
    """Mirrors scripts.PostprocessImageArgs (the stand-in's image is a latent tensor, not a PIL image)."""

    def __init__(self, image: Any) -> None:
        self.image = image


class PostprocessBatchListArgs:
    """Mirrors scripts.PostprocessBatchListArgs."""

    def __init__(self, images: list) -> None:
        self.images = images


class Script:
    """Mirrors modules/scripts.py: Script — the base class every extension script subclasses."""

    name: str | None = None
    section: str | None = None
    filename: str | None = None
    args_from: int | None = None
    args_to: int | None = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname: str | None = None
    group: Any = None
    create_group = True
    infotext_fields: list | None = None
    paste_field_names: list | None = None
    setup_for_ui_only = False
    controls: list | None = None

    def title(self) -> str:
        """Mirrors Script.title: must be overridden."""
        raise NotImplementedError()

    def ui(self, is_img2img: bool) -> Any:
        """Mirrors Script.ui: returns the components whose values become *args."""
        return None

    def show(self, is_img2img: bool) -> Any:
        """Mirrors Script.show: False, True, or AlwaysVisible."""
        return True

    def run(self, p: Any, *args: Any) -> Any:
        """Mirrors Script.run (selectable scripts only)."""
        return None

    def setup(self, p: Any, *args: Any) -> None:
        """Mirrors Script.setup: called when p.scripts and p.script_args are both set."""

    def before_process(self, p: Any, *args: Any) -> None:
        """Mirrors Script.before_process: first call of process_images, before override_settings are applied."""

    def process(self, p: Any, *args: Any) -> None:
        """Mirrors Script.process: once per process_images, before the batch loop."""

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """Mirrors Script.before_process_batch(batch_number, prompts, seeds, subseeds)."""

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """Mirrors Script.process_batch(batch_number, prompts, seeds, subseeds)."""

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """Mirrors Script.process_before_every_sampling: kwargs x, noise, c, uc; twice with hires fix."""

    def post_sample(self, p: Any, ps: PostSampleArgs, *args: Any) -> None:
        """Mirrors Script.post_sample."""

    def postprocess_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """Mirrors Script.postprocess_batch(images=..., batch_number=...)."""

    def postprocess_batch_list(self, p: Any, pp: PostprocessBatchListArgs, *args: Any, **kwargs: Any) -> None:
        """Mirrors Script.postprocess_batch_list."""

    def postprocess_image(self, p: Any, pp: PostprocessImageArgs, *args: Any) -> None:
        """Mirrors Script.postprocess_image."""

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        """Mirrors Script.postprocess: after Processed is built (infotexts already rendered)."""

    def before_hr(self, p: Any, *args: Any) -> None:
        """Mirrors Script.before_hr: after the hires checkpoint reload, before the second pass."""

    def before_component(self, component: Any, **kwargs: Any) -> None:
        """Mirrors Script.before_component."""

    def after_component(self, component: Any, **kwargs: Any) -> None:
        """Mirrors Script.after_component."""

    def elem_id(self, item_id: str) -> str:
        """Mirrors Script.elem_id: script_[tab_]<title>_<item_id>, tab only when shown on both tabs alike."""
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list[ScriptClassData] = []


def load_module(path: str) -> Any:
    """Mirrors modules/script_loading.py: load_module — the module is named after the file's basename ('x.py')."""
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_script_file(path: str, basedir: str | None = None) -> Any:
    """Mirrors scripts.load_scripts for one file: basedir is prepended to sys.path only while the module executes,
    and every Script subclass in the module's namespace (imported ones too) is appended to scripts_data."""
    basedir = basedir or os.path.dirname(os.path.dirname(os.path.abspath(path)))
    syspath = sys.path
    try:
        if basedir != paths.script_path:
            sys.path = [basedir, *sys.path]
        module = load_module(path)
    finally:
        sys.path = syspath
    for script_class in module.__dict__.values():
        if inspect.isclass(script_class) and issubclass(script_class, Script):
            scripts_data.append(ScriptClassData(script_class, path, basedir, module))
    return module


def wrap_call(func: Any, filename: Any, funcname: str, *args: Any, default: Any = None, **kwargs: Any) -> Any:
    """Mirrors scripts.wrap_call: exceptions are reported and `default` returned."""
    try:
        return func(*args, **kwargs)
    except Exception:
        errors.report(f"Error calling: {filename}/{funcname}", exc_info=True)
    return default


class ScriptRunner:
    """Mirrors modules/scripts.py: ScriptRunner — builds script UIs, slices p.script_args, dispatches callbacks."""

    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.selectable_scripts: list[Script] = []
        self.alwayson_scripts: list[Script] = []
        self.titles: list[str] = []
        self.title_map: dict[str, Script] = {}
        self.infotext_fields: list = []
        self.paste_field_names: list = []
        self.inputs: list = [None]

    def initialize_scripts(self, is_img2img: bool) -> None:
        """Mirrors ScriptRunner.initialize_scripts: instantiate every scripts_data class, sort by show()."""
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for script_data in scripts_data:
            try:
                script = script_data.script_class()
            except Exception:
                errors.report(f"Error # failed to initialize Script {script_data.module}: ", exc_info=True)
                continue
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def create_script_ui(self, script: Script) -> None:
        """Mirrors ScriptRunner.create_script_ui(_inner): ui() controls are appended to inputs; args_from/args_to
        delimit them; script.name is the lowercased title; infotext_fields are collected."""
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)
        controls = wrap_call(script.ui, script.filename, "ui", script.is_img2img)
        script.controls = controls
        if controls is None:
            return
        script.name = wrap_call(script.title, script.filename, "title", default=script.filename).lower()
        for control in controls:
            control.custom_script_source = os.path.basename(script.filename or "")
        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields
        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names
        self.inputs += controls
        script.args_to = len(self.inputs)

    def setup_ui_for_section(self, section: str | None, scriptlist: list[Script] | None = None) -> None:
        """Mirrors ScriptRunner.setup_ui_for_section: each script's UI goes inside a gr.Group."""
        for script in self.alwayson_scripts if scriptlist is None else scriptlist:
            if script.alwayson and script.section != section:
                continue
            if script.create_group:
                with gr.Group(visible=script.alwayson) as group:
                    self.create_script_ui(script)
                script.group = group
            else:
                self.create_script_ui(script)

    def setup_ui(self) -> list:
        """Mirrors ScriptRunner.setup_ui: always-on UIs first, then the 'Script' dropdown at inputs[0], then
        selectable scripts. So p.script_args = (selected_index, *alwayson args, *selectable args)."""
        all_titles = [wrap_call(s.title, s.filename, "title") or s.filename for s in self.scripts]
        self.title_map = {title.lower(): s for title, s in zip(all_titles, self.scripts, strict=True)}
        self.titles = [
            wrap_call(s.title, s.filename, "title") or f"{s.filename} [error]" for s in self.selectable_scripts
        ]
        self.setup_ui_for_section(None)
        dropdown = gr.Dropdown(
            label="Script", elem_id="script_list", choices=["None", *self.titles], value="None", type="index"
        )
        self.inputs[0] = dropdown
        self.setup_ui_for_section(None, self.selectable_scripts)
        self.infotext_fields.append((dropdown, lambda x: gr.update(value=x.get("Script", "None"))))
        return self.inputs

    def run(self, p: Any, *args: Any) -> Any:
        """Mirrors ScriptRunner.run: runs the selected (non-always-on) script, or returns None."""
        script_index = args[0]
        if script_index == 0 or script_index is None:
            return None
        script = self.selectable_scripts[script_index - 1]
        return script.run(p, *args[script.args_from : script.args_to])

    def ordered_scripts(self, method_name: str) -> list[Script]:
        """Mirrors ScriptRunner.ordered_scripts: always-on scripts that override `method_name` (others skipped)."""
        base = getattr(Script, method_name, None)
        return [s for s in self.alwayson_scripts if getattr(type(s), method_name, None) is not base]

    def _dispatch(self, method_name: str, p: Any, *pre: Any, **kwargs: Any) -> None:
        """The shared body of the host's per-callback loops: slice args, call, report (never raise) errors."""
        for script in self.ordered_scripts(method_name):
            try:
                script_args = p.script_args[script.args_from : script.args_to]
                getattr(script, method_name)(p, *pre, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    def setup_scrips(self, p: Any, *, is_ui: bool = True) -> None:
        """Mirrors ScriptRunner.setup_scrips (sic): Script.setup for always-on scripts."""
        for script in self.alwayson_scripts:
            if not is_ui and script.setup_for_ui_only:
                continue
            try:
                script.setup(p, *p.script_args[script.args_from : script.args_to])
            except Exception:
                errors.report(f"Error running setup: {script.filename}", exc_info=True)

    def before_process(self, p: Any) -> None:
        """Mirrors ScriptRunner.before_process."""
        self._dispatch("before_process", p)

    def process(self, p: Any) -> None:
        """Mirrors ScriptRunner.process."""
        self._dispatch("process", p)

    def before_process_batch(self, p: Any, **kwargs: Any) -> None:
        """Mirrors ScriptRunner.before_process_batch."""
        self._dispatch("before_process_batch", p, **kwargs)

    def process_batch(self, p: Any, **kwargs: Any) -> None:
        """Mirrors ScriptRunner.process_batch."""
        self._dispatch("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p: Any, **kwargs: Any) -> None:
        """Mirrors ScriptRunner.process_before_every_sampling: kwargs (x, noise, c, uc) go AFTER the script args."""
        self._dispatch("process_before_every_sampling", p, **kwargs)

    def post_sample(self, p: Any, ps: PostSampleArgs) -> None:
        """Mirrors ScriptRunner.post_sample."""
        self._dispatch("post_sample", p, ps)

    def postprocess_batch(self, p: Any, images: Any, **kwargs: Any) -> None:
        """Mirrors ScriptRunner.postprocess_batch: images= is passed by keyword after the script args."""
        self._dispatch("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p: Any, pp: PostprocessBatchListArgs, **kwargs: Any) -> None:
        """Mirrors ScriptRunner.postprocess_batch_list."""
        self._dispatch("postprocess_batch_list", p, pp, **kwargs)

    def postprocess_image(self, p: Any, pp: PostprocessImageArgs) -> None:
        """Mirrors ScriptRunner.postprocess_image."""
        self._dispatch("postprocess_image", p, pp)

    def postprocess(self, p: Any, processed: Any) -> None:
        """Mirrors ScriptRunner.postprocess."""
        self._dispatch("postprocess", p, processed)

    def before_hr(self, p: Any) -> None:
        """Mirrors ScriptRunner.before_hr."""
        self._dispatch("before_hr", p)

    def script(self, title: str) -> Script | None:
        """Mirrors ScriptRunner.script: look up by lowercased title."""
        return self.title_map.get(title.lower())


scripts_txt2img: ScriptRunner = ScriptRunner()
scripts_img2img: ScriptRunner = ScriptRunner()
