"""Damaged adapter files, well over a thousand of them, derived from one valid file.

Whatever a file holds, reading its header, loading it, checking it against a UNet and going through the library
raise AdapterFileError (LookupError only for a name not in the folder) and nothing else, each within a time bound,
with a short message and a bounded peak of memory. Files whose damage must be refused are also checked to be
refused. The generator is seeded, so every run tries the same files.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import random_adapter, tiny_unet

from vmix_ext.library import AdapterLibrary
from vmix_ext.weights import (
    MAX_HEADER_BYTES,
    AdapterFileError,
    check_adapter_fits,
    check_values_finite,
    load_adapter,
    read_header,
    save_adapter,
)

SEED = 11
TIME_LIMIT_S = 2.0  # per call; the costliest forged header takes ~0.15 s here, a valid tiny adapter ~2 ms
MEMORY_LIMIT = 64 << 20  # peak growth per file; the valid file is 1.2 MB and a header at most 1 MiB
MESSAGE_LIMIT = 800


@dataclass
class Case:
    label: str
    data: bytes
    expect: str = "any"  # "any", "refused" (by read_header) or "refused_on_load" (by load_adapter)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(768)


@pytest.fixture(scope="module")
def valid(tmp_path_factory, unet) -> bytes:
    path = tmp_path_factory.mktemp("valid") / "valid.safetensors"
    save_adapter(random_adapter(unet).half(), path, training={"steps": 10})
    return path.read_bytes()


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict | str, body: bytes) -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    encoded = text.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(encoded)) + encoded + body


# Values of every JSON type, and extremes, for every field.
WRONG_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**63,
    2**64 + 1,
    10**30,
    1e308,
    -1.5,
    "",
    "x",
    "768",
    "\ud800",
    "a\nb",
    [],
    [1],
    [-1, -2],
    [[[]]],
    {},
    {"a": 1},
    "y" * 5000,
]
DEEP = "[" * 50_000 + "]" * 50_000

NUMBER_TEXTS = ["0", "-1", "+768", " 768", "7_68", "٧٦٨", "1e3", "768.0", "9" * 30, "1025", "77\n", "", "NaN", "inf"]
BAD_NAMES = [
    "all",
    "ALL",
    "None",
    "a,b",
    "a:b",
    "a+b",
    "a=b",
    'a"b',
    "a'b",
    "a\nb",
    "a\tb",
    " a",
    "a ",
    "",
    "   ",
    "\ud800",
    "x" * 65,
    "a\u200bb",
    "a\x00b",
]


def field_paths(header: dict) -> Iterator[tuple]:
    """Paths to every field worth replacing: the metadata and each of its keys, and per tensor the entry, its
    dtype, shape, offsets, and each element of shape and offsets (for every fixed tensor and one layer)."""
    yield ("__metadata__",)
    for key in header["__metadata__"]:
        yield ("__metadata__", key)
    names = [k for k in header if k != "__metadata__"]
    chosen = [n for n in names if not n.startswith("value.")] + [n for n in names if n.startswith("value.")][:1]
    for name in chosen:
        yield (name,)
        for key in ("dtype", "shape", "data_offsets"):
            yield (name, key)
            if key != "dtype":
                for index in range(len(header[name][key])):
                    yield (name, key, index)


def set_path(header: dict, path: tuple, value: object) -> dict:
    header = copy.deepcopy(header)
    target = header
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return header


def delete_path(header: dict, path: tuple) -> dict:
    header = copy.deepcopy(header)
    target = header
    for key in path[:-1]:
        target = target[key]
    if isinstance(target, list):
        target.pop(path[-1])
    else:
        del target[path[-1]]
    return header


def with_meta(header: dict, key: str, value: str) -> dict:
    return set_path(header, ("__metadata__", key), value)


def dims_json(names: list[str]) -> str:
    return json.dumps([{"name": n, "positive": f"text {i}", "negative": f"sks{i}"} for i, n in enumerate(names)])


def cases(valid: bytes) -> Iterator[Case]:
    rng = random.Random(SEED)
    header, body = split(valid)
    (header_len,) = struct.unpack("<Q", valid[:8])
    size = len(valid)

    # Truncations and additions.
    lengths = {0, 1, 7, 8, 9, 16, 8 + header_len - 1, 8 + header_len, 8 + header_len + 1, size - 1, size - 2}
    lengths |= {rng.randrange(size) for _ in range(40)}
    for length in sorted(lengths):
        yield Case(f"truncated to {length}", valid[:length], "refused")
    for extra in (b"\x00", b"\x00" * 8, b"garbage"):
        yield Case(f"{len(extra)} bytes appended", valid + extra, "refused")

    # The length prefix.
    for announced in (0, 1, 2, header_len - 1, header_len + 1, size, MAX_HEADER_BYTES + 1, 2**63, 2**64 - 1):
        yield Case(f"header length {announced}", struct.pack("<Q", announced) + valid[8:], "refused")

    # Byte flips in the header (structural characters are the interesting ones) and in the data.
    interesting = b'{}[]",:0123456789-.eE\\ \x00\xff\x80'
    for _ in range(300):
        data = bytearray(valid)
        position = rng.randrange(8 + header_len)
        data[position] = rng.choice(interesting) if rng.random() < 0.7 else rng.randrange(256)
        yield Case(f"header byte {position} flipped", bytes(data))
    for _ in range(30):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(8 + header_len, size)] = rng.randrange(256)
        yield Case("data bytes flipped", bytes(data))

    # Every field given every wrong type, and every field removed.
    for path in field_paths(header):
        for value in WRONG_VALUES:
            yield Case(f"{path} = {value!r:.40}", join(set_path(header, path, value), body))
        yield Case(
            f"{path} = deep nesting", join(json.dumps(set_path(header, path, "DEEP")).replace('"DEEP"', DEEP), body)
        )
        yield Case(f"{path} removed", join(delete_path(header, path), body))
    yield Case("header is a list", join("[1, 2, 3]", body), "refused")
    yield Case("header is a string", join('"vmix"', body), "refused")
    yield Case("header is deep nesting", join(DEEP, body), "refused")
    yield Case("header has a huge integer", join('{"a": ' + "9" * 100_000 + "}", body), "refused")
    yield Case("header has NaN", join('{"a": NaN}', body), "refused")
    yield Case("header repeats a key", join(json.dumps(header)[:-1] + ', "__metadata__": {}}', body), "refused")
    yield Case("header is UTF-16", struct.pack("<Q", 4) + "{}".encode("utf-16-le") + body, "refused")
    # The costliest headers to parse that fit the 1 MiB limit: many tiny containers, many keys.
    room = MAX_HEADER_BYTES - 64
    yield Case("1 MiB of empty lists", join('{"a": [' + ",".join(["[]"] * (room // 3)) + "]}", b""), "refused")
    many_keys = '{"__metadata__": {' + ",".join(f'"k{i}": "v"' for i in range(room // 16)) + "}}"
    yield Case("1 MiB of metadata keys", join(many_keys, b""), "refused")
    wide = {f"t{i}": {"dtype": "F16", "shape": [0], "data_offsets": [0, 0]} for i in range(5000)}
    yield Case("5000 empty tensors", join({**wide, "__metadata__": header["__metadata__"]}, b""), "refused")

    # Metadata with the right type and wrong contents.
    for key in ("context_dim", "tokens"):
        for text in NUMBER_TEXTS:
            yield Case(f"{key} = {text!r:.30}", join(with_meta(header, key, text), body), "refused")
    for text in ("", "SD1", "flux", "sd1\x00", "sdxl", "sd2", "z" * 10_000):
        yield Case(f"family {text!r:.30}", join(with_meta(header, "family", text), body), "refused")
    for text in ("2", "1.0", " 1", "", "0"):
        yield Case(f"format_version {text!r}", join(with_meta(header, "format_version", text), body), "refused")
    for text in ("", "vmix", "VMIX-ADAPTER", "lora"):
        yield Case(f"format {text!r}", join(with_meta(header, "format", text), body), "refused")
    names = [d["name"] for d in json.loads(header["__metadata__"]["dimensions"])]
    for bad in BAD_NAMES:
        dims = dims_json([bad, *names[1:]])
        yield Case(f"dimension named {bad!r:.30}", join(with_meta(header, "dimensions", dims), body), "refused")
    for text in (
        "",
        "[]",
        "{}",
        "null",
        "[1]",
        '["color"]',
        dims_json(names[:2]),
        dims_json([*names, "extra"]),
        dims_json([names[0], names[0], names[2]]),
        dims_json([f"d{i}" for i in range(129)]),
        json.dumps([{"name": "color", "positive": 1, "negative": "sks1"}, *json.loads(dims_json(names[1:]))]),
        json.dumps([{"name": "color", "positive": "p" * 501, "negative": "n"}, *json.loads(dims_json(names[1:]))]),
        json.dumps([{"name": "color", "positive": "a\x07", "negative": "n"}, *json.loads(dims_json(names[1:]))]),
        '[{"name": NaN}]',
        "[" * 5000,
        '[{"name": "\\ud800", "positive": "p", "negative": "n"}]',
        '[{"name": ' + "1" * 5000 + "}]",
    ):
        yield Case(f"dimensions {text!r:.40}", join(with_meta(header, "dimensions", text), body), "refused")
    for text in ("[]", "1", '"x"', "NaN", '{"a": 1e999}', '{"a": ' + "1" * 5000 + "}", "{" * 5000, '{"a": "\\udc80"}'):
        yield Case(f"training {text!r:.40}", join(with_meta(header, "training", text), body), "refused")
    for text in ("v\n2", "x" * 1000, "\u2028"):
        yield Case(f"tool_version {text!r:.30}", join(with_meta(header, "tool_version", text), body), "refused")

    # Offsets and shapes that disagree with each other or with the file, sizes kept consistent where possible.
    tensors = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    for name in tensors:
        begin, end = header[name]["data_offsets"]
        shape = header[name]["shape"]
        for label, offsets in (
            ("overlapping", [max(0, begin - 2), end - 2]),
            ("shifted past the end", [begin + len(body), end + len(body)]),
            ("negative", [-2, end - begin - 2]),
            ("reversed", [end, begin]),
        ):
            yield Case(
                f"{name} offsets {label}", join(set_path(header, (name, "data_offsets"), offsets), body), "refused"
            )
        for label, new_shape in (
            ("transposed", shape[::-1]),
            ("with a unit axis", [*shape, 1]),
            ("flattened", [math.prod(shape)]),
            ("rank 9", [*shape, *[1] * 8]),
            ("with a zero", [0, *shape]),
            ("huge", [2**40, 2**40]),
        ):
            if new_shape != shape:
                yield Case(f"{name} shape {label}", join(set_path(header, (name, "shape"), new_shape), body), "refused")
        yield Case(f"{name} stored as F32", join(set_path(header, (name, "dtype"), "F32"), body), "refused")
    gap = copy.deepcopy(header)
    last = tensors[-1]
    begin = gap[last]["data_offsets"][0]
    gap[last]["data_offsets"] = [o + 2 for o in gap[last]["data_offsets"]]
    yield Case("a gap before the last tensor", join(gap, body[:begin] + b"\0\0" + body[begin:]), "refused")
    twice = copy.deepcopy(header)
    twice[tensors[1]]["data_offsets"] = list(header[tensors[0]]["data_offsets"])
    yield Case("two tensors on the same bytes", join(twice, body), "refused")
    extra = copy.deepcopy(header)
    extra["optimizer.state"] = {"dtype": "F16", "shape": [1], "data_offsets": [len(body), len(body) + 2]}
    yield Case("an unexpected tensor", join(extra, body + b"\0\0"), "refused")
    for dtype in ("BF16", "F32", "I8", "F64", "F8_E4M3", "f16", ""):
        every = copy.deepcopy(header)
        for name in tensors:
            every[name]["dtype"] = dtype
        yield Case(f"every tensor {dtype!r}", join(every, body), "any" if dtype == "BF16" else "refused")

    # Non-finite weights, one tensor at a time (fp16 NaN, +inf, -inf).
    for name in tensors:
        begin, end = header[name]["data_offsets"]
        for bits in (0x7E00, 0x7C00, 0xFC00):
            data = bytearray(body)
            where = begin + 2 * rng.randrange((end - begin) // 2)
            data[where : where + 2] = struct.pack("<H", bits)
            yield Case(f"{name} holds {bits:#x}", join(header, bytes(data)), "refused_on_load")


def peak_rss_tracker() -> Callable[[], Callable[[], int]] | None:
    """Linux: reset the process's peak RSS and read its growth afterwards (covers torch's and mmap's memory, which
    tracemalloc cannot see). None where /proc does not offer it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None

    def rss_kib(field: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))

    def start() -> Callable[[], int]:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = rss_kib("VmRSS")
        return lambda: (rss_kib("VmHWM") - before) * 1024

    return start


def attempt(call: Callable[[], object], label: str, path: Path, rss: Callable[[], Callable[[], int]] | None):
    """Run one reader call: only AdapterFileError, in time, short, within memory; returns the result or None."""
    measure = rss() if rss else None
    if measure is None:
        tracemalloc.start()
    start = time.perf_counter()
    result = None
    try:
        result = call()
    except AdapterFileError as exc:
        message = str(exc)
        assert len(message) <= MESSAGE_LIMIT, f"{label}: a {len(message)}-character message"
        assert path.name in message, f"{label}: {message}"
        message.encode("utf-8")
    except BaseException as exc:
        raise AssertionError(f"{label}: {type(exc).__name__}: {str(exc)[:300]}") from exc
    finally:
        elapsed = time.perf_counter() - start
        if measure is None:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        else:
            peak = measure()
    assert elapsed < TIME_LIMIT_S, f"{label}: took {elapsed:.2f} s"
    assert peak < MEMORY_LIMIT, f"{label}: peak memory grew by {peak / 2**20:.0f} MiB"
    return result


def test_damaged_files_only_raise_adapter_file_error(tmp_path, valid, unet):
    rss = peak_rss_tracker()
    folder = tmp_path / "VMix"
    folder.mkdir()
    path = folder / "fuzzed.safetensors"
    outcomes = {"header refused": 0, "load refused": 0, "loaded": 0}
    for number, case in enumerate(cases(valid)):  # generated one at a time: together they would be gigabytes
        path.write_bytes(case.data)
        header = attempt(lambda: read_header(path), case.label, path, rss)
        adapter = attempt(lambda: load_adapter(path), case.label, path, rss)
        if case.expect == "refused":
            assert header is None and adapter is None, f"{case.label}: was accepted"
        if case.expect == "refused_on_load":
            assert header is not None and adapter is None, f"{case.label}: header {header}, adapter {adapter}"
        if header is not None:
            attempt(lambda header=header: check_adapter_fits(header, unet, path), case.label, path, rss)
        if adapter is not None:
            values = adapter.aesthetic_values(None, dtype=torch.float32)
            attempt(lambda v=values: check_values_finite(v, 2.0, torch.float16, path), case.label, path, rss)
        if number % 10 == 0:  # the library's paths over the same file: listing, verification
            library = AdapterLibrary(folder)  # a fresh cache: the rewritten file may keep its size and mtime
            listing = attempt(library.scan, case.label, path, rss)
            assert listing.names() == ["fuzzed"] and (listing.entries[0].ok == (header is not None))
            json.dumps(listing.as_json("sd1"), ensure_ascii=False).encode("utf-8")
            verified = attempt(lambda lib=library: lib.verify("fuzzed"), case.label, path, rss)
            assert (verified is not None) == (adapter is not None), case.label
        outcomes["loaded" if adapter else "load refused" if header else "header refused"] += 1
    assert sum(outcomes.values()) >= 1000, outcomes
    assert outcomes["loaded"] >= 1 and outcomes["load refused"] >= 45 and outcomes["header refused"] >= 1000, outcomes


def test_the_valid_file_loads(tmp_path, valid, unet):
    path = tmp_path / "valid.safetensors"
    path.write_bytes(valid)
    check_adapter_fits(read_header(path), unet, path)
    check_adapter_fits(load_adapter(path), unet, path)
