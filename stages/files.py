"""Atomic file writes: a reader sees the old file, no file, or the whole new file, never a partial one.

Every write goes to a temp name in the destination folder (same filesystem, so the final rename is atomic),
is fsynced, renamed into place, and the folder is fsynced so the rename survives a crash. A writer that fails
or is interrupted removes its temp file. Temp names start with ``.`` and carry the pid, so they are hidden
from clip discovery and tell which process left them.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def temp_name(path: Path) -> Path:
    """A fresh hidden temp path beside ``path`` that keeps its suffix (writers that pick a format by the
    file ending, such as Blender or ffmpeg, still see it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path to write ``path`` through; on success it is fsynced and renamed into place.

    The writer creates the temp file itself (so it gets the usual permissions); on any exception the temp file
    is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Write ``path`` through ``writer(tmp_path)`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """``np.savez`` into memory (uncompressed: artifacts are read far more often than written)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_npz_json(
    folder: Path, stem: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> None:
    """A published result: ``<stem>.npz`` (arrays) beside ``<stem>.json`` (its summary), each atomic."""
    atomic_write_bytes(folder / f"{stem}.npz", npz_bytes(arrays))
    atomic_write_json(folder / f"{stem}.json", meta)


def remove_files(folder: Path, *names: str) -> None:
    """Remove published files that this run did not produce (no stale file under a final name)."""
    for name in names:
        (folder / name).unlink(missing_ok=True)


@contextmanager
def file_lock(path: str | Path, on_wait: Callable[[], Any] | None = None):
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the ``with`` block.

    ``flock`` locks are released by the kernel when their holder dies, so a killed worker never leaves a
    clip locked; on NFS v4 and other shared filesystems they are visible to every machine that mounts it.
    ``on_wait()`` is called once if another holder makes us wait.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
