"""The adapter file: bit-exact round trip, and one clear error for each way a file can be wrong."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from helpers import random_adapter, tiny_unet
from safetensors.torch import load_file, save_file

from vmix_ext.adapter import Dimension, VMixAdapter
from vmix_ext.weights import (
    MAX_HEADER_BYTES,
    AdapterFileError,
    check_adapter_fits,
    check_values_finite,
    family_problem,
    load_adapter,
    read_header,
    save_adapter,
    unet_family,
)


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


# -- names and texts ------------------------------------------------------------------------------------------

BAD_DIMENSION_NAMES = ["all", "None", "NONE", "a,b", "a:b", "a+b", "a=b", 'a"b', "a'b", "a\nb", "a\tb", " a", "a ", ""]
BAD_DIMENSION_NAMES += ["x" * 65, "\ud800", "a\u2028b", "a\x00b"]


@pytest.mark.parametrize("name", BAD_DIMENSION_NAMES)
def test_dimension_refuses_names_that_break_infotext_or_xyz(name):
    with pytest.raises(ValueError, match="dimension name") as info:
        Dimension(name, "natural lighting", "sks1")
    str(info.value).encode("utf-8")  # the message itself can always be printed


@pytest.mark.parametrize("name", ["Schärfe", "soft light", "film-grain_2", "日本", "a.b", "x" * 64, "allday"])
def test_dimension_accepts_ordinary_names(name):
    assert Dimension(name, "natural lighting", "sks1").name == name


def test_dimension_texts_are_bounded():
    with pytest.raises(ValueError, match=r"positive text .* longer than 500"):
        Dimension("light", "p" * 501, "sks1")
    with pytest.raises(ValueError, match=r"negative text .* control character"):
        Dimension("light", "natural lighting", "sks\n1")


@pytest.mark.parametrize("name", ["all", "a,b", "a\nb", "x+y"])
def test_reader_refuses_bad_dimension_names_naming_them(saved, name):
    _, path = saved

    def edit(meta):
        dims = json.loads(meta["dimensions"])
        dims[1]["name"] = name
        meta["dimensions"] = json.dumps(dims)

    rewrite(path, edit_meta=edit)
    message = expect_error(path, "dimension named", repr(name))
    assert "\n" not in message


def test_context_width_must_match_the_family(saved):
    _, path = saved
    rewrite(path, edit_meta=lambda m: m.__setitem__("family", "sd2"))
    expect_error(path, "is for SD 2.x but has context width 768", "SD 2.x models have 1024")


def test_a_width_no_family_has_is_left_to_the_unet_check(tmp_path, unet):
    # The trainer's toy model is "sd1" at width 32: the file reads, and no real UNet accepts it.
    toy = VMixAdapter(random_adapter(unet).dimensions, 32, {"input_blocks.1.1.transformer_blocks.0.attn2": 16}, "sd1")
    path = tmp_path / "toy.safetensors"
    save_adapter(toy, path)
    assert load_adapter(path).context_dim == 32
    with pytest.raises(
        AdapterFileError, match=r"context width 32\) but the loaded model is SD 1.x \(context width 768"
    ):
        check_adapter_fits(read_header(path), unet, path)


@pytest.mark.parametrize("tokens", ["0", "-1", "1025", "77.0", " 77", "٧٧"])
def test_token_length_must_be_a_positive_whole_number(saved, tokens):
    _, path = saved
    rewrite(path, edit_meta=lambda m: m.__setitem__("tokens", tokens))
    expect_error(path, "no valid 'tokens'", "from 1 to 1024")


def test_other_token_lengths_load(tmp_path, unet):
    for tokens in (1, 154):
        adapter = random_adapter(unet)
        other = VMixAdapter(
            adapter.dimensions,
            768,
            dict(zip(adapter.layer_paths, [p.out_features for p in adapter.value_projs], strict=True)),
            "sd1",
            tokens,
        )
        save_adapter(other, tmp_path / "c.safetensors")
        loaded = load_adapter(tmp_path / "c.safetensors")
        assert loaded.tokens == tokens
        assert next(iter(loaded.aesthetic_values(None).values())).shape[-2] == tokens


# -- the writer keeps the reader's rules --------------------------------------------------------------------------


def expect_refused_save(adapter, path, *words, **kwargs):
    with pytest.raises(AdapterFileError) as info:
        save_adapter(adapter, path, **kwargs)
    message = str(info.value)
    assert path.name in message, message
    for word in words:
        assert word in message, message
    assert not path.with_name(path.name + ".tmp").exists()
    return message


def test_writer_refuses_non_finite_weights_and_writes_nothing(tmp_path, unet):
    path = tmp_path / "a.safetensors"
    adapter = random_adapter(unet)
    with torch.no_grad():
        adapter.zero_proj.bias[5] = float("nan")
    expect_refused_save(adapter, path, "proj.zero.bias", "NaN", "nothing was written")
    assert not path.exists()


def test_writer_refuses_weights_that_overflow_the_stored_dtype(tmp_path, unet):
    path = tmp_path / "a.safetensors"
    adapter = random_adapter(unet)
    with torch.no_grad():
        adapter.value_projs[2].weight[0, 0] = 1e5
    name = f"value.{adapter.layer_paths[2]}.weight"
    expect_refused_save(adapter, path, name, "overflows float16", dtype=torch.float16)
    save_adapter(adapter, path, dtype=torch.bfloat16)  # bfloat16 and float32 hold it
    save_adapter(adapter, path)
    assert load_adapter(path).value_projs[2].weight[0, 0] == 1e5


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_writer_refuses_what_the_reader_would(tmp_path, unet):
    path = tmp_path / "a.safetensors"
    save_adapter(random_adapter(unet), path)
    before = path.read_bytes()
    widths = {
        p: m.out_features
        for p, m in zip(random_adapter(unet).layer_paths, random_adapter(unet).value_projs, strict=True)
    }
    from helpers import DIMENSIONS

    expect_refused_save(VMixAdapter(DIMENSIONS, 768, widths, "sd1", tokens=0), path, "tokens")
    expect_refused_save(VMixAdapter(DIMENSIONS, 768, widths, "sd1", tokens=2000), path, "tokens", "1024")
    expect_refused_save(VMixAdapter(DIMENSIONS, 768, widths, "flux"), path, "unknown model family 'flux'")
    expect_refused_save(VMixAdapter(DIMENSIONS, 768, widths, "sdxl"), path, "context width 768", "2048")
    stale = random_adapter(unet)
    forged = object.__new__(Dimension)  # a dimension that skipped its own checks
    for key, value in {"name": "all", "positive": "p", "negative": "n"}.items():
        object.__setattr__(forged, key, value)
    stale.dimensions = (forged, *stale.dimensions[1:])
    expect_refused_save(stale, path, "dimension named 'all'", "reserved")
    expect_refused_save(random_adapter(unet), path, "training facts", training={"loss": float("nan")})
    assert path.read_bytes() == before  # a refused save leaves the old file alone


def test_writer_refuses_a_header_over_the_limit(tmp_path, unet):
    path = tmp_path / "a.safetensors"
    expect_refused_save(random_adapter(unet), path, "header", "at most", training={"notes": "n" * (1 << 20)})
    assert not path.exists()


# -- files that are not files -------------------------------------------------------------------------------------


def test_folder_link_pipe_and_empty_file(tmp_path):
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    expect_error(folder, "is a folder")
    link = tmp_path / "link.safetensors"
    link.symlink_to(tmp_path / "gone.safetensors")
    expect_error(link, "link to a file that does not exist")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    expect_error(empty, "is empty")
    if hasattr(os, "mkfifo"):
        pipe = tmp_path / "pipe.safetensors"
        os.mkfifo(pipe)
        expect_error(pipe, "not a regular file")  # and does not wait for a writer


def test_unreadable_file(saved, monkeypatch):
    _, path = saved

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("vmix_ext.weights.os.open", denied)
    expect_error(path, "permission denied")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_for_real(saved):
    _, path = saved
    path.chmod(0)
    try:
        expect_error(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_header_size_is_bounded(tmp_path):
    path = tmp_path / "big.safetensors"
    n = MAX_HEADER_BYTES + 8
    path.write_bytes(struct.pack("<Q", n) + b"{" + b" " * (n - 2) + b"}")
    expect_error(path, f"{n}-byte header", f"at most {MAX_HEADER_BYTES} bytes")


# -- loading ------------------------------------------------------------------------------------------------------


def old_load_adapter(path):
    """The loader as it was before the fast path (module built with random init, then overwritten)."""
    header = read_header(path)
    tensors = load_file(str(path), device="cpu")
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
            proj.weight.copy_(tensors["value." + layer + ".weight"])
    return adapter.requires_grad_(False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fast_load_is_bit_identical_to_the_old_path(tmp_path, unet, dtype):
    path = tmp_path / "a.safetensors"
    save_adapter(random_adapter(unet, seed=4).to(dtype), path)
    new, old = load_adapter(path), old_load_adapter(path)
    assert new.state_dict().keys() == old.state_dict().keys()
    for key, value in old.state_dict().items():
        assert new.state_dict()[key].dtype == value.dtype and torch.equal(new.state_dict()[key], value), key
    assert not any(p.requires_grad for p in new.parameters())
    assert all(t.device.type == "cpu" for t in (*new.parameters(), *new.buffers()))
    for strengths in (None, {"color": 1.0}, {"lighting": 0.3, "focus": 1.0}):
        for compute in (None, torch.float32):
            a = new.aesthetic_values(strengths, dtype=compute)
            b = old.aesthetic_values(strengths, dtype=compute)
            for layer in b:
                assert torch.equal(a[layer], b[layer]), (strengths, compute, layer)


def test_loaded_tensors_view_one_buffer_the_size_of_the_data(saved):
    _, path = saved
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    adapter = load_adapter(path)
    tensors = [*adapter.parameters(), *adapter.buffers()]
    storages = {t.untyped_storage().data_ptr() for t in tensors}
    assert len(storages) == 1  # no tensor holds a copy of its own
    assert tensors[0].untyped_storage().nbytes() == len(data) - 8 - header_len


def test_a_loaded_adapter_can_be_saved_trained_and_moved(tmp_path, saved):
    _, path = saved
    adapter = load_adapter(path)
    save_adapter(adapter, tmp_path / "again.safetensors")
    assert load_adapter(tmp_path / "again.safetensors").state_dict().keys() == adapter.state_dict().keys()
    adapter.requires_grad_(True)
    loss = sum(v.sum() for v in adapter.aesthetic_values(None).values())
    loss.backward()
    assert adapter.zero_proj.weight.grad is not None
    assert adapter.to(torch.float16).zero_proj.weight.dtype == torch.float16


def test_header_is_checked_against_the_unet_before_any_tensor_is_read(tmp_path, monkeypatch):
    sdxl = tiny_unet(2048)
    path = tmp_path / "xl.safetensors"
    save_adapter(random_adapter(sdxl), path)

    def no_data(*args):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr("vmix_ext.weights._read_data", no_data)
    header = read_header(path)
    with pytest.raises(AdapterFileError, match=r"made for SDXL .* loaded model is SD 1.x"):
        check_adapter_fits(header, tiny_unet(768), path)


# -- families and V_a in the generation's dtype -------------------------------------------------------------------


def test_family_problem_and_unet_family(saved, unet):
    _, path = saved
    assert unet_family(unet) == "sd1" and unet_family(tiny_unet(2048)) == "sdxl"
    assert unet_family(torch.nn.Linear(2, 2)) is None
    header = read_header(path)
    assert header.family_problem("sd1") is None and header.family_problem(None) is None
    assert header.family_problem("sdxl") == "made for SD 1.x, but the loaded model is SDXL"
    assert family_problem("sdxl", "sd1") == "made for SDXL, but the loaded model is SD 1.x"


def overflowing_adapter(unet):
    """Finite float32 weights whose V_a is about 1e5: f_a is 1 everywhere (Z's weight 0, bias 1) and each W_Va row
    sums to 768·130."""
    adapter = random_adapter(unet)
    with torch.no_grad():
        adapter.zero_proj.weight.zero_()
        adapter.zero_proj.bias.fill_(1.0)
        for proj in adapter.value_projs:
            proj.weight.fill_(130.0)
    return adapter


def test_values_that_overflow_the_generation_dtype_are_refused(tmp_path, unet):
    from vmix_ext.library import AdapterLibrary

    save_adapter(overflowing_adapter(unet), tmp_path / "loud.safetensors")
    library = AdapterLibrary(tmp_path)
    values = library.values("loud", {"color": 1.0, "lighting": 0.0, "focus": 0.0})
    assert all(torch.isfinite(v).all() for v in values.values()) and max(v.max() for v in values.values()) > 9e4
    with pytest.raises(
        AdapterFileError,
        match=r"'loud.safetensors'.*λ·V_a values up to 9\.98e\+04 in layer input_blocks.*float16.*lower λ",
    ):
        check_values_finite(values, 1.0, torch.float16, library.path_for("loud"))
    check_values_finite(values, 0.5, torch.float16, "loud.safetensors")  # 5e4 fits
    check_values_finite(values, 2.0, torch.bfloat16, "loud.safetensors")
    check_values_finite(values, 2.0, torch.float32, "loud.safetensors")


def test_non_finite_values_are_refused_whatever_the_scale(unet):
    values = {"input_blocks.1.1.transformer_blocks.0.attn2": torch.tensor([[1.0, float("inf")]])}
    for scale in (0.0, 1.0):
        with pytest.raises(AdapterFileError, match="NaN or infinite in layer input_blocks"):
            check_values_finite(values, scale, torch.float32, "a.safetensors")


def test_a_run_refuses_values_that_overflow_the_unets_dtype_before_any_step(tmp_path, unet):
    """The glue's run checks λ·V_a in the dtype the UNet computes in, once per UNet: an fp16 UNet refuses what a
    bf16 one takes; λ 0.5 fits fp16, and λ 0.5 with a block multiplier of 2 does not."""
    import copy

    from vmix_ext.library import AdapterLibrary
    from vmix_ext.session import VMixRun
    from vmix_ext.settings import VMixSettings

    save_adapter(overflowing_adapter(unet), tmp_path / "loud.safetensors")
    library = AdapterLibrary(tmp_path)
    half, bf16 = copy.deepcopy(unet).half(), copy.deepcopy(unet).to(torch.bfloat16)
    run = VMixRun(VMixSettings(enabled=True, adapter="loud", dimensions=["color"]), library, file_hash="")
    with pytest.raises(AdapterFileError, match=r"'loud.safetensors'.*float16"):
        run.check_fits(half)
    run.check_fits(bf16)
    VMixRun(VMixSettings(enabled=True, adapter="loud", scale=0.5, dimensions=["color"]), library, "").check_fits(half)
    louder = VMixSettings(enabled=True, adapter="loud", scale=0.5, output_scale=2.0, dimensions=["color"])
    with pytest.raises(AdapterFileError, match="float16"):
        VMixRun(louder, library, "").check_fits(half)


def test_written_adapters_get_the_users_umask_permissions(tmp_path, unet):
    """safetensors' own writer makes 0600 files; an adapter is written as open() would write it under the umask."""
    import os

    old = os.umask(0o027)
    try:
        save_adapter(random_adapter(unet), tmp_path / "shared.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.safetensors").stat().st_mode & 0o777 == 0o640
