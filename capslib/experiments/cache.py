"""Results reuse for the book: read a finished run from the store, train only what is missing.

``cached_fit(cfg)`` looks up the run's ``run_key`` (config hash + stage +
capslib version) in ``results/<experiment>/<profile>.csv``. A stored row is
returned without training; a chapter that needs the trained weights too finds
them in the model cache (``$CAPSLIB_CACHE`` or ``~/.cache/capslib/models``),
keyed the same way. Because the key holds the capslib version, a changed
library never serves a stale number.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from ..engine.atomic import save_atomic
from ..engine.config import RunConfig
from ..engine.model import CapsNet
from ..engine.cache_dirs import user_cache_dir
from ..engine.provenance import resolve_device
from ..engine.train import fit
from .results import ResultsStore, parse_row, run_key, run_row

__all__ = ["model_cache_dir", "cached_fit"]


def model_cache_dir() -> Path:
    """Trained weights of the book's runs: ``$CAPSLIB_CACHE`` or ``~/.cache/capslib/models``."""
    return user_cache_dir("models", "CAPSLIB_CACHE")


def cached_fit(cfg: RunConfig, experiment: str = "book", need_model: bool = False,
               results_root: Optional[str] = None, progress: bool = False,
               data=None) -> tuple[dict[str, Any], Optional[CapsNet]]:
    """The stored result row of ``cfg`` (training it first if missing) and, if asked, the trained model,
    in eval mode on the config's device (``cfg.train.device``) whether it was trained now or loaded."""
    store = ResultsStore.for_experiment(experiment, cfg.profile, results_root)
    key = run_key(cfg, "train")
    weights = model_cache_dir() / f"{key}.pt"
    row = store.get(key)
    if row is not None and (not need_model or weights.exists()):
        model = None
        if need_model:
            device = resolve_device(cfg.train.device)
            model = CapsNet(cfg.model).to(device=device, dtype=cfg.train.torch_dtype)
            model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
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
