"""Atomic file writes: every artefact appears complete or not at all.

Writers produce a temporary file in the destination directory and ``os.replace`` it into place, so
an interrupted run (Ctrl-C, a crash, a full disk) never leaves a half-written model, bitstream or
report behind that a later step could mistake for a good one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success rename it onto ``dest``.

    The temporary file has ``dest``'s own name, inside a hidden temporary directory beside it:
    libraries that pick a format from the extension (torch.onnx, matplotlib) behave as for the final
    name, and those that record the file name inside the file (torch.export.save names its archive
    folder after it) write the same bytes on every run - a random temporary name would leak into them.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    tmp = work / dest.name
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # the permissions a plain write would give
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(dest: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``dest`` and return the path."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text(dest: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``dest`` and return the path."""
    return write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (numpy/torch scalars and paths are converted)."""
    return write_text(dest, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


@contextlib.contextmanager
def scratch_directory(beside: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary directory near the file ``beside``, removed afterwards whatever happens.

    A single-stage command runs its stage into it and moves the stage's file onto ``beside`` with
    :func:`move_into_place`; every other file the stage wrote disappears with the directory. It is
    made in the nearest existing directory on the way to ``beside`` (the same filesystem, so the
    final move is atomic), so a run that fails creates no directory either.
    """
    beside = Path(beside).absolute()
    near = beside.parent
    while not near.is_dir() and near != near.parent:
        near = near.parent
    work = Path(tempfile.mkdtemp(prefix=f".{beside.name}.partial-", dir=near))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def move_into_place(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Atomically move the finished file ``src`` onto ``dest``, creating ``dest``'s directory."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
    return dest


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a fresh hidden work directory that replaces ``dest`` only if the block succeeds.

    A failed or interrupted run removes its work directory and leaves an existing ``dest``
    untouched, so ``--force`` never destroys old results for a run that did not finish.
    Raises :class:`OutputExistsError` up front when ``dest`` holds files and ``force`` is false.
    """
    from edgeprune.errors import OutputExistsError

    dest = Path(dest)
    if dest.is_symlink():  # dangling or not: replacing it would swap the link, not fill its target
        raise OutputExistsError(f"{dest} is a symbolic link", "give the real directory path as -o")
    resolved, here = dest.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents or resolved.parent == resolved:
        raise OutputExistsError(
            f"{dest} is the current directory or one of its parents", "give a new sub-directory, e.g. -o out"
        )
    if dest.exists() and not dest.is_dir():
        raise OutputExistsError(f"{dest} exists and is not a directory", "choose another -o")
    if dest.exists() and any(dest.iterdir()) and not force:
        raise OutputExistsError(f"{dest} already contains results", "pass --force to overwrite, or choose another -o")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield work
        work.chmod(0o777 & ~_umask())
        if dest.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, trash / "old")
            os.replace(work, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(work, dest)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
