"""Atomic, durable writes: a file or folder appears complete under its final name, or not at all.

Everything is written under a temporary name in the same folder, flushed to disk (fsync), then renamed over
the final name; the folder's entry is flushed too, so a power cut leaves the old version or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """Flush a file, or every file under a folder, and the folder entries themselves, to disk."""
    path = Path(path)
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync(child, os.O_RDONLY)
        for folder in [path, *(child for child in path.rglob("*") if child.is_dir())]:
            _fsync_folder(folder)
    else:
        _fsync(path, os.O_RDONLY)


def _fsync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems do not sync folders; the data itself is synced
        _fsync(folder, os.O_RDONLY)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path`` to write a file (or a folder) at; when the block succeeds it is
    flushed and renamed to ``path`` (replacing what was there), otherwise removed. A temporary left by a killed
    run is removed by the next write of the same ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    _remove(temporary)
    try:
        yield temporary
        fsync_path(temporary)
        if temporary.is_dir() and path.is_dir():
            _swap_folder(temporary, path)
        else:
            os.replace(temporary, path)
        _fsync_folder(path.parent)
    finally:
        _remove(temporary)


def _swap_folder(new: Path, path: Path) -> None:
    """Put folder ``new`` at ``path``: the old folder is renamed aside first (a folder cannot be replaced in one
    rename), then removed once the new one is in place."""
    old = path.with_name(f".{path.name}.old")
    _remove(old)
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and durably."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, *, max_length: int = 120) -> str:
    """A file name for ``text`` (a slide id, a sentence) that stays inside its folder: characters other than
    letters, digits, ``.``, ``_`` and ``-`` become ``_``, no leading dot; names that had to change or be cut get
    a short hash of the original, so two different ids never share a file."""
    name = _UNSAFE.sub("_", str(text)).lstrip(".")[:max_length] or "_"
    if name != text:
        name = f"{name[: max_length - 9]}-{hashlib.sha1(str(text).encode()).hexdigest()[:8]}"
    return name


def names_a_local_path(text: str) -> bool:
    """Whether ``text`` can only be a local path, not a Hub id (``org/name``): a missing one is a mistyped path."""
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text
