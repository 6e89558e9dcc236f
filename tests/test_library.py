"""The adapter folder: listing, name resolution, caching by file state, helpful lookup errors."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import random_adapter, tiny_unet

from vmix_ext.library import AdapterLibrary
from vmix_ext.weights import AdapterFileError, save_adapter


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(768)


def test_lists_nested_adapters_and_loads_by_name(tmp_path, unet):
    (tmp_path / "styles").mkdir()
    save_adapter(random_adapter(unet), tmp_path / "film.safetensors")
    save_adapter(random_adapter(unet, seed=2), tmp_path / "styles" / "neon.safetensors")
    (tmp_path / "notes.txt").write_text("not an adapter")
    library = AdapterLibrary(tmp_path)
    assert library.names() == ["film", "styles/neon"]
    assert library.load("styles/neon").family == "sd1"
    assert library.load("film.safetensors") is library.load("film")


def test_unknown_name_lists_what_exists(tmp_path, unet):
    save_adapter(random_adapter(unet), tmp_path / "film.safetensors")
    with pytest.raises(LookupError, match=r"no VMix adapter named 'nope' in .* \(found: film\)"):
        AdapterLibrary(tmp_path).load("nope")
    with pytest.raises(LookupError, match=r"the folder holds no \.safetensors adapters"):
        AdapterLibrary(tmp_path / "empty").load("film")
    with pytest.raises(LookupError, match="no VMix adapter is selected"):
        AdapterLibrary(tmp_path).load("")


def test_values_are_cached_until_the_file_changes(tmp_path, unet):
    path = tmp_path / "film.safetensors"
    save_adapter(random_adapter(unet), path)
    library = AdapterLibrary(tmp_path)
    first = library.values("film", {"color": 1.0, "lighting": 0.0, "focus": 1.0})
    assert library.values("film", {"color": 1.0, "lighting": 0.0, "focus": 1.0}) is first
    save_adapter(random_adapter(unet, seed=5), path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = library.values("film", {"color": 1.0, "lighting": 0.0, "focus": 1.0})
    assert second is not first
    key = next(iter(first))
    assert not torch.equal(first[key], second[key])


def test_headers_report_broken_files_without_failing(tmp_path, unet):
    save_adapter(random_adapter(unet), tmp_path / "good.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage!" * 4)
    headers = AdapterLibrary(tmp_path).headers()
    assert isinstance(headers[0], AdapterFileError) and "bad.safetensors" in str(headers[0])
    assert headers[1].family == "sd1"
