"""Where capslib keeps what it computes once per machine: data, trained models, compiled kernels."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["user_cache_dir"]


def user_cache_dir(sub: str, env_var: str) -> Path:
    """Where capslib keeps ``sub`` (data, models, kernels): ``$<env_var>`` if set, else
    ``$XDG_CACHE_HOME/capslib/<sub>`` (``~/.cache/capslib/<sub>`` without XDG)."""
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "capslib" / sub
