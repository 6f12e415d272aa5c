"""Crash-safe writes and careful reads of the files a run leaves behind.

Writes go to a temporary file beside the target, are ``fsync``\\ ed, then renamed over it atomically,
and the folder is fsynced after the rename: a reader (or a run resumed after a crash or a power cut)
sees either the old file or the complete new one, never half a checkpoint, result table or JSON
record.

Reads of checkpoints and JSON records (:func:`load_checkpoint`, :func:`read_json`) raise
:class:`CheckpointError` naming the file, what is wrong with it and what to do (delete it so that its
run restarts, or restore it). Checkpoints are always loaded with ``weights_only=True``: a file that
needs arbitrary unpickling is refused, never loaded.

:func:`check_writable` is how commands refuse an unusable output path *before* they train.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Optional

__all__ = ["save_text_atomic", "save_atomic", "CheckpointError", "load_checkpoint", "read_json",
           "check_writable"]


class CheckpointError(ValueError):
    """A checkpoint or result file exists but cannot be used (damaged, foreign or of another run)."""


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, mode: str, write: Callable[[IO], Any], sync_dir: bool) -> None:
    """Write through ``write(file)`` to a fsynced temporary file, rename it over ``path``; ``sync_dir``:
    fsync the folder after the rename too. The temporary file never outlives a failure."""
    tmp = _temp_path(path)
    try:
        with open(tmp, mode, **({"newline": ""} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if sync_dir:
        _fsync_dir(path.parent)


def save_text_atomic(path: str | os.PathLike, text: str, sync_dir: bool = False) -> None:
    """Write ``text`` to ``path`` atomically (``sync_dir``: fsync the folder after the rename too)."""
    _write_atomic(Path(path), "w", lambda f: f.write(text), sync_dir)


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically and durably (file and folder fsynced)."""
    import torch

    _write_atomic(Path(path), "wb", lambda f: torch.save(obj, f), sync_dir=True)


# ----------------------------------------------------------------------------- reading back

def _advice(path: Path, restart: Optional[str]) -> str:
    what = restart or "the run that wrote it"
    return (f"Delete {path} to restart {what} from scratch, or restore the file from a backup "
            f"(capslib writes it atomically, so damage comes from outside: a copy cut short, a full disk, an edit).")


def _torch_reason(err: BaseException, head: bytes) -> str:
    """What is wrong with a file torch could not load, in one line, without torch's advice to unpickle it."""
    import pickle

    text = str(err).strip()
    if not head.startswith(b"PK\x03\x04"):
        return f"it is not a torch checkpoint (it starts with {head[:8]!r}, not a zip archive): damaged or foreign"
    if "central directory" in text or "failed reading" in text or isinstance(err, EOFError):
        return "it is cut short (its zip archive is incomplete)"
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in text.lower():
        return ("it holds Python objects other than tensors and plain containers, which capslib never writes "
                "and will not unpickle")
    if isinstance(err, OSError) and err.errno == 22:
        return "torch could not read it as a checkpoint archive"
    line = text.splitlines()[0] if text else type(err).__name__
    return f"torch could not read it ({type(err).__name__}: {line[:160]})"


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *, keys: Iterable[str] = (),
                    restart: Optional[str] = None) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and say what to do.

    ``keys``: entries the loaded dict must have (else the file is not the checkpoint expected).
    ``restart``: what deleting the file restarts, for the message (e.g. ``"that sweep point"``).

    Raises:
        CheckpointError: missing, empty, damaged or foreign file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing. {_advice(path.parent, restart)}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes). {_advice(path, restart)}")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, OSError, KeyError, ...
        raise CheckpointError(f"checkpoint {path} is unreadable: {_torch_reason(err, head)}. "
                              f"{_advice(path, restart)}") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not the capslib checkpoint expected here (missing "
                              f"{', '.join(missing)}). {_advice(path, restart)}")
    return state


def read_json(path: str | os.PathLike, *, restart: Optional[str] = None, what: str = "file") -> Any:
    """``json.loads`` of a file, with errors that name the file, the place and what to do."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} is missing. {_advice(path.parent, restart)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{what} {path} is unreadable ({type(err).__name__}: {err}). "
                              f"{_advice(path, restart)}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        cut = " (it ends early: cut short?)" if err.pos >= len(text.rstrip()) else ""
        raise CheckpointError(f"{what} {path} is not valid JSON: {err.msg} at line {err.lineno}, column "
                              f"{err.colno}{cut}. {_advice(path, restart)}") from None


def check_writable(path: str | os.PathLike, what: str, *, folder: bool = False) -> Path:
    """Refuse now, not after hours of training, an output path that cannot be written.

    Creates the missing parent folders (or the folder itself with ``folder=True``) and writes and
    removes a probe file there. Returns the path.

    Raises:
        ValueError: naming ``what`` (e.g. ``"--out"``), the path and the reason.
    """
    path = Path(path).expanduser()
    target_dir = path if folder else path.parent
    if not folder and path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file path")
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file; give a folder")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        probe = target_dir / f".capslib-write-probe-{os.getpid()}"
        with open(probe, "w") as f:
            f.write("ok")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(f"{what} {path} cannot be written ({reason}); nothing was run. Choose another "
                         f"path or fix the folder's permissions.") from None
    return path
