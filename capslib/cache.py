"""Results reuse for the book: read a finished run from the store, train only what is missing.

``cached_fit(cfg)`` looks up the run's ``run_key`` (config hash + stage +
capslib version) in ``results/<experiment>/<profile>.csv``. A stored row is
returned without training; a chapter that needs the trained weights too finds
them in the model cache (``$CAPSLIB_CACHE`` or ``~/.cache/capslib/models``),
keyed the same way. Because the key holds the capslib version, a changed
library never serves a stale number.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from .config import RunConfig
from .model import CapsNet
from .results import ResultsStore, run_key, run_row
from .train import fit, save_atomic

__all__ = ["model_cache_dir", "cached_fit", "parse_row"]

_JSON_COLUMNS = ("dead_000", "dead_002", "history")


def model_cache_dir() -> Path:
    env = os.environ.get("CAPSLIB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "capslib" / "models"


def parse_row(row: dict[str, Any]) -> dict[str, Any]:
    """A stored CSV row with numbers as numbers and the JSON columns decoded."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in _JSON_COLUMNS and isinstance(v, str) and v:
            out[k] = json.loads(v)
            continue
        if isinstance(v, str):
            for conv in (int, float):
                try:
                    v = conv(v)
                    break
                except ValueError:
                    pass
            if v in ("True", "False"):
                v = v == "True"
        out[k] = v
    return out


def cached_fit(cfg: RunConfig, experiment: str = "book", need_model: bool = False,
               results_root: Optional[str] = None, progress: bool = False,
               data=None) -> tuple[dict[str, Any], Optional[CapsNet]]:
    """The stored result row of ``cfg`` (training it first if missing) and, if asked, the trained model."""
    store = ResultsStore.for_experiment(experiment, cfg.profile, results_root)
    key = run_key(cfg, "train")
    weights = model_cache_dir() / f"{key}.pt"
    row = store.get(key)
    if row is not None and (not need_model or weights.exists()):
        model = None
        if need_model:
            model = CapsNet(cfg.model)
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            model.eval()
        return parse_row(row), model
    result, model = fit(cfg, data=data, progress=progress)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(model.state_dict(), weights)
    new_row = run_row(cfg, result, experiment=experiment, stage="train")
    if row is None:
        store.append(new_row)
    model.eval()
    return parse_row(store.get(key) or new_row), (model if need_model else None)
