"""The VMix adapter file: one safetensors file, read without pickle, checked before anything runs.

The format is documented in docs/weights-format.md; keep the two in step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .adapter import Dimension, VMixAdapter
from .families import FAMILY_CONTEXT_DIM, family_for_context_dim, family_label
from .layers import layer_widths

FORMAT_NAME = "vmix-adapter"
FORMAT_VERSION = 1
VALUE_PREFIX = "value."
VALUE_SUFFIX = ".weight"

_FIXED_TENSORS = (
    "aes.positive",
    "aes.negative",
    "proj.token.weight",
    "proj.token.bias",
    "proj.norm.weight",
    "proj.norm.bias",
    "proj.zero.weight",
    "proj.zero.bias",
)
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_BYTES_PER_ELEMENT = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class AdapterFileError(ValueError):
    """A VMix adapter file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"VMix adapter '{Path(path).name}': {problem}")


@dataclass
class AdapterHeader:
    """What the file says about itself, read from the header alone (no tensor data is loaded)."""

    path: str
    family: str
    context_dim: int
    tokens: int
    dimensions: tuple[Dimension, ...]
    dtype: torch.dtype
    layers: dict[str, int]  # ldm layer path -> inner width
    training: dict[str, Any] = field(default_factory=dict)
    tool_version: str = ""

    def describe(self) -> str:
        names = ", ".join(d.name for d in self.dimensions)
        return f"{family_label(self.family)}, {len(self.dimensions)} dimensions ({names}), {len(self.layers)} layers"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": Path(self.path).stem,
            "file": Path(self.path).name,
            "family": self.family,
            "context_dim": self.context_dim,
            "tokens": self.tokens,
            "dtype": _DTYPE_NAMES[self.dtype],
            "layers": len(self.layers),
            "dimensions": [d.__dict__ for d in self.dimensions],
            "training": self.training,
            "tool_version": self.tool_version,
        }


def save_adapter(
    adapter: VMixAdapter,
    path: str | os.PathLike[str],
    training: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``adapter`` atomically: a kill while saving leaves the old file (or none), never a broken one."""
    dtype = dtype or adapter.zero_proj.weight.dtype
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"adapters are stored as float32, float16 or bfloat16, not {dtype}")
    tensors = {
        "aes.positive": adapter.aes_positive,
        "aes.negative": adapter.aes_negative,
        "proj.token.weight": adapter.token_proj.weight,
        "proj.token.bias": adapter.token_proj.bias,
        "proj.norm.weight": adapter.norm.weight,
        "proj.norm.bias": adapter.norm.bias,
        "proj.zero.weight": adapter.zero_proj.weight,
        "proj.zero.bias": adapter.zero_proj.bias,
    }
    for layer_path, proj in zip(adapter.layer_paths, adapter.value_projs, strict=True):
        tensors[VALUE_PREFIX + layer_path + VALUE_SUFFIX] = proj.weight
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "family": adapter.family,
        "context_dim": str(adapter.context_dim),
        "tokens": str(adapter.tokens),
        "dimensions": json.dumps([d.__dict__ for d in adapter.dimensions]),
        "training": json.dumps(dict(training or {})),
        "tool_version": f"vmix_ext {__version__}",
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def read_header(path: str | os.PathLike[str]) -> AdapterHeader:
    """Check everything that can be checked without the tensor data, and describe the adapter."""
    path = Path(path)
    raw = _raw_header(path)
    meta = raw.pop("__metadata__", None) or {}
    if meta.get("format") != FORMAT_NAME:
        raise AdapterFileError(
            path,
            f"is a safetensors file but not a VMix adapter (no format '{FORMAT_NAME}' in its metadata); "
            "LoRA and checkpoint files go in their own folders",
        )
    version = meta.get("format_version", "")
    if version != str(FORMAT_VERSION):
        raise AdapterFileError(
            path, f"has format version {version!r}; this VMix reads version {FORMAT_VERSION}: update the extension"
        )
    family = meta.get("family", "")
    if family not in FAMILY_CONTEXT_DIM:
        raise AdapterFileError(
            path, f"names an unknown model family {family!r} (known: {', '.join(FAMILY_CONTEXT_DIM)})"
        )
    context_dim = _int_field(path, meta, "context_dim")
    tokens = _int_field(path, meta, "tokens")
    dimensions = _dimensions_field(path, meta)
    training = _json_field(path, meta, "training", {})

    dtypes = {info.get("dtype") for info in raw.values()}
    bad = sorted(str(d) for d in dtypes if d not in _DTYPES)
    if bad:
        raise AdapterFileError(
            path, f"stores tensors as {', '.join(bad)}; VMix adapters use float32, float16 or bfloat16"
        )
    if len(dtypes) > 1:
        raise AdapterFileError(path, f"mixes tensor dtypes ({', '.join(sorted(dtypes))}); all tensors must share one")

    missing = [name for name in _FIXED_TENSORS if name not in raw]
    if missing:
        raise AdapterFileError(path, f"lacks the tensor(s) {', '.join(missing)}")
    layers: dict[str, int] = {}
    unexpected = []
    for name, info in raw.items():
        if name in _FIXED_TENSORS:
            continue
        if name.startswith(VALUE_PREFIX) and name.endswith(VALUE_SUFFIX):
            shape = info["shape"]
            layer = name[len(VALUE_PREFIX) : -len(VALUE_SUFFIX)]
            _expect_shape(path, name, shape, [shape[0] if len(shape) == 2 else -1, context_dim])
            layers[layer] = shape[0]
        else:
            unexpected.append(name)
    if unexpected:
        raise AdapterFileError(path, f"has unexpected tensors {_listing(unexpected)}")
    if not layers:
        raise AdapterFileError(path, "has no value projections ('value.<layer>.weight' tensors)")
    n = len(dimensions)
    for name, shape in {
        "aes.positive": [n, context_dim],
        "aes.negative": [n, context_dim],
        "proj.token.weight": [tokens, n],
        "proj.token.bias": [tokens],
        "proj.norm.weight": [context_dim],
        "proj.norm.bias": [context_dim],
        "proj.zero.weight": [context_dim, context_dim],
        "proj.zero.bias": [context_dim],
    }.items():
        _expect_shape(path, name, raw[name]["shape"], shape)
    return AdapterHeader(
        path=str(path),
        family=family,
        context_dim=context_dim,
        tokens=tokens,
        dimensions=dimensions,
        dtype=_DTYPES[dtypes.pop()],
        layers=dict(sorted(layers.items())),
        training=training,
        tool_version=str(meta.get("tool_version", "")),
    )


def load_adapter(path: str | os.PathLike[str]) -> VMixAdapter:
    """Read and fully check an adapter file; the adapter stays on the CPU in the file's dtype."""
    header = read_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # the header was fine, so this is damaged data
        raise AdapterFileError(path, f"could not be read: {exc}") from exc
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise AdapterFileError(path, f"tensor '{name}' contains NaN or infinite values (a diverged training run?)")
    adapter = VMixAdapter(header.dimensions, header.context_dim, header.layers, header.family, header.tokens)
    adapter.to(header.dtype)
    with torch.no_grad():
        adapter.aes_positive.copy_(tensors["aes.positive"])
        adapter.aes_negative.copy_(tensors["aes.negative"])
        for module, prefix in ((adapter.token_proj, "proj.token"), (adapter.norm, "proj.norm")):
            module.weight.copy_(tensors[prefix + ".weight"])
            module.bias.copy_(tensors[prefix + ".bias"])
        adapter.zero_proj.weight.copy_(tensors["proj.zero.weight"])
        adapter.zero_proj.bias.copy_(tensors["proj.zero.bias"])
        for layer, proj in zip(adapter.layer_paths, adapter.value_projs, strict=True):
            proj.weight.copy_(tensors[VALUE_PREFIX + layer + VALUE_SUFFIX])
    adapter.requires_grad_(False)
    return adapter


def check_adapter_fits(adapter: VMixAdapter | AdapterHeader, unet: nn.Module, path: str | os.PathLike[str]) -> None:
    """Refuse an adapter that does not fit the loaded UNet, naming the file and the mismatch."""
    widths = layer_widths(unet)
    if not widths:
        raise AdapterFileError(
            path,
            "cannot be used: the loaded model has no cross-attention layers "
            "(SD3, Flux and Chroma have none; VMix needs an SD 1.x, SD 2.x or SDXL model)",
        )
    unet_context = {w[0] for w in widths.values()}
    unet_family = family_for_context_dim(next(iter(unet_context))) if len(unet_context) == 1 else None
    if unet_family != adapter.family or adapter.context_dim not in unet_context:
        raise AdapterFileError(
            path,
            f"was made for {family_label(adapter.family)} (context width {adapter.context_dim}) but the loaded model "
            f"is {family_label(unet_family)} (context width {', '.join(map(str, sorted(unet_context)))}); "
            "choose an adapter trained for this model family",
        )
    adapter_layers = _adapter_layers(adapter)
    extra = [p for p in adapter_layers if p not in widths]
    if extra:
        raise AdapterFileError(path, f"has layers the loaded model lacks: {_listing(extra)}")
    missing = [p for p in widths if p not in adapter_layers]
    if missing:
        raise AdapterFileError(path, f"lacks layers the loaded model has: {_listing(missing)}")
    wrong = [f"{p} ({adapter_layers[p]} vs {widths[p][1]})" for p in widths if adapter_layers[p] != widths[p][1]]
    if wrong:
        raise AdapterFileError(
            path, f"has value widths that do not match the model (adapter vs model): {_listing(wrong)}"
        )


def file_hash(path: str | os.PathLike[str]) -> str:
    """sha256 of the whole file, as A1111 hashes model files; cached by size and modification time."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def short_hash(path: str | os.PathLike[str]) -> str:
    return file_hash(path)[:10]


# -- helpers ---------------------------------------------------------------------------------------------------


def _adapter_layers(adapter: VMixAdapter | AdapterHeader) -> dict[str, int]:
    if isinstance(adapter, AdapterHeader):
        return adapter.layers
    return {path: proj.out_features for path, proj in zip(adapter.layer_paths, adapter.value_projs, strict=True)}


def _raw_header(path: Path) -> dict[str, Any]:
    """Parse the safetensors header with the standard library, to tell 'not safetensors' from 'truncated'."""
    if not path.is_file():
        raise AdapterFileError(path, f"not found at {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise AdapterFileError(path, f"is not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise AdapterFileError(path, "is not a safetensors file (its first bytes are not a safetensors header)")
        try:
            raw = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise AdapterFileError(path, "is not a safetensors file (its header is not valid JSON)") from None
    if not isinstance(raw, dict):
        raise AdapterFileError(path, "is not a safetensors file (its header is not a JSON object)")
    data_len = size - 8 - header_len
    needed = 0
    for name, info in raw.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            shape = [int(s) for s in info["shape"]]
            width = _BYTES_PER_ELEMENT.get(info["dtype"], 1)
        except (KeyError, TypeError, ValueError):
            raise AdapterFileError(path, f"is not a valid safetensors file (bad header entry for '{name}')") from None
        if end - begin != math.prod(shape) * width:
            raise AdapterFileError(path, f"is damaged: tensor '{name}' has {end - begin} bytes for shape {shape}")
        needed = max(needed, end)
    if needed > data_len:
        raise AdapterFileError(
            path, f"is truncated: its header describes {needed} bytes of tensor data but only {data_len} are present"
        )
    return raw


def _int_field(path: Path, meta: Mapping[str, str], key: str) -> int:
    try:
        return int(meta[key])
    except (KeyError, ValueError):
        raise AdapterFileError(path, f"has no valid '{key}' in its metadata") from None


def _json_field(path: Path, meta: Mapping[str, str], key: str, default: Any) -> Any:
    if key not in meta:
        return default
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise AdapterFileError(path, f"has metadata '{key}' that is not valid JSON") from None


def _dimensions_field(path: Path, meta: Mapping[str, str]) -> tuple[Dimension, ...]:
    items = _json_field(path, meta, "dimensions", None)
    try:
        dims = tuple(Dimension(str(d["name"]), str(d["positive"]), str(d["negative"])) for d in items)
    except (TypeError, KeyError):
        raise AdapterFileError(
            path, "has no valid 'dimensions' metadata (a JSON list of {name, positive, negative})"
        ) from None
    names = [d.name for d in dims]
    if not dims or len(set(names)) != len(names):
        raise AdapterFileError(path, f"needs at least one dimension and unique names, has {names}")
    return dims


def _expect_shape(path: Path, name: str, shape: list[int], expected: list[int]) -> None:
    if list(shape) != expected:
        raise AdapterFileError(path, f"tensor '{name}' has shape {list(shape)}, expected {expected}")


def _listing(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more ({len(items)} in all)"
