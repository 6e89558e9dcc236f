"""An IP-Adapter shaped like cubiq/ComfyUI_IPAdapter_plus (commit in tests/comfyui/README.md), for composition tests.

Not a file of that project; it follows its protocol, read in ``CrossAttentionPatch.py`` and ``IPAdapterPlus.py``:

- ``Attn2Replace(callback, **kwargs)`` is one attn2 replace patch per layer. Called with ``(q, k, v,
  extra_options)`` it computes ``optimized_attention(q, k, v, extra_options["n_heads"])`` (bound at import, no
  ``attn_precision``), then adds ``callback(out, q, k, v, extra_options, **kwargs)`` for each registered callback
  whose ``sigma_end <= sigma <= sigma_start`` (sigma = ``extra_options["sigmas"][0]``), and casts back to q's dtype.
  ``add(callback, **kwargs)`` registers one more. ``to(device)`` keeps per-device copies for several GPUs (here it
  only records the call).
- ``set_model_patch_replace(model, patch_kwargs, key)``: a new ``Attn2Replace`` under ``key`` when the key is free,
  else ``.add(ipadapter_attention, **patch_kwargs)`` on whatever patch is there.
- ``apply_ipadapter`` is ``ipadapter_execute``'s registration on a clone: ``sigma_start``/``sigma_end`` from
  ``model_sampling.percent_to_sigma``; a running ``module_key`` "1", "3", "5"...; SD 1.x/2.x use 2-part keys
  (input blocks, output blocks, then ``("middle", 1)``), SDXL 3-part keys (then ``("middle", 1, i)``). ComfyUI names
  the middle block ``("middle", 0)``, so the middle-block patch is never looked up; that is reproduced as it is.
- ``ipadapter_attention`` (the callback) attends q over image tokens: per-layer ``to_k_ip``/``to_v_ip`` of the cond
  or uncond image embedding, picked per chunk by ``cond_or_uncond``, times ``weight`` ("V only" scaling).
"""

from __future__ import annotations

from typing import Any

import torch
from comfy.ldm.modules.attention import optimized_attention
from torch import nn

SIGMA_ALWAYS = 999999999.9


class FakeIPAdapter(nn.Module):
    """The image key/value projections (one pair per registered key, named by ``module_key``) and the image
    embeddings of one IP-Adapter, for a given UNet."""

    def __init__(self, unet: nn.Module, tokens: int = 4, seed: int = 7) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.layers = ipadapter_layers(unet)
        self.sdxl = _is_sdxl(unet)
        layers = cross_attention_layers(unet)
        width = next(iter(layers.values())).to_k.in_features
        self.to_kvs = nn.ModuleDict()
        for number, (_, path) in enumerate(self.layers):
            inner = layers[path].to_k.out_features
            for part in ("k", "v"):
                proj = nn.Linear(width, inner, bias=False)
                with torch.no_grad():
                    proj.weight.copy_(torch.randn(inner, width, generator=generator) * 0.1)
                self.to_kvs[f"{number * 2 + 1}_to_{part}_ip"] = proj
        self.cond = torch.randn(1, tokens, width, generator=generator)
        self.uncond = torch.zeros(1, tokens, width)

    def module_key(self, path: str) -> str:
        """The ``module_key`` whose projections serve the layer at ``path``."""
        return next(str(n * 2 + 1) for n, (_, p) in enumerate(self.layers) if p == path)


def cross_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    return {path: module for path, module in unet.named_modules() if path.endswith(".attn2")}


def _is_sdxl(unet: nn.Module) -> bool:
    return next(iter(cross_attention_layers(unet).values())).to_k.in_features == 2048


def _block_and_index(path: str) -> tuple[str, int, int]:
    """``output_blocks.3.1.transformer_blocks.1.attn2`` -> ("output", 3, 1); the middle block -> ("middle", 0, i)."""
    group, rest = path.split(".", 1)
    index = int(path.split(".transformer_blocks.")[1].split(".")[0])
    if group == "middle_block":
        return "middle", 0, index
    return group.removesuffix("_blocks"), int(rest.split(".")[0]), index


def ipadapter_layers(unet: nn.Module) -> list[tuple[tuple, str]]:
    """``(key, ldm path)`` of each layer in the order IPAdapter_plus registers them: input blocks, output blocks,
    middle; 3-part keys on SDXL, 2-part keys (one per block) otherwise; the middle block numbered 1."""
    sdxl = _is_sdxl(unet)
    groups: dict[str, list[tuple[tuple, str]]] = {"input": [], "output": [], "middle": []}
    for path in cross_attention_layers(unet):
        name, number, index = _block_and_index(path)
        number = 1 if name == "middle" else number
        key = (name, number, index) if sdxl else (name, number)
        if all(k != key for k, _ in groups[name]):
            groups[name].append((key, path))
    return [*groups["input"], *groups["output"], *groups["middle"]]


def ipadapter_attention(
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    extra_options: dict,
    module_key: str = "",
    ipadapter: FakeIPAdapter | None = None,
    weight: float = 1.0,
    cond: torch.Tensor | None = None,
    uncond: torch.Tensor | None = None,
    sigma_start: float = 0.0,
    sigma_end: float = 1.0,
    **kwargs: Any,
) -> torch.Tensor:
    assert ipadapter is not None and cond is not None and uncond is not None
    roles = extra_options["cond_or_uncond"]
    rows = q.shape[0] // len(roles)
    to_k, to_v = ipadapter.to_kvs[module_key + "_to_k_ip"], ipadapter.to_kvs[module_key + "_to_v_ip"]
    ip_k = torch.cat([to_k((cond, uncond)[r]).repeat(rows, 1, 1) for r in roles])
    ip_v = torch.cat([to_v((cond, uncond)[r]).repeat(rows, 1, 1) for r in roles])
    out_ip = optimized_attention(q, ip_k.to(q.dtype), ip_v.to(q.dtype), extra_options["n_heads"])
    return (out_ip * weight).to(q.dtype)


class Attn2Replace:
    def __init__(self, callback: Any = None, **kwargs: Any) -> None:
        self.callback = [callback]
        self.kwargs = [kwargs]
        self.to_calls: list[Any] = []

    def add(self, callback: Any, **kwargs: Any) -> None:
        self.callback.append(callback)
        self.kwargs.append(kwargs)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        dtype = q.dtype
        out = optimized_attention(q, k, v, extra_options["n_heads"])
        sigma = extra_options["sigmas"].detach().cpu()[0].item() if "sigmas" in extra_options else SIGMA_ALWAYS
        for callback, kwargs in zip(self.callback, self.kwargs, strict=True):
            if kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]:
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(dtype=dtype)

    def to(self, device: Any, *args: Any, **kwargs: Any) -> Attn2Replace:
        self.to_calls.append(device)
        return self


def set_model_patch_replace(model: Any, patch_kwargs: dict, key: tuple) -> None:
    to = model.model_options["transformer_options"].copy()
    to["patches_replace"] = dict(to.get("patches_replace", {}))
    to["patches_replace"]["attn2"] = dict(to["patches_replace"].get("attn2", {}))
    if key not in to["patches_replace"]["attn2"]:
        to["patches_replace"]["attn2"][key] = Attn2Replace(ipadapter_attention, **patch_kwargs)
        model.model_options["transformer_options"] = to
    else:
        to["patches_replace"]["attn2"][key].add(ipadapter_attention, **patch_kwargs)


def apply_ipadapter(
    model: Any, ipadapter: FakeIPAdapter, weight: float = 1.0, start_at: float = 0.0, end_at: float = 1.0
) -> Any:
    """IPAdapterAdvanced on a ComfyUI ModelPatcher: a clone with the IP-Adapter on every cross-attention layer."""
    model = model.clone()
    sampling = model.get_model_object("model_sampling")
    patch_kwargs = {
        "ipadapter": ipadapter,
        "weight": weight,
        "cond": ipadapter.cond,
        "uncond": ipadapter.uncond,
        "sigma_start": sampling.percent_to_sigma(start_at),
        "sigma_end": sampling.percent_to_sigma(end_at),
    }
    for number, (key, _) in enumerate(ipadapter.layers):
        patch_kwargs["module_key"] = str(number * 2 + 1)
        set_model_patch_replace(model, patch_kwargs, key)
    return model
