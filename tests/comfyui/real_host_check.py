"""VMix's node pack inside a real ComfyUI (a manual check, not collected by pytest; needs a ComfyUI source tree).

    python tests/comfyui/real_host_check.py --comfyui /path/to/ComfyUI [--ipadapter /path/to/ComfyUI_IPAdapter_plus]

It loads the pack through ComfyUI's own ``nodes.load_custom_node`` (after ``extra_model_paths.yaml``, as ComfyUI's
``main.py`` orders them), builds ComfyUI's own UNet with the weights of a tiny Stability-ldm UNet, and checks on
ComfyUI's own ModelPatcher, attention function and sampler what the stand-in tests check: Eq. 9 against the literal
two-term reference, bit-identity of an untrained adapter and of strength 0, the percent window, and, with
``--ipadapter``, composition with IPAdapter_plus's own ``Attn2Replace`` and ``ipadapter_attention`` in both orders.
Prints one line per check and exits non-zero on the first failure. Runs on the CPU (a few minutes on 2 cores).

The Python running it needs what ComfyUI imports (its requirements.txt; for this check psutil, torchsde,
comfy-kitchen, av and aiohttp beside torch, and ``torchvision.transforms`` importable) plus this project's test
requirements; install them in a virtual environment, never over the system torch.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import importlib
import os
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def check(name: str, ok: bool) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)
    if not ok:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True, help="a ComfyUI source tree (0.8.0 was used)")
    parser.add_argument("--ipadapter", help="a ComfyUI_IPAdapter_plus source tree")
    options = parser.parse_args()
    comfy_root = os.path.abspath(options.comfyui)
    sys.argv = [os.path.join(comfy_root, "main.py"), "--cpu"]
    # This folder (put first by Python, it holds the stand-in's comfy package) gives way to the real ComfyUI.
    sys.path[:] = [comfy_root] + [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
    import comfy.options

    comfy.options.enable_args_parsing()
    # First, as main.py does it: a later ComfyUI import puts comfy/ (which has a utils.py) first on sys.path.
    extra_config = importlib.import_module("utils.extra_config")
    import comfy.model_patcher
    import comfy.sample
    import comfy.supported_models
    import folder_paths
    import nodes
    import torch
    from comfy.ldm.modules import attention as comfy_attention

    work = tempfile.mkdtemp(prefix="vmix-comfy-")
    shared = os.path.join(work, "shared", "vmix")
    os.makedirs(shared)
    with open(os.path.join(work, "extra_model_paths.yaml"), "w") as f:
        f.write(f"mine:\n  vmix: {shared}\n")
    extra_config.load_extra_path_config(os.path.join(work, "extra_model_paths.yaml"))
    pack = os.path.join(work, "custom_nodes", "ComfyUI-VMix")
    os.makedirs(os.path.dirname(pack))
    os.symlink(REPO, pack)
    check("load_custom_node", asyncio.run(nodes.load_custom_node(pack)))
    check("nodes registered", {"VMixAdapterLoader", "ApplyVMix"} <= set(nodes.NODE_CLASS_MAPPINGS))
    check("repository not on sys.path", not any(p in (REPO, pack) for p in sys.path))
    paths, extensions = folder_paths.folder_names_and_paths["vmix"]
    check(
        "vmix folders: extra_model_paths.yaml, then models/vmix",
        paths == [shared, os.path.join(folder_paths.models_dir, "vmix")],
    )
    check("vmix folder lists .safetensors", extensions == {".safetensors"})
    print(f"     ComfyUI attention function: {comfy_attention.optimized_attention.__name__}")
    sys.path += [os.path.join(REPO, "tests"), REPO]  # only now: helpers (tiny ldm UNets, literal Eq. 9), vmix_train
    from helpers import literal_eq9_unet, random_adapter, tiny_unet, unet_inputs

    from vmix_ext.weights import save_adapter

    loader = nodes.NODE_CLASS_MAPPINGS["VMixAdapterLoader"]()
    apply_node = nodes.NODE_CLASS_MAPPINGS["ApplyVMix"]()

    def comfy_model(ldm_unet: torch.nn.Module, depth: int, width: int) -> comfy.model_patcher.ModelPatcher:
        """ComfyUI's own UNet (SD15 model config, tiny widths) carrying the ldm UNet's weights."""
        config = {
            "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1],
            "channel_mult": [1, 2], "transformer_depth": [depth, depth], "transformer_depth_output": [depth] * 4,
            "transformer_depth_middle": depth, "context_dim": width, "use_linear_in_transformer": True,
            "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None, "use_checkpoint": False,
            "use_temporal_attention": False, "use_temporal_resblock": False,
        }  # fmt: skip
        model_config = comfy.supported_models.SD15(config)
        model_config.unet_config["num_heads"] = 2
        model_config.set_inference_dtype(torch.float32, None)
        model = model_config.get_model({})
        model.diffusion_model.load_state_dict(ldm_unet.state_dict(), strict=True)
        return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))

    def unet_call(patcher, x, t, context, roles, sigmas=None):
        options = copy.copy(patcher.model_options["transformer_options"])
        options.update(cond_or_uncond=list(roles), uuids=[None] * len(roles))
        options["sigmas"] = torch.ones(x.shape[0] // len(roles)) if sigmas is None else sigmas
        with torch.no_grad():
            return patcher.model.diffusion_model(x, t, context=context, transformer_options=options)

    for depth in (1, 2):
        ldm_unet = tiny_unet(depth=depth)
        adapter = random_adapter(ldm_unet)
        name = f"d{depth}.safetensors"
        save_adapter(adapter, os.path.join(shared, name))
        (loaded, _) = loader.load(name)
        model = comfy_model(ldm_unet, depth, 768)
        x, t, context = unet_inputs(batch=4, tokens=154)
        with torch.no_grad():
            plain = ldm_unet(x, t, context)
        check(f"depth {depth}: ComfyUI's UNet with the ldm weights equals the ldm UNet",
              torch.allclose(unet_call(model, x, t, context, [1, 0]), plain, atol=1e-5))  # fmt: skip
        for roles in ([1, 0], [0, 1]):
            for cond_only in (False, True):
                (patched,) = apply_node.apply(model, loaded, 1.3, "color, lighting:0.5", 0.0, 1.0, cond_only)
                rows = torch.tensor([float(r == 0) for r in roles for _ in range(2)]) if cond_only else None
                reference = literal_eq9_unet(
                    ldm_unet, adapter, {"color": 1.0, "lighting": 0.5, "focus": 0.0}, 1.3,
                    None if rows is None else (lambda _, rows=rows: rows),
                )  # fmt: skip
                with torch.no_grad():
                    expected = reference(x, t, context)
                error = float((unet_call(patched, x, t, context, roles) - expected).abs().max())
                check(
                    f"depth {depth}, rows {roles}, cond_only {cond_only}: Eq. 9 (max error {error:.1e})", error < 1e-5
                )

    # The real sampler: KSampler's path with a positive and a negative prompt.
    ldm_unet = tiny_unet()
    model = comfy_model(ldm_unet, 1, 768)
    adapter = random_adapter(ldm_unet)
    save_adapter(adapter, os.path.join(shared, "trained.safetensors"))
    untrained = copy.deepcopy(adapter)
    torch.nn.init.zeros_(untrained.zero_proj.weight)
    torch.nn.init.zeros_(untrained.zero_proj.bias)
    save_adapter(untrained, os.path.join(shared, "untrained.safetensors"))
    _, _, positive = unet_inputs(batch=1)
    _, _, negative = unet_inputs(batch=1, seed=9)

    def sample(patcher, seed=3):
        latent = torch.zeros(1, 4, 8, 8)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
        return comfy.sample.sample(
            patcher, noise, 6, 7.5, "euler", "normal", [[positive, {}]], [[negative, {}]], latent, seed=seed,
            disable_pbar=True,
        )  # fmt: skip

    baseline = sample(model)
    trained, _ = loader.load("trained.safetensors")
    zero, _ = loader.load("untrained.safetensors")
    check(
        "sampler: untrained adapter is bit-identical",
        torch.equal(sample(apply_node.apply(model, zero, 1.0, "all", 0.0, 1.0, False)[0]), baseline),
    )
    check(
        "sampler: strength 0 is bit-identical",
        torch.equal(sample(apply_node.apply(model, trained, 0.0, "all", 0.0, 1.0, True)[0]), baseline),
    )
    always = sample(apply_node.apply(model, trained, 1.0, "all", 0.0, 1.0, False)[0])
    windowed = sample(apply_node.apply(model, trained, 1.0, "all", 0.5, 1.0, False)[0])
    check("sampler: VMix changes the image", not torch.allclose(always, baseline, atol=1e-4))
    apart = not torch.allclose(windowed, always, atol=1e-5) and not torch.allclose(windowed, baseline, atol=1e-5)
    check("sampler: a 50-100% window differs from both always and never", apart)
    check("sampler: the input model was left unpatched", torch.equal(sample(model), baseline))

    if options.ipadapter:
        package = types.ModuleType("ipadapter_plus_real")
        package.__path__ = [os.path.abspath(options.ipadapter)]
        sys.modules["ipadapter_plus_real"] = package
        from ipadapter_plus_real.CrossAttentionPatch import Attn2Replace, ipadapter_attention

        from vmix_ext.layers import cross_attention_layers

        layers = list(cross_attention_layers(ldm_unet))
        blocks = [(p.split(".")[0].removesuffix("_blocks"), int(p.split(".")[1])) for p in layers if "middle" not in p]
        generator = torch.Generator().manual_seed(11)

        class FakeIPAdapter(torch.nn.Module):  # what ipadapter_attention reads of an IPAdapter model
            def __init__(self) -> None:
                super().__init__()
                self.ip_layers = types.SimpleNamespace(to_kvs=torch.nn.ModuleDict())
                for number, path in enumerate(p for p in layers if "middle" not in p):
                    inner = cross_attention_layers(ldm_unet)[path].to_k.out_features
                    for part in ("k", "v"):
                        proj = torch.nn.Linear(768, inner, bias=False)
                        torch.nn.init.normal_(proj.weight, std=0.1, generator=generator)
                        self.ip_layers.to_kvs[f"{number * 2 + 1}_to_{part}_ip"] = proj

            def get_multigpu_clone(self, device):
                return self

        ipa = FakeIPAdapter()
        cond, uncond = torch.randn(1, 4, 768, generator=generator), torch.zeros(1, 4, 768)

        def with_ipadapter(patcher):  # IPAdapterPlus.set_model_patch_replace on SD 1.x's 2-part keys
            patcher = patcher.clone()
            for number, key in enumerate(blocks):
                kwargs = {"ipadapter": ipa, "weight": 0.8, "cond": cond, "uncond": uncond, "sigma_start": 999999999.9,
                          "sigma_end": 0.0, "module_key": str(number * 2 + 1)}  # fmt: skip
                to = patcher.model_options["transformer_options"].copy()
                to["patches_replace"] = dict(to.get("patches_replace", {}))
                to["patches_replace"]["attn2"] = dict(to["patches_replace"].get("attn2", {}))
                if key not in to["patches_replace"]["attn2"]:
                    to["patches_replace"]["attn2"][key] = Attn2Replace(ipadapter_attention, **kwargs)
                    patcher.model_options["transformer_options"] = to
                else:
                    to["patches_replace"]["attn2"][key].add(ipadapter_attention, **kwargs)
            return patcher

        reference = literal_eq9_unet(ldm_unet, adapter, None, 1.2)
        roles = [1, 0]
        for number, path in enumerate(p for p in layers if "middle" not in p):
            layer = cross_attention_layers(reference)[path]
            to_k, to_v = (ipa.ip_layers.to_kvs[f"{number * 2 + 1}_to_{part}_ip"] for part in ("k", "v"))

            def forward(x, context=None, mask=None, _inner=layer.forward, _layer=layer, _k=to_k, _v=to_v):
                images = torch.cat([(cond, uncond)[r].expand(x.shape[0] // len(roles), -1, -1) for r in roles])
                q, k, v = (
                    t.unflatten(-1, (_layer.heads, -1)).transpose(1, 2)
                    for t in (_layer.to_q(x), _k(images), _v(images))
                )
                image = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
                return _inner(x, context) + 0.8 * image @ _layer.to_out[0].weight.T

            layer.forward = forward
        x, t, context = unet_inputs(batch=2)
        with torch.no_grad():
            expected = reference(x, t, context)
        for order in ("IPAdapter then VMix", "VMix then IPAdapter"):
            if order.startswith("IP"):
                both = apply_node.apply(with_ipadapter(model), trained, 1.2, "all", 0.0, 1.0, False)[0]
            else:
                both = with_ipadapter(apply_node.apply(model, trained, 1.2, "all", 0.0, 1.0, False)[0])
            error = float((unet_call(both, x, t, context, roles) - expected).abs().max())
            check(f"IPAdapter_plus's own Attn2Replace, {order}: both act (max error {error:.1e})", error < 1e-5)
    print("all checks passed")


if __name__ == "__main__":
    main()
