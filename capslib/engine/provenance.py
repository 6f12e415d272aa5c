"""Where a number came from: library versions, device, git state."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from .cache_dirs import user_cache_dir

#: The release (pyproject.toml's version); :func:`capslib_version` adds the source fingerprint.
__version__ = "0.1.0"

__all__ = ["capslib_version", "git_state", "device_info", "numerics_info", "provenance", "resolve_device",
           "user_cache_dir"]


#: The packages whose code a stored number depends on (the routing kernel's C++ source included);
#: the book's presentation code and the CLI are left out, so editing a chapter never invalidates results.
FINGERPRINTED = ("engine", "pruning", "experiments")


@lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """8 hex digits of a hash over the source files of :data:`FINGERPRINTED` (``*.py``, ``*.cpp``)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for pkg in FINGERPRINTED:
        for path in sorted(p for p in (root / pkg).rglob("*") if p.suffix in (".py", ".cpp")):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:8]


def capslib_version() -> str:
    """``<release>+<source fingerprint>``, e.g. ``0.1.0+3f2a9c1e``.

    The fingerprint makes every cache key (results rows, book runs) change
    whenever any library source changes, so a changed library never serves a
    stale number, even between releases.
    """
    return f"{__version__}+{source_fingerprint()}"


@lru_cache(maxsize=1)
def git_state() -> tuple[str, bool]:
    """(sha, dirty) of the repository holding this package, or ("unknown", False)."""
    here = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return sha, dirty
    except Exception:
        return "unknown", False


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA when present, else CPU. Asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but torch sees no CUDA GPU")
    return dev


def device_info(device: Optional[torch.device] = None) -> dict[str, str]:
    device = device or resolve_device("auto")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return {"device": device.type, "device_name": name}


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numerics_info() -> dict[str, str]:
    """The instruction sets a CPU number was computed with, lower case.

    The same code rounds differently on different CPUs, and one epoch of training turns the last digit
    into a visible one (DESIGN.md §3d), so every row names them: ``cpu_isa``, the kernels PyTorch's
    ATen dispatches to (``avx512``, ``avx2``, ``default``; lowered by ``ATEN_CPU_CAPABILITY``);
    ``onednn_isa``, the cap on oneDNN's convolutions (``DNNL_MAX_CPU_ISA``; ``native`` when unset);
    ``kernel_march``, the fused routing kernel's build target (``native=znver3+avx512``, ``x86-64-v3``, ``off``).
    """
    from . import fused_routing

    try:
        cpu_isa = torch.backends.cpu.get_cpu_capability().lower()
    except Exception:  # an old torch without the query
        cpu_isa = "?"
    return {
        "cpu_isa": cpu_isa,
        "onednn_isa": (os.environ.get("DNNL_MAX_CPU_ISA") or os.environ.get("ONEDNN_MAX_CPU_ISA")
                       or "native").lower(),
        "kernel_march": fused_routing.build_target(),
    }


def provenance(device: Optional[torch.device] = None) -> dict[str, object]:
    """Versions, device, the CPU's instruction sets and git state, for every result row and JSON result."""
    sha, dirty = git_state()
    return {
        "capslib_version": capslib_version(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "none",
        **device_info(device),
        **numerics_info(),
        "git_sha": sha,
        "git_dirty": dirty,
        "python": platform.python_version(),
    }
