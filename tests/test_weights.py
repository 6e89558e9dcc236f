"""The adapter file: bit-exact round trip, and one clear error for each way a file can be wrong."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from helpers import random_adapter, tiny_unet
from safetensors.torch import load_file, save_file

from vmix_ext.weights import AdapterFileError, check_adapter_fits, load_adapter, read_header, save_adapter


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(768)


@pytest.fixture
def saved(tmp_path, unet):
    adapter = random_adapter(unet)
    path = tmp_path / "film.safetensors"
    save_adapter(adapter, path, training={"steps": 10, "base_checkpoint": "tiny.ckpt"})
    return adapter, path


def rewrite(path, edit_tensors=None, edit_meta=None):
    """Load the file's tensors and metadata, change them, write them back (a hand-made bad adapter)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_is_bit_exact(tmp_path, unet, dtype):
    adapter = random_adapter(unet).to(dtype)
    path = tmp_path / "a.safetensors"
    save_adapter(adapter, path)
    loaded = load_adapter(path)
    assert loaded.dimensions == adapter.dimensions and loaded.layer_paths == adapter.layer_paths
    assert loaded.family == "sd1" and loaded.context_dim == 768 and loaded.tokens == 77
    original, back = adapter.state_dict(), loaded.state_dict()
    assert original.keys() == back.keys()
    for key in original:
        assert back[key].dtype == dtype and torch.equal(back[key], original[key]), key
    header = read_header(path)
    assert header.dtype == dtype and header.layers == {
        p: m.out_features for p, m in zip(adapter.layer_paths, adapter.value_projs, strict=True)
    }


def test_loaded_adapter_gives_the_same_values(saved):
    adapter, path = saved
    loaded = load_adapter(path)
    for key, value in adapter.aesthetic_values({"color": 1.0}).items():
        assert torch.equal(loaded.aesthetic_values({"color": 1.0})[key], value)


def test_metadata_is_documented_and_readable(saved):
    _, path = saved
    header = read_header(path)
    assert header.training == {"steps": 10, "base_checkpoint": "tiny.ckpt"}
    assert header.tool_version.startswith("vmix_ext ")
    assert [d.name for d in header.dimensions] == ["color", "lighting", "focus"]
    assert "SD 1.x" in header.describe() and "3 dimensions" in header.describe()
    assert json.dumps(header.as_json())


def test_save_is_atomic(tmp_path, unet, monkeypatch):
    adapter = random_adapter(unet)
    path = tmp_path / "a.safetensors"
    save_adapter(adapter, path)
    before = path.read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr("vmix_ext.weights.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(random_adapter(unet, seed=7), path)
    assert path.read_bytes() == before
    load_adapter(path)


def expect_error(path, *words):
    with pytest.raises(AdapterFileError) as info:
        load_adapter(path)
    message = str(info.value)
    assert path.name in message, message
    for word in words:
        assert word in message, message
    return message


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nothing.safetensors", "not found")


def test_not_safetensors(tmp_path):
    path = tmp_path / "pickle.safetensors"
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle's first bytes
    expect_error(path, "is not a safetensors file")
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    expect_error(tiny, "is not a safetensors file")


def test_truncated(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    expect_error(path, "is truncated")


def test_not_a_vmix_file(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_up.weight": torch.zeros(2, 2)}, str(path))
    expect_error(path, "not a VMix adapter")


def test_wrong_shape(saved):
    _, path = saved
    rewrite(path, lambda t: t.__setitem__("proj.zero.weight", torch.zeros(768, 700)))
    expect_error(path, "proj.zero.weight", "[768, 700]", "expected [768, 768]")


def test_wrong_dtype(saved):
    _, path = saved
    rewrite(path, lambda t: t.__setitem__("aes.positive", t["aes.positive"].to(torch.int32)))
    expect_error(path, "I32", "float32, float16 or bfloat16")


def test_mixed_dtypes(saved):
    _, path = saved
    rewrite(path, lambda t: t.__setitem__("aes.positive", t["aes.positive"].half()))
    expect_error(path, "mixes tensor dtypes")


def test_nan(saved):
    _, path = saved

    def poison(tensors):
        tensors["proj.norm.bias"][3] = float("nan")

    rewrite(path, poison)
    expect_error(path, "proj.norm.bias", "NaN")


def test_missing_tensor(saved):
    _, path = saved
    rewrite(path, lambda t: t.pop("proj.token.bias"))
    expect_error(path, "lacks", "proj.token.bias")


def test_unexpected_tensor(saved):
    _, path = saved
    rewrite(path, lambda t: t.__setitem__("optimizer.state", torch.zeros(1)))
    expect_error(path, "unexpected tensors", "optimizer.state")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("family", "flux", ["unknown model family 'flux'"]),
        ("format_version", "9", ["format version '9'", "update the extension"]),
        ("dimensions", '[{"name": 1}]', ["dimensions"]),
        ("context_dim", "wide", ["no valid 'context_dim'"]),
    ],
)
def test_bad_metadata(saved, key, value, words):
    _, path = saved
    rewrite(path, edit_meta=lambda m: m.__setitem__(key, value))
    expect_error(path, *words)


def test_bad_header_offsets(saved):
    _, path = saved
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"][1] += 4  # a tensor whose byte span disagrees with its shape
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + n :])
    expect_error(path, "is damaged", key)


def test_fits_the_matching_unet(saved, unet):
    adapter, path = saved
    check_adapter_fits(adapter, unet, path)
    check_adapter_fits(read_header(path), unet, path)


def test_wrong_family_names_both(saved):
    adapter, path = saved
    with pytest.raises(AdapterFileError, match=r"made for SD 1.x .* loaded model is SDXL") as info:
        check_adapter_fits(adapter, tiny_unet(2048), path)
    assert "film.safetensors" in str(info.value)


def test_missing_and_extra_layers(saved, unet):
    adapter, path = saved
    deeper = tiny_unet(768, depth=2)
    with pytest.raises(AdapterFileError, match=r"lacks layers the loaded model has: .*transformer_blocks\.1\.attn2"):
        check_adapter_fits(adapter, deeper, path)
    fewer = random_adapter(unet)
    rewrite(path, lambda t: [t.pop(k) for k in list(t) if k.startswith("value.output_blocks")])
    fewer = load_adapter(path)
    with pytest.raises(AdapterFileError, match="lacks layers the loaded model has: output_blocks"):
        check_adapter_fits(fewer, unet, path)
    with pytest.raises(AdapterFileError, match="has layers the loaded model lacks"):
        check_adapter_fits(random_adapter(deeper), unet, path)


def test_model_without_cross_attention(saved):
    adapter, path = saved
    with pytest.raises(AdapterFileError, match=r"no cross-attention layers .*SD3, Flux and Chroma"):
        check_adapter_fits(adapter, torch.nn.Linear(2, 2), path)
