"""The adapters in the VMix folder: listing, name resolution, loading with a cache, and V_a ready for a generation.

An adapter's name is its path below the folder without the ``.safetensors`` suffix, with ``/`` between folders
(``styles/film-v1.5`` for ``<folder>/styles/film-v1.5.safetensors``). The listing shows exactly the names that
``path_for`` accepts, and a name resolves to exactly one file: components must match the folder's entries exactly
(case included, also on file systems that ignore case); only a name whose Unicode form differs (NFC against NFD, as
macOS writes names) is matched through its normal form, and only when that match is unique.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .adapter import VMixAdapter, shorten, text_problem
from .weights import (
    AdapterFileError,
    AdapterHeader,
    _load_adapter_with_header,
    display_name,
    read_header,
)

SUFFIX = ".safetensors"
# Bounds on a walk of the folder, so a link loop or a huge tree cannot stall the UI.
MAX_FOLDER_DEPTH = 16
MAX_LISTED_FILES = 10_000
MAX_NAME_CHARS = 1024


@dataclass(frozen=True)
class AdapterEntry:
    """One ``.safetensors`` file of the folder: its name and either its header or the reason it cannot be used."""

    name: str
    path: Path
    header: AdapterHeader | None = None
    error: AdapterFileError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def family_problem(self, model_family: str | None) -> str | None:
        """``"made for SDXL, but the loaded model is SD 1.x"``, or None (also for a file that cannot be read)."""
        return self.header.family_problem(model_family) if self.header is not None else None

    def as_json(self, model_family: str | None = None) -> dict[str, Any]:
        """One entry of ``GET /vmix/v1/adapters``: the header's facts, or ``error``; ``family_warning`` when the
        adapter was made for another family than ``model_family``."""
        if self.header is None:
            problem = self.error.problem if self.error is not None else "cannot be read"
            return {"name": self.name, "file": display_name(self.path.name), "error": problem}
        entry = {**self.header.as_json(), "name": self.name}
        warning = self.family_problem(model_family)
        if warning:
            entry["family_warning"] = warning
        return entry


@dataclass(frozen=True)
class AdapterListing:
    """Every adapter file of the folder (good and bad alike) and what kept parts of the folder from being read."""

    folder: str
    entries: tuple[AdapterEntry, ...]
    problems: tuple[str, ...] = ()

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def usable(self) -> list[AdapterEntry]:
        return [e for e in self.entries if e.ok]

    def as_json(self, model_family: str | None = None) -> dict[str, Any]:
        """The body of ``GET /vmix/v1/adapters``."""
        return {
            "folder": display_name(self.folder, 1000),
            "adapters": [e.as_json(model_family) for e in self.entries],
            "problems": list(self.problems),
        }


class AdapterLibrary:
    """The adapters below ``folder``. Loaded adapters and their V_a are cached by file size and mtime, so an edited
    file is read again and an unchanged one costs nothing on the next generation."""

    def __init__(self, folder: str | os.PathLike[str], keep_loaded: int = 2) -> None:
        self.folder = Path(folder)
        self.keep_loaded = keep_loaded
        self._adapters: OrderedDict[tuple[str, int, int, int, int], tuple[AdapterHeader, VMixAdapter]] = OrderedDict()
        self._values: OrderedDict[tuple[object, ...], dict[str, torch.Tensor]] = OrderedDict()

    # -- listing ------------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The name of every adapter file that a name can select, sorted, without reading any file (never raises);
        files whose names cannot be used appear only in ``scan()``, with the request to rename them."""
        return [name for name, _, problem in self._walk([]) if problem is None]

    def scan(self) -> AdapterListing:
        """Every ``.safetensors`` file with its header or the reason it cannot be used; reads only headers and
        never raises, whatever the folder holds (unreadable subfolders and files that vanish mid-listing included)."""
        problems: list[str] = []
        entries = []
        for name, path, name_problem in self._walk(problems):
            if name_problem:
                entries.append(AdapterEntry(name, path, error=AdapterFileError(path, name_problem)))
                continue
            try:
                entries.append(AdapterEntry(name, path, header=read_header(path)))
            except AdapterFileError as exc:
                entries.append(AdapterEntry(name, path, error=exc))
            except Exception as exc:  # a reader bug must still cost one entry, not the whole listing
                problem = f"could not be read ({type(exc).__name__}: {shorten(str(exc), 200)})"
                entries.append(AdapterEntry(name, path, error=AdapterFileError(path, problem)))
        return AdapterListing(str(self.folder), tuple(entries), tuple(problems))

    def headers(self) -> list[AdapterHeader | AdapterFileError]:
        """Every adapter's header, or the error that stops it from loading (for listings that must not fail)."""
        result: list[AdapterHeader | AdapterFileError] = []
        for entry in self.scan().entries:
            result.append(entry.header if entry.header is not None else entry.error)  # type: ignore[arg-type]
        return result

    # -- one adapter --------------------------------------------------------------------------------------------

    def path_for(self, name: str) -> Path:
        """The file a name (as the listing shows it, with or without ``.safetensors``) stands for.

        Raises LookupError when no adapter in the folder has that name, also for names that could never be in it
        (absolute paths, ``..``, control characters).
        """
        if not isinstance(name, str) or not name:
            raise LookupError("no VMix adapter is selected; pick one in the Adapter list")
        problem = name_problem(name)
        if problem:
            raise LookupError(f"{shorten(name)} is not a usable VMix adapter name: it {problem}")
        candidates = [name + SUFFIX]
        if name.endswith(SUFFIX) and len(name) > len(SUFFIX):
            candidates.append(name)
        for candidate in candidates:
            path = self._resolve(candidate.split("/"))
            if path is not None:
                return path
        available = self.names()
        if available:
            hint = f"found: {', '.join(available[:20])}" + (
                f" and {len(available) - 20} more" if len(available) > 20 else ""
            )
        else:
            hint = "the folder holds no .safetensors adapters"
        raise LookupError(f"no VMix adapter named {shorten(name)} in {display_name(str(self.folder), 300)} ({hint})")

    def header(self, name: str) -> AdapterHeader:
        return read_header(self.path_for(name))

    def load(self, name: str) -> VMixAdapter:
        return self._load(self.path_for(name))[1]

    def verify(self, name: str) -> AdapterHeader:
        """Check the whole file, weights included (what choosing an adapter in the UI should do), and return its
        header. The loaded adapter is kept in the cache, so the next generation does not read it again.
        Raises LookupError for a name not in the folder, AdapterFileError for a file that cannot be used."""
        return self._load(self.path_for(name))[0]

    def values(self, name: str, strengths: dict[str, float]) -> dict[str, torch.Tensor]:
        """V_a of every layer in fp32 on the CPU for these strengths, computed once and reused while unchanged."""
        path = self.path_for(name)
        adapter = self._load(path)[1]
        key = (*_file_key(path), tuple(sorted(strengths.items())))
        values = self._values.get(key)
        if values is None:
            with torch.no_grad():
                values = adapter.aesthetic_values(strengths, dtype=torch.float32)
            self._values[key] = values
            while len(self._values) > self.keep_loaded:
                self._values.popitem(last=False)
        self._values.move_to_end(key)
        return values

    def clear(self) -> None:
        self._adapters.clear()
        self._values.clear()

    # -- internals ----------------------------------------------------------------------------------------------

    def _load(self, path: Path) -> tuple[AdapterHeader, VMixAdapter]:
        key = _file_key(path)
        loaded = self._adapters.get(key)
        if loaded is None:
            loaded = _load_adapter_with_header(path)
            self._adapters[key] = loaded
            while len(self._adapters) > self.keep_loaded:
                self._adapters.popitem(last=False)
        self._adapters.move_to_end(key)
        return loaded

    def _resolve(self, parts: list[str]) -> Path | None:
        """``folder/parts…`` with every component matched against the real directory entries (see the module's
        docstring); None when a component is missing or ambiguous, or the last is not a file (or a link)."""
        current = self.folder
        for index, part in enumerate(parts):
            try:
                with os.scandir(current) as it:
                    found = {entry.name: entry for entry in it}
            except OSError:
                return None
            entry = found.get(part)
            if entry is None:
                wanted = unicodedata.normalize("NFC", part)
                matches = [e for n, e in found.items() if unicodedata.normalize("NFC", n) == wanted]
                if len(matches) != 1:
                    return None
                entry = matches[0]
            last = index == len(parts) - 1
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir == last:  # the last part must be a file, every other one a folder
                return None
            current = current / entry.name
        return current

    def _walk(self, problems: list[str]) -> Iterator[tuple[str, Path, str | None]]:
        """(name, path, why the name is unusable or None) for every ``*.safetensors`` below the folder, sorted by
        name; folders that cannot be read are reported in ``problems`` and skipped."""
        found: list[tuple[str, Path, str | None]] = []
        try:
            info = os.stat(self.folder)
        except FileNotFoundError:
            problems.append(f"the folder {display_name(str(self.folder), 300)} does not exist")
            return iter(())
        except (OSError, ValueError) as exc:
            problems.append(f"the folder {display_name(str(self.folder), 300)} cannot be read: {_reason(exc)}")
            return iter(())
        if not stat.S_ISDIR(info.st_mode):
            problems.append(f"{display_name(str(self.folder), 300)} is not a folder")
            return iter(())
        seen = {(info.st_dev, info.st_ino)}
        pending: list[tuple[Path, tuple[str, ...]]] = [(self.folder, ())]
        while pending and len(found) < MAX_LISTED_FILES:
            directory, parts = pending.pop()
            try:
                with os.scandir(directory) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                where = "/".join(parts) or "the folder itself"
                problems.append(f"{display_name(where, 300)} cannot be read: {_reason(exc)}")
                continue
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    try:
                        sub = entry.stat()
                    except OSError:
                        continue
                    if (sub.st_dev, sub.st_ino) in seen:  # a link back up the tree
                        continue
                    if len(parts) + 1 >= MAX_FOLDER_DEPTH:
                        problems.append(f"{display_name('/'.join((*parts, entry.name)), 300)} is nested too deeply")
                        continue
                    seen.add((sub.st_dev, sub.st_ino))
                    pending.append((Path(entry.path), (*parts, entry.name)))
                elif entry.name.endswith(SUFFIX):
                    relative = "/".join((*parts, entry.name))
                    name = relative[: -len(SUFFIX)]
                    reason = name_problem(name) if name and not name.endswith("/") else "is empty"
                    problem = f"has a name that {reason}; rename the file" if reason else None
                    # A file whose name cannot be used is listed by its escaped file path, for the user to rename.
                    shown = display_name(relative, MAX_NAME_CHARS) if problem else name
                    found.append((shown, Path(entry.path), problem))
                    if len(found) >= MAX_LISTED_FILES:
                        problems.append(f"the folder holds more than {MAX_LISTED_FILES} files; the listing stops there")
                        break
        return iter(sorted(found, key=lambda item: item[0]))


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an adapter in the folder (as a file's name or as typed in a request), or None."""
    if len(name) > MAX_NAME_CHARS:
        return f"is longer than {MAX_NAME_CHARS} characters"
    if name != name.strip():
        return "starts or ends with a space (the web UI trims names)"
    problem = text_problem(name)
    if problem:
        return "is not valid UTF-8" if "surrogate" in problem else problem
    if name.startswith("/") or (os.name == "nt" and (":" in name or "\\" in name)):
        return "is an absolute path; names are paths below the VMix folder, with '/' between folders"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "has an empty, '.' or '..' part; names are paths below the VMix folder"
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return shorten(str(exc), 200)


def _file_key(path: Path) -> tuple[str, int, int, int, int]:
    try:
        info = path.stat()
        # The inode and ctime too: a file replaced within the file system's timestamp tick keeps size and mtime.
        return (str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns)
    except (OSError, RuntimeError) as exc:  # vanished, unreadable, or a link loop (resolve's RuntimeError)
        if isinstance(exc, FileNotFoundError) and path.is_symlink():
            raise AdapterFileError(path, "is a link to a file that does not exist") from None
        if isinstance(exc, FileNotFoundError):
            raise AdapterFileError(path, f"not found at {display_name(str(path), 300)}") from None
        raise AdapterFileError(path, f"cannot be read: {_reason(exc)}") from None
