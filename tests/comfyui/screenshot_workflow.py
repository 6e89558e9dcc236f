"""Screenshot of an example workflow in a running ComfyUI's own frontend (a manual tool, not collected by pytest).

    python tests/comfyui/screenshot_workflow.py examples/comfyui/vmix-lambda-comparison.json out.png

Needs a ComfyUI serving on 127.0.0.1:8188 with this node pack in ``custom_nodes/``, ``chromium`` on PATH and
``aiohttp`` (ComfyUI's own dependency). It drives headless Chromium through the DevTools protocol: open the page, load
the workflow with ``app.loadGraphData``, fit it to the view, and save the window as a PNG. It also prints each
node's type and its widgets as the frontend filled them from ``widgets_values``, which shows that the file's values
land on the intended inputs. Set ``Comfy.TutorialCompleted`` first (``POST /settings/Comfy.TutorialCompleted``)
so no first-run dialog covers the graph.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import tempfile
from typing import Any

import aiohttp

SERVER = "http://127.0.0.1:8188"
DEVTOOLS = 9222
WIDTH, HEIGHT = 1800, 1050


async def screenshot(workflow_path: str, out_path: str) -> None:
    profile = tempfile.mkdtemp(prefix="vmix-chromium-")
    browser = subprocess.Popen(
        ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={DEVTOOLS}",
         f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(60):
                try:
                    pages = await (await http.get(f"http://127.0.0.1:{DEVTOOLS}/json")).json()
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.5)
            page = next(p for p in pages if p["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                counter = 0

                async def call(method: str, **params: Any) -> dict:
                    nonlocal counter
                    counter += 1
                    await ws.send_json({"id": counter, "method": method, "params": params})
                    while True:
                        message = await ws.receive_json()
                        if message.get("id") == counter:
                            if "error" in message:
                                raise RuntimeError(message["error"])
                            return message["result"]

                async def js(expression: str) -> Any:
                    result = await call(
                        "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
                    )
                    if "exceptionDetails" in result:
                        raise RuntimeError(result["exceptionDetails"])
                    return result["result"].get("value")

                await call(
                    "Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False
                )
                await call("Page.navigate", url=SERVER)
                for _ in range(240):
                    await asyncio.sleep(0.5)
                    if await js("!!(window.app && window.app.graph && window.app.canvas)"):
                        break
                await asyncio.sleep(5)
                with open(workflow_path, encoding="utf-8") as f:
                    await js(f"window.app.loadGraphData({f.read()}, true, true, 'vmix')")
                await asyncio.sleep(3)
                for kind in ("keyDown", "keyUp"):  # close whatever dialog the frontend opened
                    await call(
                        "Input.dispatchKeyEvent", type=kind, key="Escape", code="Escape", windowsVirtualKeyCode=27
                    )
                await js("window.app.extensionManager.setting.set('Comfy.Minimap.Visible', false)")
                await js("window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
                nodes = await js(
                    "window.app.graph._nodes.map(n => [n.type, (n.widgets || []).map(w => w.name + '=' + w.value)])"
                )
                print(json.dumps(nodes, ensure_ascii=False))
                await asyncio.sleep(2)
                shot = await call("Page.captureScreenshot", format="png")
                with open(out_path, "wb") as f:
                    f.write(base64.b64decode(shot["data"]))
    finally:
        browser.terminate()


if __name__ == "__main__":
    asyncio.run(screenshot(sys.argv[1], sys.argv[2]))
