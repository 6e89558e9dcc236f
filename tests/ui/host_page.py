"""A host-like web page around the VMix accordion, built in REAL gradio (3.41.2 or 4.40.0).

What is the host's and what is ours:
- ``scripts/vmix.py`` is loaded and its ``ui()`` built by the A1111 stand-in's ``modules.scripts.ScriptRunner``
  (``tests/a1111/modules``, gradio-independent apart from the real ``gr.Group``/``gr.Dropdown`` it builds), inside
  a txt2img-like and an img2img-like tab, as A1111's ``modules/ui.py`` does: a prompt box ``<tab>_prompt``, a paste
  button ``<tab>_paste``, a Generate button ``<tab>_generate``, the always-on scripts, and the generation-info box
  ``html_info_<tab>`` (``modules/ui_common.py: create_output_panel``).
- ``modules.ui_components.InputAccordion`` is ``tests/ui/host/modules/ui_components.py`` (per gradio version).
- Paste: the paste button runs the stand-in's ``infotext_utils.paste`` (A1111 ``modules/infotext_utils.py:
  connect_paste``: parse the prompt box, call the ``on_infotext_pasted`` callbacks, then one update per
  (component, key) of the tab's paste fields: the prompt, the steps and every script's ``infotext_fields``).
- Generate runs a tiny generation (a real ldm UNet, 64×64, 2 steps) through the stand-in's ``txt2img``/``img2img``
  and so through the script's ``process()`` and hooks. It streams 20 progress lines into ``html_info_<tab>``
  before the final infotext, as hosts that update their output components during a generation do.
- Page scripts and styles are injected the way ``modules/ui_gradio_extensions.py: reload_javascript`` does (A1111
  108f5c735768, Forge dfdcbab685e5): gradio's page template response is wrapped so that ``<script src="file=...">``
  tags for the host's ``script.js``, the host's ``javascript/*.js`` (stand-ins in ``tests/ui/host``) and then the
  extension's ``javascript/*.js`` go before ``</head>``, and stylesheet links for the host's and the extension's
  ``style.css`` before ``</body>``. The queue is on, as in both hosts (``demo.queue(64)``).
"""

from __future__ import annotations

import html
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HOST = HERE / "host"
A1111 = ROOT / "tests" / "a1111"
TABS = ("txt2img", "img2img")
CONTEXT_WIDTH = 768  # SD 1.x
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _put_host_on_path() -> None:
    """Our ``modules`` first; ``tests/a1111`` (for ``standin``) last, so its stand-in gradio never wins."""
    for path in (str(ROOT), str(ROOT / "tests"), str(HOST)):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    if str(A1111) not in sys.path:
        sys.path.append(str(A1111))


_put_host_on_path()

import gradio as gr  # noqa: E402

if Path(gr.__file__).resolve().is_relative_to(ROOT):
    raise ImportError(f"tests/ui needs the real gradio, but {gr.__file__} was imported (the stand-in)")

import torch  # noqa: E402
from helpers import random_adapter, tiny_unet  # noqa: E402
from modules import img2img, infotext_utils, paths, processing, script_callbacks, scripts, shared, txt2img  # noqa: E402
from standin import register_model  # noqa: E402

from vmix_ext.adapter import Dimension  # noqa: E402
from vmix_ext.weights import save_adapter  # noqa: E402

GRADIO_VERSION = gr.__version__
PROGRESS_UPDATES = 20  # per generation, before the final infotext (Forge updates its outputs hundreds of times)
MOOD = (Dimension("warmth", "warm colours", "sks7"), Dimension("contrast", "high contrast", "sks8"))


@dataclass
class HostPage:
    """The built page and what the tests need to reach behind it."""

    demo: gr.Blocks
    folder: Path
    module: Any  # the loaded scripts/vmix.py
    runners: dict[str, scripts.ScriptRunner] = field(default_factory=dict)
    url: str = ""
    gradio_version: str = GRADIO_VERSION

    def reset(self) -> None:
        """Forget what earlier tests left on the server side: status lines, the adapter cache."""
        from vmix_webui import adapters, status

        status._after_generation.clear()
        adapters.library().clear()
        _runs.clear()

    def close(self) -> None:
        self.demo.close()
        gr.routes.templates.TemplateResponse = _original_template_response


def write_adapters(folder: Path, unet: torch.nn.Module) -> None:
    """film (3 dimensions, SD 1.x), mood (2 other dimensions), wide (made for SDXL's width), broken (not a file
    of ours)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_adapter(random_adapter(unet, seed=11), folder / "film.safetensors")
    save_adapter(random_adapter(unet, seed=12, dims=MOOD), folder / "mood.safetensors")
    save_adapter(random_adapter(tiny_unet(2048, seed=3), seed=13), folder / "wide.safetensors")
    (folder / "broken.safetensors").write_bytes(b"this is not a safetensors file")


def build(models: Path) -> HostPage:
    """The host's start-up, cut to what the accordion needs: fresh stand-in state, the model, the script, the UI."""
    scripts.scripts_data.clear()
    scripts.scripts_txt2img = scripts.ScriptRunner()
    scripts.scripts_img2img = scripts.ScriptRunner()
    script_callbacks.clear_callbacks()
    shared.opts.reset()
    shared.models_path = paths.models_path = str(models)
    unet = tiny_unet(CONTEXT_WIDTH, seed=0)
    register_model("main", unet, load=True)
    folder = models / "VMix"
    write_adapters(folder, unet)
    module = scripts.load_script_file(str(ROOT / "scripts" / "vmix.py"), str(ROOT))
    script_callbacks.before_ui_callback()
    runners = {"txt2img": scripts.scripts_txt2img, "img2img": scripts.scripts_img2img}
    with gr.Blocks(title="VMix UI test host", analytics_enabled=False) as demo:
        with gr.Tabs(elem_id="tabs"):
            for tab in TABS:
                with gr.Tab(tab, id=tab, elem_id=f"tab_{tab}"):
                    _tab(tab, runners[tab])
    demo.queue(64)
    return HostPage(demo, folder, module, runners)


def _tab(tab: str, runner: scripts.ScriptRunner) -> None:
    prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{tab}_prompt")
    with gr.Row():
        paste = gr.Button("↙️", elem_id=f"{tab}_paste")
        generate_button = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate")
    steps = gr.Slider(minimum=1, maximum=8, step=1, value=2, label="Sampling steps", elem_id=f"{tab}_steps")
    runner.initialize_scripts(tab == "img2img")
    runner.setup_ui()
    info = gr.HTML(elem_id=f"html_info_{tab}", elem_classes="infotext")
    fields = [(prompt, "Prompt"), (steps, "Steps"), *runner.infotext_fields]

    def generate(text: str, n: float, *args: Any) -> Iterator[str]:  # a generator function, so gradio streams it
        yield from _generate(tab, text, n, args)

    # show_progress=False as both hosts' generate buttons (modules/ui.py), so no progress overlay lands in the box.
    generate_button.click(fn=generate, inputs=[prompt, steps, *runner.inputs], outputs=[info], show_progress=False)
    paste.click(
        fn=lambda text: infotext_utils.paste(text, fields),
        inputs=[prompt],
        outputs=[component for component, _ in fields],
    )


def _generate(tab: str, prompt: str, steps: float, args: tuple[Any, ...]) -> Iterator[str]:
    for step in range(PROGRESS_UPDATES):  # the info box changes many times first: one status refresh must follow
        yield f"<div class='progress'>{tab}: step {step + 1}…</div>"
        time.sleep(0.025)
    p = _processing(tab, prompt, int(steps))
    processed = (txt2img.txt2img if tab == "txt2img" else img2img.img2img)(p, *args)
    _runs[tab] = _runs.get(tab, 0) + 1  # numbered, so a test can tell this generation's info from the last one's
    yield f"<div class='final-infotext' data-run='{_runs[tab]}'><p>{html.escape(processed.info)}</p></div>"


_runs: dict[str, int] = {}


def _processing(tab: str, prompt: str, steps: int) -> processing.StableDiffusionProcessing:
    common = {"prompt": prompt or "a cat", "negative_prompt": "blurry", "seed": 1, "steps": steps, "cfg_scale": 5.0}
    if tab == "txt2img":
        p: Any = processing.StableDiffusionProcessingTxt2Img(width=64, height=64, **common)
    else:
        p = processing.StableDiffusionProcessingImg2Img(width=64, height=64, denoising_strength=0.5, **common)
        p.standin_init_latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(7)
    p.standin_cond = torch.randn(1, 77, CONTEXT_WIDTH, generator=g)
    p.standin_uncond = torch.randn(1, 77, CONTEXT_WIDTH, generator=g)
    return p


# -- serving ----------------------------------------------------------------------------------------------------------

_original_template_response = gr.routes.templates.TemplateResponse


def page_scripts() -> list[Path]:
    """In the host's order: script.js, the host's javascript/*.js, then each extension's javascript/*.js."""
    return [
        HOST / "script.js",
        *sorted((HOST / "javascript").glob("*.js")),
        *sorted((ROOT / "javascript").glob("*.js")),
    ]


def page_styles() -> list[Path]:
    """The host's stylesheet (a stand-in with its rule for tool buttons), then the extension's style.css."""
    return [HOST / "style.css", ROOT / "style.css"]


def _webpath(path: Path) -> str:
    return f"file={path}?{os.path.getmtime(path)}"


def inject_page_files() -> None:
    """Wrap gradio's template response as the hosts' ``reload_javascript`` does."""
    head = "".join(f'<script type="text/javascript" src="{_webpath(path)}"></script>\n' for path in page_scripts())
    body = "".join(f'<link rel="stylesheet" property="stylesheet" href="{_webpath(path)}">' for path in page_styles())

    def template_response(*args: Any, **kwargs: Any) -> Any:
        response = _original_template_response(*args, **kwargs)
        response.body = response.body.replace(b"</head>", f"{head}</head>".encode())
        response.body = response.body.replace(b"</body>", f"{body}</body>".encode())
        response.init_headers()
        return response

    gr.routes.templates.TemplateResponse = template_response


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(page: HostPage) -> str:
    """Launch on 127.0.0.1 without blocking; returns the page's address."""
    inject_page_files()
    port = free_port()
    page.demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        show_api=False,
        allowed_paths=[str(ROOT)],
    )
    page.url = f"http://127.0.0.1:{port}/"
    return page.url


if __name__ == "__main__":  # look at it by hand: python tests/ui/host_page.py /tmp/models
    import tempfile

    served = build(Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()))
    print("serving", serve(served), "with gradio", GRADIO_VERSION)
    served.demo.block_thread()
