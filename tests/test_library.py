"""The adapter folder: listing, name resolution, caching by file state, helpful lookup errors."""

from __future__ import annotations

import json
import os
import struct
import unicodedata

import pytest
import torch
from helpers import random_adapter, tiny_unet
from safetensors.torch import save_file

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


# -- one bad file stays one bad file ------------------------------------------------------------------------------


def write_bad_files(folder, unet):
    """A folder of every kind of file a user may leave in models/VMix; returns name -> words its reason holds."""
    save_adapter(random_adapter(unet), folder / "good.safetensors")
    (folder / "styles").mkdir()
    save_adapter(random_adapter(unet, seed=3), folder / "styles" / "neon.safetensors")
    save_adapter(random_adapter(tiny_unet(2048)), folder / "xl.safetensors")
    (folder / "garbage.safetensors").write_bytes(b"garbage!" * 4)
    (folder / "empty.safetensors").write_bytes(b"")
    save_file({"lora_up.weight": torch.zeros(2, 2)}, str(folder / "lora.safetensors"))
    (folder / "gone.safetensors").symlink_to(folder / "nowhere.safetensors")
    (folder / "pack.safetensors").mkdir()  # a folder with the suffix is walked, not listed
    save_adapter(random_adapter(unet, seed=4), folder / "pack.safetensors" / "inner.safetensors")
    good_bytes = (folder / "good.safetensors").read_bytes()
    (folder / "nan.safetensors").write_bytes(poisoned(good_bytes))
    (folder / "line\nbreak.safetensors").write_bytes(good_bytes)
    (folder / " padded.safetensors").write_bytes(good_bytes)
    (folder / ".safetensors").write_bytes(good_bytes)
    return {
        "garbage": ["is not a safetensors file"],
        "empty": ["is empty"],
        "lora": ["not a VMix adapter"],
        "gone": ["link to a file that does not exist"],
        "line\\nbreak.safetensors": ["control character U+000A", "rename the file"],  # shown escaped
        " padded.safetensors": ["starts or ends with a space", "rename the file"],
        ".safetensors": ["has a name that is empty"],
    }


def poisoned(data: bytes) -> bytes:
    """The same (float32) adapter with one +inf in its last tensor's data; the header stays valid."""
    return data[:-4] + struct.pack("<f", float("inf"))


def test_listing_shows_every_file_good_and_bad(tmp_path, unet):
    bad = write_bad_files(tmp_path, unet)
    listing = AdapterLibrary(tmp_path).scan()
    by_name = {e.name: e for e in listing.entries}
    good = ["good", "nan", "pack.safetensors/inner", "styles/neon", "xl"]
    assert sorted(by_name) == sorted([*good, *bad]) and listing.names() == sorted(by_name)
    unusable = {" padded.safetensors", "line\\nbreak.safetensors", ".safetensors"}
    assert AdapterLibrary(tmp_path).names() == sorted(set(by_name) - unusable)  # the dropdown: selectable names
    for name in good:
        assert by_name[name].ok and by_name[name].header.family in ("sd1", "sdxl"), name
    for name, words in bad.items():
        entry = by_name[name]
        assert not entry.ok and entry.header is None, name
        for word in words:
            assert word in entry.error.problem, (name, entry.error.problem)
    assert [e.name for e in listing.usable()] == good
    assert listing.problems == ()
    body = listing.as_json("sd1")
    json.dumps(body, ensure_ascii=False).encode("utf-8")  # the API body is always valid JSON and UTF-8
    entries = {e["name"]: e for e in body["adapters"]}
    assert entries["xl"]["family_warning"] == "made for SDXL, but the loaded model is SD 1.x"
    assert "family_warning" not in entries["good"] and entries["garbage"]["error"].startswith("is not a safetensors")
    assert by_name["xl"].family_problem("sd1") and by_name["good"].family_problem("sd1") is None
    # The older call keeps working: a header or the error, one per file.
    headers = AdapterLibrary(tmp_path).headers()
    assert len(headers) == len(by_name) and sum(isinstance(h, AdapterFileError) for h in headers) == len(bad)


def test_every_listed_name_resolves_to_its_own_file(tmp_path, unet):
    write_bad_files(tmp_path, unet)
    library = AdapterLibrary(tmp_path)
    for entry in library.scan().entries:
        if entry.ok:
            assert library.path_for(entry.name) == entry.path
            assert library.path_for(entry.name + ".safetensors") == entry.path


def test_verify_checks_the_weights_the_header_cannot_show(tmp_path, unet):
    write_bad_files(tmp_path, unet)
    library = AdapterLibrary(tmp_path)
    assert library.scan().entries[[e.name for e in library.scan().entries].index("nan")].ok  # header alone: fine
    with pytest.raises(AdapterFileError, match=r"'nan.safetensors'.*NaN or infinite"):
        library.verify("nan")
    header = library.verify("good")
    assert header.family == "sd1" and header.describe().startswith("SD 1.x")
    assert library.load("good") is library.load("good")  # verify filled the cache the generation uses
    with pytest.raises(LookupError, match="no VMix adapter named 'missing'"):
        library.verify("missing")
    with pytest.raises(AdapterFileError, match="not a safetensors file"):
        library.verify("garbage")


def test_listing_never_raises_on_the_folder_itself(tmp_path, monkeypatch):
    missing = AdapterLibrary(tmp_path / "nope").scan()
    assert missing.entries == () and "does not exist" in missing.problems[0]
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in AdapterLibrary(tmp_path / "file").scan().problems[0]
    assert AdapterLibrary(tmp_path / "file").names() == []

    def denied(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("vmix_ext.library.os.scandir", denied)
    unreadable = AdapterLibrary(tmp_path).scan()
    assert unreadable.entries == () and unreadable.problems == ("the folder itself cannot be read: permission denied",)


def test_unreadable_subfolder_and_link_loop(tmp_path, unet, monkeypatch):
    save_adapter(random_adapter(unet), tmp_path / "good.safetensors")
    (tmp_path / "locked").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path)  # a link back up the tree is not walked again
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr("vmix_ext.library.os.scandir", scandir)
    listing = AdapterLibrary(tmp_path).scan()
    assert listing.names() == ["good"] and listing.problems == ("locked cannot be read: permission denied",)


def test_a_file_that_vanishes_mid_listing_is_one_entry(tmp_path, unet, monkeypatch):
    save_adapter(random_adapter(unet), tmp_path / "a.safetensors")
    save_adapter(random_adapter(unet), tmp_path / "b.safetensors")
    import vmix_ext.library as library_module

    real = library_module.read_header

    def vanishing(path):
        if path.name == "a.safetensors":
            path.unlink()
        return real(path)

    monkeypatch.setattr(library_module, "read_header", vanishing)
    entries = AdapterLibrary(tmp_path).scan().entries
    assert [e.ok for e in entries] == [False, True] and "not found" in entries[0].error.problem


def test_a_reader_bug_costs_one_entry_not_the_listing(tmp_path, unet, monkeypatch):
    save_adapter(random_adapter(unet), tmp_path / "a.safetensors")
    monkeypatch.setattr("vmix_ext.library.read_header", lambda path: 1 / 0)
    (entry,) = AdapterLibrary(tmp_path).scan().entries
    assert "ZeroDivisionError" in entry.error.problem


# -- names as users write them ------------------------------------------------------------------------------------


def test_names_with_dots_spaces_unicode_and_folders(tmp_path, unet):
    names = ["film-v1.5", "film-v1", "my film", "café", "日本/夜", "styles/film", "film.safetensors", "v2.0.1"]
    (tmp_path / "日本").mkdir()
    (tmp_path / "styles").mkdir()
    for seed, name in enumerate(names):
        save_adapter(random_adapter(unet, seed=seed), tmp_path / f"{name}.safetensors")
    library = AdapterLibrary(tmp_path)
    assert library.names() == sorted(names)
    for name in names:
        path = tmp_path / f"{name}.safetensors"
        assert library.path_for(name) == path, name  # never a neighbour: film-v1.5 is not film-v1
        assert library.path_for(f"{name}.safetensors") == path, name
        assert library.header(name).path == str(path)
    # "film.safetensors" is the listing name of film.safetensors.safetensors; with the suffix spelled out a name
    # means the file of that name.
    assert library.path_for("film.safetensors").name == "film.safetensors.safetensors"


def test_unicode_forms_resolve_when_unambiguous(tmp_path, unet):
    nfd = unicodedata.normalize("NFD", "café")
    save_adapter(random_adapter(unet), tmp_path / f"{nfd}.safetensors")  # as macOS stores names
    library = AdapterLibrary(tmp_path)
    assert library.path_for("café").name == f"{nfd}.safetensors"
    nfc = unicodedata.normalize("NFC", "café")
    save_adapter(random_adapter(unet), tmp_path / f"{nfc}.safetensors")
    assert library.path_for(nfc).name == f"{nfc}.safetensors" and library.path_for(nfd).name == f"{nfd}.safetensors"


def test_names_match_exactly(tmp_path, unet):
    save_adapter(random_adapter(unet), tmp_path / "Film.safetensors")
    library = AdapterLibrary(tmp_path)
    for wrong in ("film", "FILM", "Film.SAFETENSORS", "Fil", "Film.", " Film"):
        with pytest.raises(LookupError):
            library.path_for(wrong)


@pytest.mark.parametrize(
    "name",
    ["../x", "styles/../film", "./film", "/etc/passwd", "//server/share", "styles//film", "a\nb", "a\x00b", "x" * 2000],
)
def test_names_outside_the_folder_are_refused(tmp_path, unet, name):
    save_adapter(random_adapter(unet), tmp_path / "film.safetensors")
    with pytest.raises(LookupError, match="not a usable VMix adapter name"):
        AdapterLibrary(tmp_path / "sub").path_for(name)


def test_a_folder_is_not_an_adapter(tmp_path, unet):
    (tmp_path / "pack.safetensors").mkdir()
    with pytest.raises(LookupError, match="no VMix adapter named 'pack'"):
        AdapterLibrary(tmp_path).path_for("pack")
