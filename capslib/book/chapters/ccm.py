"""The CCM chapter (paper §3.3): channel correlations of the backbone's feature maps
(:func:`layer_correlations`, :func:`correlation_table`) and how the CCM loss changes them
(:func:`alpha_grid`, :func:`switch_table`, :func:`max_abs_delta`, :func:`max_weight_delta`).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import pandas as pd
import torch
from torch import Tensor

from ..runner import _device, _pct, book_threads


# ======================================================================================
# Channel correlations (CCM)
# ======================================================================================
@book_threads
@torch.no_grad()
def layer_correlations(model, x: Tensor) -> dict[str, Tensor]:
    """Channel correlation matrix (C_l, C_l) of every conv layer CCM reads, on the batch ``x``.

    Uses :func:`capslib.engine.losses.channel_correlation` on the maps of
    :attr:`CapsNetOutput.feature_maps` (three backbone convs, post-ReLU, and
    the PrimaryCaps conv before squash): exactly what the CCM loss sees.
    """
    from ...engine.losses import channel_correlation

    model.eval()
    maps = model(x.to(_device(model))).feature_maps
    return {name: channel_correlation(f).cpu() for name, f in maps.items()}


def correlation_table(corrs: Mapping[Any, Mapping[str, Tensor]], name: str = "run",
                      rows: Optional[Mapping[Any, dict]] = None, precise: bool = False) -> pd.DataFrame:
    """CCM value (eq. 7: mean |corr| over all channel pairs) per layer, one row per run.

    With ``rows`` (the runs' store rows) the test accuracy (%) is added.
    Rounded (CCM to 2 decimals, accuracy to whole percent) unless ``precise``.
    """
    out = []
    for key, layers in corrs.items():
        rec: dict[str, Any] = {name: key}
        for layer, m in layers.items():
            value = float(m.abs().mean())
            rec[f"CCM {layer}"] = value if precise else round(value, 2)
        if rows is not None:
            rec["test acc (%)"] = _pct(rows[key]["test_acc"], precise)
        out.append(rec)
    return pd.DataFrame(out).set_index(name)


def max_abs_delta(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> dict[str, float]:
    """max |a − b| per layer of two ``{layer: matrix}`` dicts."""
    return {k: float((a[k] - b[k]).abs().max()) for k in a}


def max_weight_delta(m1, m2) -> float:
    """Largest absolute difference over all parameters and buffers of two models of the same shape."""
    s1, s2 = m1.state_dict(), m2.state_dict()
    if s1.keys() != s2.keys():
        raise ValueError("models have different parameters")
    return max(float((s1[k].cpu().float() - s2[k].cpu().float()).abs().max()) if s1[k].numel() else 0.0
               for k in s1)


def alpha_grid(alpha: float, alphas: Iterable[float]) -> list[float]:
    """The α values a CCM chapter trains: 0 (the base model), ``alpha`` and ``alphas``, sorted."""
    return sorted({0.0, float(alpha), *(float(a) for a in alphas)})


def switch_table(base: tuple, others: Mapping[str, tuple]) -> pd.DataFrame:
    """How far runs moved from a base run: max |Δcorr| per conv layer, max |Δweight|, test accuracy; one column per run.

    ``base`` and each value of ``others`` are ``(row, model, corrs)`` (a store
    row, the trained model, :func:`layer_correlations`). Differences are shown
    to 2 significant digits; an exact 0 means bit-identical.
    """
    b_row, b_model, b_corrs = base
    table: dict[str, dict[str, Any]] = {}
    for name, (row, model, corrs) in others.items():
        rec: dict[str, Any] = {}
        for layer, d in max_abs_delta(b_corrs, corrs).items():
            rec[f"max |Δcorr| {layer}"] = float(f"{d:.2g}")
        rec["max |Δweight|"] = float(f"{max_weight_delta(b_model, model):.2g}")
        rec["test acc (%)"] = _pct(row["test_acc"], False)
        rec["α = 0 test acc (%)"] = _pct(b_row["test_acc"], False)
        table[name] = rec
    # one column per run; object columns keep the accuracies as ints beside the float differences
    return pd.DataFrame({name: pd.Series(rec, dtype=object) for name, rec in table.items()})
