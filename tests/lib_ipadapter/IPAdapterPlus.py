"""Stand-in for ``extensions-builtin/sd_forge_ipadapter/lib_ipadapter/IPAdapterPlus.py``: the registration protocol
and the attn2 patch of the Forge family's built-in IP-Adapter (tests only; no host code is copied).

Read from Forge lllyasviel/stable-diffusion-webui-forge @ dfdcbab685e5 (L161-171 ``set_model_patch_replace``,
``CrossAttentionPatch``, ``IPAdapterApply.apply_ipadapter``), reForge Panchovix/stable-diffusion-webui-reForge
@ 3b56b268 (L166-176, same protocol; ``optimized_attention``), Forge Classic Haoming02/sd-webui-forge-classic
@ 1f95d717 (L194-204, same), and the Forge Neo fork AiWithYou/aikimi-forge-neo @ f728aa34 (its copying
``set_model_patch_replace``). The four files differ in what this stand-in reproduces only by the attention they import:
Forge and Neo ``backend.attention.attention_function``, reForge and Classic
``ldm_patched.ldm.modules.attention.optimized_attention``; :func:`host_attention` calls whichever the running host
(stand-in) provides.

Simplifications: the image encoder and ``image_proj_model`` are not reproduced (``apply_ipadapter`` takes the projected
image tokens as ``embeds``, which the real one also accepts, unprojected); no FaceID/InstantID, masks, ``unfold_batch``
or the "channel penalty" weight type; ``keys`` lets a test register on the tiny test UNets, whose block numbers are not
SD 1.5's or SDXL's. ``CrossAttentionPatch.calls``, when a test sets it to a list, records each call (test
instrumentation, not in the host).
"""

from __future__ import annotations

import copy
import importlib

import torch
from torch import nn

SIGMA_NEVER_REACHED = 999999999.9  # every host's percent_to_sigma(0.0), and the patch's sigma when none is given


def host_attention(q, k, v, heads):
    """``attention.attention_function(q, k, v, heads)`` on Forge and Neo, ``optimized_attention(q, k, v, heads)`` on
    reForge and Classic (each file imports its host's one; both are looked up here at call time)."""
    try:
        return importlib.import_module("backend.attention").attention_function(q, k, v, heads)
    except ModuleNotFoundError:
        return importlib.import_module("ldm_patched.ldm.modules.attention").optimized_attention(q, k, v, heads)


class To_KV(nn.Module):
    """Mirrors ``To_KV``: one bias-free Linear per ``"{n}.to_k_ip.weight"`` / ``"{n}.to_v_ip.weight"`` tensor, keyed
    ``"{n}_to_k_ip"``, holding the tensor as its weight."""

    def __init__(self, state_dict):
        super().__init__()
        self.to_kvs = nn.ModuleDict()
        for key, value in state_dict.items():
            name = key.replace(".weight", "").replace(".", "_")
            self.to_kvs[name] = nn.Linear(value.shape[1], value.shape[0], bias=False)
            self.to_kvs[name].weight.data = value


class IPAdapter(nn.Module):
    """Mirrors ``IPAdapter`` (the part a patch uses): ``ip_layers`` built from ``ipadapter_model["ip_adapter"]``."""

    def __init__(self, ipadapter_model):
        super().__init__()
        self.ip_layers = To_KV(ipadapter_model["ip_adapter"])


def set_model_patch_replace(model, patch_kwargs, key):
    """Mirrors ``set_model_patch_replace`` (Forge, reForge, Classic): writes into ``model.model_options
    ["transformer_options"]`` in place, creating ``patches_replace`` / ``attn2`` if missing; a free key gets
    ``CrossAttentionPatch(**patch_kwargs)``, a taken one ``.set_new_condition(**patch_kwargs)`` on whatever is there."""
    to = model.model_options["transformer_options"]
    by_key = to.setdefault("patches_replace", {}).setdefault("attn2", {})
    if key not in by_key:
        by_key[key] = CrossAttentionPatch(**patch_kwargs)
    else:
        by_key[key].set_new_condition(**patch_kwargs)


def set_model_patch_replace_copying(model, patch_kwargs, key):
    """The Forge Neo fork's variant: a taken key gets a shallow copy of the patch there (its list attributes copied),
    ``set_new_condition`` is called on the copy and the copy is stored under that key, in place of the original."""
    to = model.model_options["transformer_options"]
    by_key = to.setdefault("patches_replace", {}).setdefault("attn2", {})
    if key not in by_key:
        by_key[key] = CrossAttentionPatch(**patch_kwargs)
        return
    patch = copy.copy(by_key[key])
    for name, value in vars(patch).items():
        if isinstance(value, list):
            setattr(patch, name, value.copy())
    patch.set_new_condition(**patch_kwargs)
    by_key[key] = patch


class CrossAttentionPatch:
    """Mirrors ``CrossAttentionPatch``: an attn2 replace patch holding one or more image conditions.

    ``__call__(q, k, v, extra_options)`` returns the host attention of (q, k, v) plus, for each condition whose sigma
    window holds ``extra_options["sigmas"][0]`` (``sigma_end <= sigma <= sigma_start``), the attention of q over the
    image tokens projected by the adapter's own ``to_k_ip``/``to_v_ip`` of this layer (``number``), the cond tokens on
    cond chunks and the uncond tokens on uncond chunks (``cond_or_uncond``), times ``weight``; no ``to_out``.
    """

    def __init__(
        self, weight, ipadapter, number, cond, uncond, weight_type, mask=None, sigma_start=0.0, sigma_end=1.0,
        unfold_batch=False,
    ):  # fmt: skip
        self.weights = [weight]
        self.ipadapters = [ipadapter]
        self.conds = [cond]
        self.unconds = [uncond]
        self.number = number
        self.weight_type = [weight_type]
        self.masks = [mask]
        self.sigma_start = [sigma_start]
        self.sigma_end = [sigma_end]
        self.unfold_batch = [unfold_batch]
        self.k_key = f"{number * 2 + 1}_to_k_ip"
        self.v_key = f"{number * 2 + 1}_to_v_ip"
        self.calls = None

    def set_new_condition(
        self, weight, ipadapter, number, cond, uncond, weight_type, mask=None, sigma_start=0.0, sigma_end=1.0,
        unfold_batch=False,
    ):  # fmt: skip
        """Mirrors ``set_new_condition``: one more condition on this layer (``number`` is not used: the layer's
        projections were chosen by the first one)."""
        del number
        self.weights.append(weight)
        self.ipadapters.append(ipadapter)
        self.conds.append(cond)
        self.unconds.append(uncond)
        self.masks.append(mask)
        self.weight_type.append(weight_type)
        self.sigma_start.append(sigma_start)
        self.sigma_end.append(sigma_end)
        self.unfold_batch.append(unfold_batch)

    def __call__(self, n, context_attn2, value_attn2, extra_options):
        if self.calls is not None:
            self.calls.append((self.number, sorted(extra_options)))
        org_dtype = n.dtype
        cond_or_uncond = extra_options["cond_or_uncond"]
        sigma = extra_options["sigmas"][0].item() if "sigmas" in extra_options else SIGMA_NEVER_REACHED
        q, k, v = n, context_attn2, value_attn2
        batch_prompt = q.shape[0] // len(cond_or_uncond)
        heads = extra_options["n_heads"]
        out = host_attention(q, k, v, heads)
        _, _, _lh, _lw = extra_options["original_shape"]  # read by the host for masks; must be there
        conditions = zip(
            self.weights, self.conds, self.unconds, self.ipadapters, self.masks, self.weight_type, self.sigma_start,
            self.sigma_end, self.unfold_batch, strict=True,
        )  # fmt: skip
        for weight, cond, uncond, ipadapter, mask, weight_type, sigma_start, sigma_end, unfold_batch in conditions:
            if sigma > sigma_start or sigma < sigma_end:
                continue
            if mask is not None or unfold_batch or weight_type.startswith("channel"):
                raise NotImplementedError("the IP-Adapter stand-in has no masks, unfold_batch or channel penalty")
            to_k, to_v = ipadapter.ip_layers.to_kvs[self.k_key], ipadapter.ip_layers.to_kvs[self.v_key]
            k_by_role = (to_k(cond).repeat(batch_prompt, 1, 1), to_k(uncond).repeat(batch_prompt, 1, 1))
            v_by_role = (to_v(cond).repeat(batch_prompt, 1, 1), to_v(uncond).repeat(batch_prompt, 1, 1))
            ip_k = torch.cat([k_by_role[role] for role in cond_or_uncond], dim=0)
            ip_v = torch.cat([v_by_role[role] for role in cond_or_uncond], dim=0)
            if weight_type.startswith("linear"):
                ip_k, ip_v = ip_k * weight, ip_v * weight
            out_ip = host_attention(q, ip_k.to(org_dtype), ip_v.to(org_dtype), heads)
            if weight_type.startswith("original"):
                out_ip = out_ip * weight
            out = out + out_ip
        return out.to(dtype=org_dtype)


def sd15_and_sdxl_keys(is_sdxl):
    """The keys ``apply_ipadapter`` registers, in its order: SD 1.x ``("input", 1|2|4|5|7|8)``, ``("output", 3..11)``,
    ``("middle", 0)``; SDXL ``("input", 4|5, 0..1)``, ``("input", 7|8, 0..9)``, ``("output", 0..2, 0..9)``,
    ``("output", 3..5, 0..1)``, ``("middle", 0, 0..9)``."""
    if not is_sdxl:
        return [("input", i) for i in (1, 2, 4, 5, 7, 8)] + [("output", i) for i in range(3, 12)] + [("middle", 0)]
    keys = [("input", i, j) for i in (4, 5, 7, 8) for j in range(2 if i in (4, 5) else 10)]
    keys += [("output", i, j) for i in range(6) for j in range(2 if i in (3, 4, 5) else 10)]
    return keys + [("middle", 0, j) for j in range(10)]


def percent_to_sigma(model, percent):
    """What ``apply_ipadapter`` asks the host's schedule (Forge/Neo ``model.model.predictor``, reForge/Classic
    ``model.model.model_sampling``); every host maps 0 to :data:`SIGMA_NEVER_REACHED` and 1 to 0."""
    if percent <= 0.0:
        return SIGMA_NEVER_REACHED
    if percent >= 1.0:
        return 0.0
    inner = model.model
    schedule = getattr(inner, "predictor", None) or getattr(inner, "model_sampling", None)
    if schedule is None:
        raise NotImplementedError("this host stand-in has no sigma schedule; use start_at=0 and end_at=1")
    return schedule.percent_to_sigma(percent)


class IPAdapterApply:
    """Mirrors ``IPAdapterApply`` (the registration part)."""

    def apply_ipadapter(
        self, ipadapter, model, weight, weight_type="original", embeds=None, attn_mask=None, start_at=0.0, end_at=1.0,
        unfold_batch=False, keys=None,
    ):  # fmt: skip
        """Mirrors ``apply_ipadapter``: SDXL is told by the width of ``"1.to_k_ip.weight"`` (2048); ``work_model =
        model.clone()``; one ``set_model_patch_replace`` per key with ``number`` counting up from 0; returns
        ``(work_model,)``. ``embeds`` stacks the cond and uncond image tokens (each (1, tokens, width))."""
        is_sdxl = ipadapter["ip_adapter"]["1.to_k_ip.weight"].shape[1] == 2048
        cond, uncond = torch.unbind(embeds)
        work_model = model.clone()
        patch_kwargs = {
            "number": 0,
            "weight": weight,
            "ipadapter": IPAdapter(ipadapter),
            "cond": cond,
            "uncond": uncond,
            "weight_type": weight_type,
            "mask": attn_mask,
            "sigma_start": percent_to_sigma(model, start_at),
            "sigma_end": percent_to_sigma(model, end_at),
            "unfold_batch": unfold_batch,
        }
        for key in sd15_and_sdxl_keys(is_sdxl) if keys is None else keys:
            set_model_patch_replace(work_model, patch_kwargs, key)
            patch_kwargs["number"] += 1
        return (work_model,)
