"""The VMix adapter file: one safetensors file, read without pickle, checked before anything runs.

The format is documented in docs/weights-format.md; keep the two in step. The public reader API is ``read_header``,
``load_adapter``, ``check_adapter_fits``, ``check_values_finite``, ``unet_family`` and ``family_problem``; the
writer is ``save_adapter``. Every reader entry point raises ``AdapterFileError`` and nothing else, whatever the file
holds: the safetensors container is parsed here with the standard library under fixed limits (rather than by the
safetensors package), so a forged header costs bounded time and memory and each way a file can be wrong gets a
message a user can act on.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import mmap
import os
import re
import stat
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .adapter import (
    Dimension,
    VMixAdapter,
    dimension_name_problem,
    shorten,
    text_problem,
)
from .families import FAMILY_CONTEXT_DIM, family_for_context_dim, family_label
from .layers import layer_widths
from .permissions import give_normal_permissions

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
_BYTES_PER_ELEMENT = {"F32": 4, "F16": 2, "BF16": 2}

# Limits on what a file may declare. A real SDXL adapter's header (78 tensors, a few dimensions) is about 12 KB;
# 1 MiB holds the largest adapter the other limits allow (128 dimensions of 500-character texts is ~0.5 MB even as
# 4-byte UTF-8) and keeps the parse of a forged header to a few tens of milliseconds and megabytes.
MAX_HEADER_BYTES = 1 << 20
MAX_LAYERS = 256  # SDXL, the largest family, has 70 cross-attention layers
MAX_DIMENSIONS = 128
MAX_TOKENS = 1024  # C; the hosts tile V_a to the context's length, so any C >= 1 works (77 is the usual)
MAX_INNER_WIDTH = 1 << 16  # SDXL's widest cross-attention layer is 1280
_MAX_TENSORS = len(_FIXED_TENSORS) + MAX_LAYERS
_MAX_RANK = 8
_MAX_EXTENT = 1 << 40  # any one dimension of a shape
_MAX_NAME_CHARS = 300  # a tensor name; 'value.' + the longest ldm path + '.weight' is under 70
_MAX_VERSION_CHARS = 200
_MAX_NUMBER_CHARS = 40  # digits of one JSON number (Python's int parsing is quadratic in the digits)
_MAX_PROBLEM_CHARS = 600
# ldm module paths such as ``input_blocks.1.1.transformer_blocks.0.attn2``.
_LAYER_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_DECIMAL = re.compile(r"[0-9]{1,9}")
# A JSON escape of a UTF-16 surrogate; UTF-8 text itself cannot hold one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class AdapterFileError(ValueError):
    """A VMix adapter file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        if len(problem) > _MAX_PROBLEM_CHARS:
            problem = problem[: _MAX_PROBLEM_CHARS - 1] + "…"
        self.problem = problem
        super().__init__(f"VMix adapter '{display_name(Path(path).name)}': {problem}")


def display_name(name: str, limit: int = 200) -> str:
    """A file name made safe to print on one line: control characters, and bytes that are not UTF-8 (which Python
    keeps as lone surrogates), become backslash escapes."""
    safe = "".join(ch if text_problem(ch) is None else repr(ch)[1:-1] for ch in name)
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


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

    def family_problem(self, model_family: str | None) -> str | None:
        return family_problem(self.family, model_family)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": Path(self.path).name.removesuffix(".safetensors"),
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


def family_problem(adapter_family: str, model_family: str | None) -> str | None:
    """``"made for SDXL, but the loaded model is SD 1.x"`` when the families differ; None when they match or the
    model's family is not known (cheap: for listings and status lines, from the header alone)."""
    if model_family is None or model_family == adapter_family:
        return None
    return f"made for {family_label(adapter_family)}, but the loaded model is {family_label(model_family)}"


# -- writing ----------------------------------------------------------------------------------------------------


def save_adapter(
    adapter: VMixAdapter,
    path: str | os.PathLike[str],
    training: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``adapter`` atomically: a kill while saving leaves the old file (or none), never a broken one.

    The file must pass the reader's own checks, or nothing is written: non-finite weights (also those that overflow
    the chosen dtype), bad dimension names or texts, a token length or context width out of range all raise
    ``AdapterFileError`` naming the file.
    """
    path = Path(path)
    dtype = dtype or adapter.zero_proj.weight.dtype
    if dtype not in _DTYPE_NAMES:
        raise AdapterFileError(path, f"adapters are stored as float32, float16 or bfloat16, not {dtype}")
    originals = {
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
        originals[VALUE_PREFIX + layer_path + VALUE_SUFFIX] = proj.weight
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in originals.items()}
    try:
        training_text = json.dumps(dict(training or {}), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AdapterFileError(path, f"training facts must be plain JSON values (no NaN): {exc}") from None
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "family": str(adapter.family),
        "context_dim": str(adapter.context_dim),
        "tokens": str(adapter.tokens),
        "dimensions": json.dumps([_dimension_json(d) for d in adapter.dimensions], ensure_ascii=False),
        "training": training_text,
        "tool_version": f"vmix_ext {__version__}",
    }
    # The reader's rules, applied before anything touches the disk.
    infos = {name: (_DTYPE_NAMES[dtype], tuple(t.shape)) for name, t in tensors.items()}
    _parse_vmix(path, metadata, infos)
    for name, tensor in tensors.items():
        if not _all_finite(tensor):
            cause = (
                "contains NaN or infinite values"
                if not _all_finite(originals[name].detach())
                else f"overflows {_dtype_word(dtype)} (values beyond ±{torch.finfo(dtype).max:g}); save it as float32"
            )
            raise AdapterFileError(path, f"tensor '{name}' {cause}; nothing was written")
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        try:
            read_header(tmp)  # what only the written bytes can show, such as a header over the size limit
        except AdapterFileError as exc:
            raise AdapterFileError(path, f"{exc.problem}; nothing was written") from None
        give_normal_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _dimension_json(dimension: Dimension) -> dict[str, str]:
    return {"name": dimension.name, "positive": dimension.positive, "negative": dimension.negative}


# -- reading ----------------------------------------------------------------------------------------------------


def read_header(path: str | os.PathLike[str]) -> AdapterHeader:
    """Check everything that can be checked without the tensor data, and describe the adapter.

    Reads at most the first ``MAX_HEADER_BYTES`` + 8 bytes; raises only ``AdapterFileError``.
    """
    path = Path(path)
    with _open_adapter(path) as (f, size):
        return _read_header(path, f, size)[0]


def load_adapter(path: str | os.PathLike[str]) -> VMixAdapter:
    """Read and fully check an adapter file; the adapter stays on the CPU in the file's dtype.

    The header is checked before any tensor data is read; the data is read once into one buffer that the module's
    tensors view (memory stays near the file's size), every tensor is checked for NaN and infinity, and the module is
    built on the meta device and handed the loaded tensors, so nothing is initialised only to be overwritten.
    Raises only ``AdapterFileError``.
    """
    return _load_adapter_with_header(path)[1]


def _load_adapter_with_header(path: str | os.PathLike[str]) -> tuple[AdapterHeader, VMixAdapter]:
    """``load_adapter``, also returning the header it checked (for a caller that shows both)."""
    path = Path(path)
    with _open_adapter(path) as (f, size):
        header, infos, data_start = _read_header(path, f, size)
        data = _read_data(path, f, data_start, size - data_start)
    tensors = {name: _tensor_view(data, info) for name, info in infos.items()}
    # The tensors share one dtype and tile the data section exactly, so one pass over all of it checks them all
    # (several times faster than one reduction per tensor); the slow search runs only to name a bad tensor.
    if not _all_finite(data.view(header.dtype)):
        bad = next(name for name, tensor in tensors.items() if not _all_finite(tensor))
        raise AdapterFileError(path, f"tensor '{bad}' contains NaN or infinite values (a diverged training run?)")
    return header, _build_adapter(header, tensors)


def check_adapter_fits(adapter: VMixAdapter | AdapterHeader, unet: nn.Module, path: str | os.PathLike[str]) -> None:
    """Refuse an adapter that does not fit the loaded UNet, naming the file and the mismatch.

    Takes a loaded adapter or just its header (so a file that cannot fit is refused before its tensors are read):
    family and context width, then the layer set, then each layer's value width.
    """
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


def unet_family(unet: nn.Module) -> str | None:
    """The family of a loaded UNet, told by its cross-attention context width; None when it has none or it is odd."""
    contexts = {w[0] for w in layer_widths(unet).values()}
    return family_for_context_dim(contexts.pop()) if len(contexts) == 1 else None


def check_values_finite(
    values: Mapping[str, torch.Tensor], scale: float, dtype: torch.dtype, path: str | os.PathLike[str]
) -> None:
    """Refuse V_a whose λ·V_a is not finite once cast to the generation's dtype, naming the file and the layer.

    Finite float32 weights can give V_a beyond float16's ±65504, which the hooks' cast would turn into infinity and
    the image into NaN. The check casts exactly as the hooks do (λ·V_a in float32, then to ``dtype``); call it once
    per generation when the UNet's dtype is known, before the first step.
    """
    for layer, value in values.items():
        value = value.detach().float()
        if not _all_finite(value):
            raise AdapterFileError(
                path, f"gives V_a values that are NaN or infinite in layer {layer}: its weights overflow float32"
            )
        scaled = scale * value
        if not _all_finite(scaled.to(dtype).float()):
            largest = scaled.abs().max().item()
            raise AdapterFileError(
                path,
                f"gives λ·V_a values up to {largest:.3g} in layer {layer}, beyond what {_dtype_word(dtype)} holds "
                f"(±{torch.finfo(dtype).max:g}); lower λ (now {scale:g}) or run the model in bfloat16 or float32",
            )


def file_hash(path: str | os.PathLike[str]) -> str:
    """sha256 of the whole file, as A1111 hashes model files; cached by size and modification time."""
    stat_result = os.stat(path)
    key = (os.path.abspath(path), stat_result.st_size, stat_result.st_mtime_ns)
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


# -- the container ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data section, as safetensors stores them
    end: int


@contextmanager
def _open_adapter(path: Path) -> Iterator[tuple[BinaryIO, int]]:
    """The file and its size, opened as a regular file without blocking (a pipe named *.safetensors must not hang
    the reader) and with every way of not being a readable file turned into an AdapterFileError."""
    if os.path.isdir(path):
        raise AdapterFileError(path, "is a folder, not an adapter file")
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if os.path.islink(path):
            raise AdapterFileError(path, "is a link to a file that does not exist") from None
        raise AdapterFileError(path, f"not found at {display_name(str(path), 300)}") from None
    except PermissionError:
        raise AdapterFileError(path, "cannot be read: permission denied") from None
    except (OSError, ValueError) as exc:
        raise AdapterFileError(path, f"cannot be opened: {_os_reason(exc)}") from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise AdapterFileError(path, f"cannot be read: {_os_reason(exc)}") from None
        if stat.S_ISDIR(info.st_mode):
            raise AdapterFileError(path, "is a folder, not an adapter file")
        if not stat.S_ISREG(info.st_mode):
            raise AdapterFileError(path, "is not a regular file (a device, pipe or socket)")
        yield f, info.st_size


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return shorten(str(exc), 200)


def _read_exactly(path: Path, f: BinaryIO, count: int) -> bytes:
    try:
        data = f.read(count)
    except OSError as exc:
        raise AdapterFileError(path, f"could not be read: {_os_reason(exc)}") from None
    if len(data) != count:
        raise AdapterFileError(path, "changed while it was being read (it is shorter now); try again")
    return data


def _read_header(path: Path, f: BinaryIO, size: int) -> tuple[AdapterHeader, dict[str, _TensorInfo], int]:
    """The checked header, the tensors' byte ranges and where the data section starts."""
    if size == 0:
        raise AdapterFileError(path, "is empty (0 bytes): not a safetensors file")
    if size < 8:
        raise AdapterFileError(path, f"is not a safetensors file (only {_bytes(size)})")
    (header_len,) = struct.unpack("<Q", _read_exactly(path, f, 8))
    if header_len > size - 8:
        raise AdapterFileError(
            path,
            f"is not a safetensors file, or is truncated (its first bytes announce a {header_len}-byte header, "
            f"but the file has {size} bytes)",
        )
    if header_len > MAX_HEADER_BYTES:
        raise AdapterFileError(
            path,
            f"has a {header_len}-byte header; VMix adapter headers are at most {MAX_HEADER_BYTES} bytes "
            "(a damaged file, or not a VMix adapter)",
        )
    try:
        text = _read_exactly(path, f, header_len).decode("utf-8")
    except UnicodeDecodeError:
        raise AdapterFileError(path, "is not a safetensors file (its header is not UTF-8 text)") from None
    if not text.startswith("{"):
        raise AdapterFileError(path, "is not a safetensors file (its header is not a JSON object)")
    raw = _parse_json(path, text, "its header")
    if not isinstance(raw, dict):
        raise AdapterFileError(path, "is not a safetensors file (its header is not a JSON object)")
    meta = raw.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise AdapterFileError(path, "is not a valid safetensors file ('__metadata__' must map names to text)")
    if meta.get("format") != FORMAT_NAME:
        raise AdapterFileError(
            path,
            f"is a safetensors file but not a VMix adapter (no format '{FORMAT_NAME}' in its metadata); "
            "LoRA and checkpoint files go in their own folders",
        )
    version = meta.get("format_version", "")
    if version != str(FORMAT_VERSION):
        newer = _DECIMAL.fullmatch(version) is not None and int(version) > FORMAT_VERSION
        advice = ": update the extension" if newer else ""
        raise AdapterFileError(
            path, f"has format version {shorten(version, 40)}; this VMix reads version {FORMAT_VERSION}{advice}"
        )
    infos = _tensor_infos(path, raw, size - 8 - header_len)
    header = _parse_vmix(path, meta, {name: (info.dtype, info.shape) for name, info in infos.items()})
    return header, infos, 8 + header_len


def _tensor_infos(path: Path, raw: dict[str, Any], data_len: int) -> dict[str, _TensorInfo]:
    """Each entry's dtype, shape and byte range, checked the way safetensors requires: ranges in order, touching,
    not overlapping, each as long as its shape and dtype need, together covering the data section exactly."""
    if len(raw) > _MAX_TENSORS:
        raise AdapterFileError(path, f"declares {len(raw)} tensors; a VMix adapter has at most {_MAX_TENSORS}")
    for name, entry in raw.items():
        if len(name) > _MAX_NAME_CHARS or text_problem(name):
            raise AdapterFileError(path, f"has a tensor with an unusable name {shorten(name, 80)}")
        if not isinstance(entry, dict):
            raise AdapterFileError(
                path, f"is not a valid safetensors file (the entry for {shorten(name, 80)} is not an object)"
            )
        if not isinstance(entry.get("dtype"), str):
            raise AdapterFileError(path, f"is not a valid safetensors file (bad dtype for tensor {shorten(name, 80)})")
    dtypes = {entry.get("dtype") for entry in raw.values()}
    bad = sorted(_shown_dtype(d) for d in dtypes if d not in _DTYPES)
    if bad:
        raise AdapterFileError(
            path, f"stores tensors as {', '.join(bad)}; VMix adapters use float32, float16 or bfloat16"
        )
    if len(dtypes) > 1:
        raise AdapterFileError(path, f"mixes tensor dtypes ({', '.join(sorted(dtypes))}); all tensors must share one")
    infos: dict[str, _TensorInfo] = {}
    for name, entry in raw.items():
        shown = shorten(name, 80)
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not _is_int_list(shape) or len(shape) > _MAX_RANK or not all(0 <= s <= _MAX_EXTENT for s in shape):
            raise AdapterFileError(path, f"is not a valid safetensors file (bad shape for tensor {shown})")
        if not _is_int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1]:
            raise AdapterFileError(path, f"is not a valid safetensors file (bad data_offsets for tensor {shown})")
        begin, end = offsets
        if end > data_len:
            raise AdapterFileError(
                path,
                f"is truncated: its header describes {end} bytes of tensor data but only {data_len} are present",
            )
        needed = math.prod(shape) * _BYTES_PER_ELEMENT[entry["dtype"]]
        if end - begin != needed:
            raise AdapterFileError(
                path, f"is damaged: tensor {shown} has {end - begin} bytes for shape {list(shape)} ({needed} needed)"
            )
        infos[name] = _TensorInfo(entry["dtype"], tuple(shape), begin, end)
    covered = 0
    for name, info in sorted(infos.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin != covered:
            where = "overlaps the tensor before it" if info.begin < covered else "leaves a gap before it"
            raise AdapterFileError(path, f"is damaged: the data of tensor {shorten(name, 80)} {where}")
        covered = info.end
    if covered != data_len:
        raise AdapterFileError(
            path, f"is damaged: {_bytes(data_len - covered)} after the last tensor's data belong to no tensor"
        )
    return infos


def _is_int_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


class _JSONLimit(ValueError):
    pass


def _parse_number(text: str) -> int:
    if len(text) > _MAX_NUMBER_CHARS:
        raise _JSONLimit(f"a number with {len(text)} digits")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > _MAX_NUMBER_CHARS:
        raise _JSONLimit(f"a number with {len(text)} characters")
    number = float(text)
    if not math.isfinite(number):
        raise _JSONLimit(f"the number {text[:20]}, too large for a float")
    return number


def _refuse_constant(text: str) -> None:
    raise _JSONLimit(f"{text}, which JSON does not allow")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _JSONLimit(f"the key {shorten(key, 60)} twice")
        result[key] = value
    return result


def _shown_dtype(dtype: object) -> str:
    if isinstance(dtype, str) and len(dtype) <= 20 and not text_problem(dtype):
        return dtype
    return shorten(dtype, 20)


def _parse_json(path: Path, text: str, what: str) -> Any:
    """JSON with bounded cost: no NaN or Infinity, no number longer than 40 characters, no duplicate keys, nesting
    no deeper than Python's recursion limit, and no lone surrogates (text that cannot be written back as UTF-8)."""
    # Parsed JSON holds no reference cycles, and hundreds of thousands of tiny lists would otherwise set off
    # collection after collection of everything alive (5x the time for a forged header).
    collecting = gc.isenabled()
    gc.disable()
    try:
        value = json.loads(
            text,
            parse_int=_parse_number,
            parse_float=_parse_float,
            parse_constant=_refuse_constant,
            object_pairs_hook=_unique_keys,
        )
        if _SURROGATE_ESCAPE.search(text):  # the only way a lone surrogate gets in: valid pairs pass this check
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except _JSONLimit as exc:
        raise AdapterFileError(path, f"is not a valid adapter file ({what} holds {exc})") from None
    except RecursionError:
        raise AdapterFileError(path, f"is not a valid adapter file ({what} is nested too deeply)") from None
    except UnicodeEncodeError:
        raise AdapterFileError(
            path, f"is not a valid adapter file ({what} holds text that is not valid Unicode)"
        ) from None
    except ValueError as exc:  # json.JSONDecodeError and int()'s digit limit
        detail = f" at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        kind = "a safetensors file" if what == "its header" else "a valid adapter file"
        raise AdapterFileError(path, f"is not {kind} ({what} is not valid JSON{detail})") from None
    finally:
        if collecting:
            gc.enable()
    return value


# -- the VMix format --------------------------------------------------------------------------------------------


def _parse_vmix(path: Path, meta: Mapping[str, str], infos: Mapping[str, tuple[str, tuple[int, ...]]]) -> AdapterHeader:
    """The VMix rules on metadata and tensor shapes; shared by the reader and the writer, so neither can disagree."""
    family = meta.get("family", "")
    if family not in FAMILY_CONTEXT_DIM:
        raise AdapterFileError(
            path, f"names an unknown model family {shorten(family, 40)} (known: {', '.join(FAMILY_CONTEXT_DIM)})"
        )
    context_dim = _count_field(path, meta, "context_dim", 1, MAX_INNER_WIDTH)
    # A width that belongs to a family must be this file's family's. A width no family has is left to
    # check_adapter_fits: only the tiny models built in code have one (the trainer's toy proof of mechanism is
    # "sd1" at width 32), and no host's UNet can take such an adapter.
    if family_for_context_dim(context_dim) not in (family, None):
        raise AdapterFileError(
            path,
            f"is for {family_label(family)} but has context width {context_dim}; "
            f"{family_label(family)} models have {FAMILY_CONTEXT_DIM[family]}",
        )
    tokens = _count_field(path, meta, "tokens", 1, MAX_TOKENS)
    dimensions = _dimensions_field(path, meta)
    training = _json_field(path, meta, "training", {})
    if not isinstance(training, dict):
        raise AdapterFileError(path, "has metadata 'training' that is not a JSON object")
    tool_version = meta.get("tool_version", "")
    if len(tool_version) > _MAX_VERSION_CHARS or text_problem(tool_version):
        raise AdapterFileError(path, f"has an unusable 'tool_version' {shorten(tool_version, 60)}")

    dtypes = {dtype for dtype, _ in infos.values()}
    missing = [name for name in _FIXED_TENSORS if name not in infos]
    if missing:
        raise AdapterFileError(path, f"lacks the tensor(s) {', '.join(missing)}")
    layers: dict[str, int] = {}
    unexpected = []
    for name, (_, shape) in infos.items():
        if name in _FIXED_TENSORS:
            continue
        layer = name[len(VALUE_PREFIX) : -len(VALUE_SUFFIX)]
        if not (name.startswith(VALUE_PREFIX) and name.endswith(VALUE_SUFFIX) and _LAYER_PATH.fullmatch(layer)):
            unexpected.append(shorten(name, 60)[1:-1])
            continue
        inner = shape[0] if len(shape) == 2 and 1 <= shape[0] <= MAX_INNER_WIDTH else -1
        _expect_shape(path, name, shape, [inner, context_dim])
        layers[layer] = inner
    if unexpected:
        raise AdapterFileError(path, f"has unexpected tensors {_listing(unexpected)}")
    if not layers:
        raise AdapterFileError(path, "has no value projections ('value.<layer>.weight' tensors)")
    if len(layers) > MAX_LAYERS:
        raise AdapterFileError(path, f"has {len(layers)} value projections; at most {MAX_LAYERS} are allowed")
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
        _expect_shape(path, name, infos[name][1], shape)
    return AdapterHeader(
        path=str(path),
        family=family,
        context_dim=context_dim,
        tokens=tokens,
        dimensions=dimensions,
        dtype=_DTYPES[dtypes.pop()],
        layers=dict(sorted(layers.items())),
        training=training,
        tool_version=tool_version,
    )


def _count_field(path: Path, meta: Mapping[str, str], key: str, low: int, high: int) -> int:
    """A whole number written as ASCII digits (no sign, spaces, underscores or other scripts' digits)."""
    value = meta.get(key)
    if value is not None and _DECIMAL.fullmatch(value) and low <= int(value) <= high:
        return int(value)
    given = "it is missing" if value is None else f"it is {shorten(value, 40)}"
    raise AdapterFileError(
        path, f"has no valid '{key}' in its metadata ({given}; expected a whole number from {low} to {high})"
    )


def _json_field(path: Path, meta: Mapping[str, str], key: str, default: Any) -> Any:
    if key not in meta:
        return default
    return _parse_json(path, meta[key], f"its metadata '{key}'")


def _dimensions_field(path: Path, meta: Mapping[str, str]) -> tuple[Dimension, ...]:
    items = _json_field(path, meta, "dimensions", None)
    expected = "a JSON list of {name, positive, negative} objects"
    if not isinstance(items, list) or not items:
        raise AdapterFileError(path, f"has no valid 'dimensions' metadata ({expected})")
    if len(items) > MAX_DIMENSIONS:
        raise AdapterFileError(path, f"has {len(items)} dimensions; at most {MAX_DIMENSIONS} are allowed")
    dims = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("name", "positive", "negative")
        ):
            raise AdapterFileError(
                path, f"has no valid 'dimensions' metadata (item {number} is not {{name, positive, negative}} text)"
            )
        problem = dimension_name_problem(item["name"])
        if problem:
            raise AdapterFileError(
                path, f"has a dimension named {shorten(item['name'])} that cannot be used: it {problem}"
            )
        try:
            dims.append(Dimension(item["name"], item["positive"], item["negative"]))
        except ValueError as exc:
            raise AdapterFileError(path, f"has an unusable dimension: {exc}") from None
    names = [d.name for d in dims]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise AdapterFileError(path, f"needs unique dimension names, repeats {_listing(repeated)}")
    return tuple(dims)


def _expect_shape(path: Path, name: str, shape: tuple[int, ...] | list[int], expected: list[int]) -> None:
    if list(shape) != expected:
        raise AdapterFileError(path, f"tensor '{name}' has shape {list(shape)}, expected {expected}")


def _listing(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more ({len(items)} in all)"


def _adapter_layers(adapter: VMixAdapter | AdapterHeader) -> dict[str, int]:
    if isinstance(adapter, AdapterHeader):
        return adapter.layers
    return {path: proj.out_features for path, proj in zip(adapter.layer_paths, adapter.value_projs, strict=True)}


# -- the tensors ------------------------------------------------------------------------------------------------


def _read_data(path: Path, f: BinaryIO, start: int, length: int) -> torch.Tensor:
    """The whole data section in one anonymous buffer, read with one copy from the page cache. The tensors view
    it; a private copy (not a file mapping) so that a file replaced or cut while loaded cannot crash the host."""
    if length == 0:
        return torch.empty(0, dtype=torch.uint8)
    if hasattr(mmap, "MAP_POPULATE"):  # Linux: every page mapped in one call, not one fault per page (~15 % faster)
        buffer = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    else:
        buffer = mmap.mmap(-1, length)
    view = memoryview(buffer)
    try:
        f.seek(start)
        done = 0
        while done < length:
            got = f.readinto(view[done:])
            if not got:
                raise AdapterFileError(path, "changed while it was being read (it is shorter now); try again")
            done += got
    except OSError as exc:
        raise AdapterFileError(path, f"could not be read: {_os_reason(exc)}") from None
    finally:
        view.release()
    return torch.frombuffer(buffer, dtype=torch.uint8)


def _tensor_view(data: torch.Tensor, info: _TensorInfo) -> torch.Tensor:
    # Aligned: the ranges tile the data from byte 0 and all tensors share one dtype, so each begins at a multiple of
    # the item size (and the buffer itself is page-aligned).
    return data[info.begin : info.end].view(_DTYPES[info.dtype]).reshape(info.shape)


def _all_finite(tensor: torch.Tensor) -> bool:
    # One pass with no temporary the tensor's size: NaN and infinities show up in the minimum or the maximum.
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return math.isfinite(low.item()) and math.isfinite(high.item())


def _build_adapter(header: AdapterHeader, tensors: Mapping[str, torch.Tensor]) -> VMixAdapter:
    """The module on the meta device (no memory, no random initialisation), then given the loaded tensors."""
    with torch.device("meta"):
        adapter = VMixAdapter(header.dimensions, header.context_dim, header.layers, header.family, header.tokens)
    state = {
        "aes_positive": tensors["aes.positive"],
        "aes_negative": tensors["aes.negative"],
        "token_proj.weight": tensors["proj.token.weight"],
        "token_proj.bias": tensors["proj.token.bias"],
        "norm.weight": tensors["proj.norm.weight"],
        "norm.bias": tensors["proj.norm.bias"],
        "zero_proj.weight": tensors["proj.zero.weight"],
        "zero_proj.bias": tensors["proj.zero.bias"],
    }
    for index, layer in enumerate(adapter.layer_paths):
        state[f"value_projs.{index}.weight"] = tensors[VALUE_PREFIX + layer + VALUE_SUFFIX]
    adapter.load_state_dict(state, strict=True, assign=True)
    return adapter.requires_grad_(False)


def _bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count} bytes"


def _dtype_word(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
