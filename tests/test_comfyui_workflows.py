"""The example workflows in examples/comfyui: ComfyUI's workflow format, only nodes and inputs that exist, and the
VMix nodes' widget values run through the nodes themselves."""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import Any

import pytest
import torch

COMFY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "comfyui")
if COMFY not in sys.path:
    sys.path.insert(0, COMFY)

import folder_paths  # noqa: E402
import nodes as comfy_nodes  # noqa: E402
from comfy_standin import UNCOND, comfy_model, unet_call  # noqa: E402
from helpers import random_adapter, tiny_unet, unet_inputs  # noqa: E402

from vmix_comfy import folders  # noqa: E402
from vmix_comfy.nodes import NODE_CLASS_MAPPINGS  # noqa: E402
from vmix_ext.weights import save_adapter  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "comfyui")
WORKFLOWS = sorted(glob.glob(os.path.join(EXAMPLES, "*.json")))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SEED_CONTROLS = {"fixed", "increment", "decrement", "randomize"}
FILE_FOLDERS = {("CheckpointLoaderSimple", "ckpt_name"), ("VMixAdapterLoader", "adapter_name")}
MAPPINGS = {**{name: comfy_nodes.NODE_CLASS_MAPPINGS[name] for name in comfy_nodes.CORE_NODES}, **NODE_CLASS_MAPPINGS}


@pytest.fixture(autouse=True)
def comfy_root(tmp_path):
    """A fresh ComfyUI installation with the node pack's folder registered, as at ComfyUI start-up."""
    folder_paths.reset(str(tmp_path))
    folders.register()
    return tmp_path


def read(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def spec_inputs(node_type: str) -> dict[str, tuple]:
    spec = MAPPINGS[node_type].INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


def is_widget(spec: tuple) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def widget_names(node: dict[str, Any]) -> list[str]:
    """The widget inputs of a node in ComfyUI's order, with the frontend's seed control after a seed."""
    linked = {i["name"] for i in node["inputs"]}
    names = []
    for name, spec in spec_inputs(node["type"]).items():
        if is_widget(spec) and name not in linked:
            names.append(name)
            if len(spec) > 1 and spec[1].get("control_after_generate"):
                names.append(name + ".control_after_generate")
    return names


def widget_values(node: dict[str, Any]) -> dict[str, Any]:
    return dict(zip(widget_names(node), node["widgets_values"], strict=True))


def check_widget(node_type: str, name: str, spec: tuple, value: Any) -> None:
    where = f"{node_type}.{name} = {value!r}"
    if isinstance(spec[0], list):
        if (node_type, name) in FILE_FOLDERS:
            assert isinstance(value, str) and value.endswith(".safetensors"), where
        else:
            assert value in spec[0], where
        return
    options = spec[1] if len(spec) > 1 else {}
    python_type = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}[spec[0]]
    assert isinstance(value, python_type) and not (spec[0] != "BOOLEAN" and isinstance(value, bool)), where
    if spec[0] in ("INT", "FLOAT"):
        assert options.get("min", value) <= value <= options.get("max", value), where


def test_there_are_the_two_example_workflows():
    assert [os.path.basename(p) for p in WORKFLOWS] == ["vmix-lambda-comparison.json", "vmix-txt2img.json"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_uses_only_existing_nodes_and_inputs(path):
    workflow = read(path)
    assert workflow["version"] == 0.4 and {"nodes", "links", "last_node_id", "last_link_id"} <= set(workflow)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    assert workflow["last_node_id"] == max(nodes) and workflow["last_link_id"] == max(links)
    assert {"VMixAdapterLoader", "ApplyVMix", "SaveImage"} <= {node["type"] for node in nodes.values()}

    for node in nodes.values():
        assert node["type"] in MAPPINGS, f"unknown node type {node['type']}"
        cls = MAPPINGS[node["type"]]
        spec = spec_inputs(node["type"])
        required = cls.INPUT_TYPES()["required"]
        for slot, entry in enumerate(node["inputs"]):
            assert entry["name"] in spec, f"{node['type']} has no input {entry['name']}"
            assert entry["type"] == spec[entry["name"]][0]
            if entry["link"] is None:
                assert entry["name"] not in required, f"{node['type']}.{entry['name']} is required but not connected"
                continue
            _, source, source_slot, target, target_slot, link_type = links[entry["link"]]
            assert (target, target_slot, link_type) == (node["id"], slot, entry["type"])
            assert nodes[source]["outputs"][source_slot]["type"] == link_type
            assert entry["link"] in nodes[source]["outputs"][source_slot]["links"]
        sockets = [name for name, s in required.items() if not is_widget(s)]
        assert sorted(sockets) == sorted(i["name"] for i in node["inputs"] if i["name"] in sockets)
        for name, value in widget_values(node).items():
            if name.endswith(".control_after_generate"):
                assert value in SEED_CONTROLS
            else:
                check_widget(node["type"], name, spec[name], value)
        assert [o["type"] for o in node["outputs"]] == list(cls.RETURN_TYPES)
        if hasattr(cls, "RETURN_NAMES"):
            assert [o["name"] for o in node["outputs"]] == list(cls.RETURN_NAMES)
    for link_id, source, source_slot, target, target_slot, _ in links.values():
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert link_id in nodes[source]["outputs"][source_slot]["links"]


def test_the_vmix_nodes_run_with_the_workflows_widget_values():
    """The widget values of each workflow, mapped onto the node inputs in ComfyUI's order, run the real node
    functions; the λ comparison's three Apply VMix nodes are λ 0 (the plain model), 1 and 2."""
    unet = tiny_unet()
    x, t, context = unet_inputs(batch=2)
    model = comfy_model(unet)
    baseline = unet_call(model, x, t, context, [UNCOND, 0])
    for path in WORKFLOWS:
        nodes = {node["id"]: node for node in read(path)["nodes"]}
        (loader,) = [n for n in nodes.values() if n["type"] == "VMixAdapterLoader"]
        name = widget_values(loader)["adapter_name"]
        os.makedirs(os.path.join(folder_paths.models_dir, "vmix"), exist_ok=True)
        save_adapter(random_adapter(unet), os.path.join(folder_paths.models_dir, "vmix", name))
        adapter, dimensions = NODE_CLASS_MAPPINGS["VMixAdapterLoader"]().load(**widget_values(loader))
        assert dimensions == "color, lighting, focus"
        outputs = {}
        for node in (n for n in nodes.values() if n["type"] == "ApplyVMix"):
            values = widget_values(node)
            (patched,) = NODE_CLASS_MAPPINGS["ApplyVMix"]().apply(model, adapter, **values)
            outputs[values["strength"]] = unet_call(patched, x, t, context, [UNCOND, 0])
        if "lambda" in os.path.basename(path):
            assert sorted(outputs) == [0.0, 1.0, 2.0]
            assert torch.equal(outputs[0.0], baseline)
            assert not torch.allclose(outputs[1.0], outputs[2.0], atol=1e-4)
        else:
            assert list(outputs) == [1.0] and not torch.allclose(outputs[1.0], baseline, atol=1e-4)
