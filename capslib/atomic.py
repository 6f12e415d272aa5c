"""Crash-safe writes: a temporary file beside the target, fsync, then an atomic rename over it.

A reader (or a run resumed after a crash) sees either the old file or the complete new one, never
half a checkpoint, result table or JSON record. The results store also fsyncs the folder, so that
the rename itself survives a power cut.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["save_text_atomic", "save_atomic"]


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_text_atomic(path: str | os.PathLike, text: str, sync_dir: bool = False) -> None:
    """Write ``text`` to ``path`` atomically (``sync_dir``: fsync the folder after the rename too)."""
    path = Path(path)
    tmp = _temp_path(path)
    with open(tmp, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_dir:
        _fsync_dir(path.parent)


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically: a crash never leaves half a checkpoint."""
    import torch

    path = Path(path)
    tmp = _temp_path(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
