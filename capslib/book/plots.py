"""Figures of the companion book, and the provenance footer under every figure and table.

Every function returns a :class:`matplotlib.figure.Figure` built without
pyplot, so a notebook shows it only when asked (``notebook.show_figure``) and
the same figure can become a slider panel (:func:`capslib.book.widgets.slider_panels`).

* :func:`provenance_footer` - dataset, profile, seed, device, capslib version
  and config hash of the runs behind a figure or table, from result rows of the
  store (``cached_fit`` returns them) or from a :class:`RunConfig`.
* :func:`squash_curve` - eq. (4) as printed and as computed.
* :func:`activation_heatmap` / :func:`activation_heatmaps` - capsule
  activations per layer × type, like the paper's Fig. 2.
* :func:`routing_evolution` - coupling coefficients and agreement over the
  routing iterations.
* :func:`metric_panels` - accuracy / dead capsules / CCM against a parameter.
* :func:`correlation_heatmaps` / :func:`correlation_grid` - channel
  correlation matrices (CCM, eq. 7).
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = [
    "DATASET_NAMES",
    "PROFILE_NOTES",
    "provenance_info",
    "provenance_text",
    "provenance_footer",
    "run_label",
    "squash_curve",
    "activation_heatmap",
    "activation_heatmaps",
    "routing_evolution",
    "metric_panels",
    "accuracy_dead_panels",
    "ccm_panels",
    "correlation_heatmaps",
    "correlation_grid",
    "BOOK_DPI",
    "PAGE_WIDTH_IN",
    "FONT",
    "BOOK_RC",
    "book_figsize",
    "integer_ticks",
    "legend_outside",
    "legend_below",
    "wrap_title",
    "level_palette",
]

DATASET_NAMES = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10"}

#: What a profile's numbers are (and are not).
PROFILE_NOTES = {
    "smoke": "smoke-scale check, not a reproduction",
    "fmnist": "paper-scale model on Fashion-MNIST; the paper used CIFAR-10",
    "paper": "the paper's settings on CIFAR-10",
}

DEAD = 0.01  # dead-capsule threshold of both papers

# ======================================================================================
# The book's figure defaults: one place for sizes, fonts, integer axes and legends
# ======================================================================================
#: Resolution of every figure the book shows (``show_figure``, slider panels).
BOOK_DPI = 100
#: Widest figure, in inches: at :data:`BOOK_DPI` it fits the book's text column (about
#: 800 px), so the page shows it at its natural size and never scales its text down.
PAGE_WIDTH_IN = 8.0
#: Font sizes in points. At 100 dpi and natural size, 9 pt is about 12.5 px on the page.
FONT = {"small": 9.0, "base": 10.0, "title": 10.5, "suptitle": 11.0}
#: matplotlib settings every figure of the book is drawn with (applied by :func:`_sns`).
BOOK_RC = {
    "font.size": FONT["base"], "axes.titlesize": FONT["title"], "axes.labelsize": FONT["base"],
    "xtick.labelsize": FONT["small"], "ytick.labelsize": FONT["small"], "legend.fontsize": FONT["small"],
    "legend.title_fontsize": FONT["small"], "figure.titlesize": FONT["suptitle"],
    "figure.dpi": BOOK_DPI, "savefig.dpi": BOOK_DPI,
}


def _sns():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", rc=BOOK_RC)
    return sns


def book_figsize(width: float, height: float) -> tuple[float, float]:
    """``(width, height)`` in inches, the width capped at :data:`PAGE_WIDTH_IN` (height kept)."""
    return (min(float(width), PAGE_WIDTH_IN), float(height))


def integer_ticks(ax, values: Sequence[Any], axis: str = "x", max_ticks: int = 12) -> None:
    """Ticks of a discrete axis (I, r, epoch, ConvCaps layers): exactly the integer ``values``
    when there are few of them, else whole numbers only; never 0.25, 0.5, ...

    Non-integer values (e.g. PR 0.125) get their own ticks when there are few of them.
    """
    from matplotlib.ticker import MaxNLocator

    vals = sorted({float(v) for v in values if v is not None and not pd.isna(v)})
    target = ax.xaxis if axis == "x" else ax.yaxis
    if vals and len(vals) <= max_ticks:
        setter = ax.set_xticks if axis == "x" else ax.set_yticks
        setter(vals)
        labels = [f"{int(v)}" if float(v).is_integer() else f"{v:g}" for v in vals]
        (ax.set_xticklabels if axis == "x" else ax.set_yticklabels)(labels)
    elif all(float(v).is_integer() for v in vals):
        target.set_major_locator(MaxNLocator(integer=True))


def legend_outside(ax, title: Optional[str] = None, **kwargs: Any) -> None:
    """The axes' legend to its right, outside the data, so that it never covers a line or bar.

    ``layout="constrained"`` makes room for it. Does nothing when the axes have nothing to label.
    """
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if not handles:
        return
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              frameon=False, title=title, **kwargs)


def legend_below(ax, title: Optional[str] = None, ncol: Optional[int] = None, **kwargs: Any) -> None:
    """The axes' legend under its x axis label, in one row where it fits (see :func:`legend_outside`)."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if not handles:
        return
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.22), borderaxespad=0.0,
              frameon=False, title=title, ncol=ncol or min(len(labels), 2), **kwargs)


def wrap_title(text: str, width_in: float, fontsize: float = FONT["title"]) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` points
    (an average glyph is about 0.55 em wide), so a long panel title is never cut off."""
    import textwrap

    chars = max(12, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(text, chars, break_on_hyphens=False)) or text


def level_palette(levels: Sequence[Any], palette: str = "deep") -> dict[Any, Any]:
    """One colour per level, in the given order: pass the same levels to every panel of a figure
    (and the same ``hue_order``) so that a level has the same colour in each panel."""
    sns = _sns()
    levels = list(dict.fromkeys(levels))
    return dict(zip(levels, sns.color_palette(palette, max(len(levels), 1))))


# ======================================================================================
# Provenance
# ======================================================================================
def _is_row(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "config_hash" in obj


def _sources(source: Any) -> list[Any]:
    """Flatten a row, a RunConfig, or a list / dict of them into a list."""
    from ..engine.config import RunConfig

    if _is_row(source) or isinstance(source, RunConfig):
        return [source]
    if isinstance(source, Mapping):
        source = list(source.values())
    out: list[Any] = []
    for item in source:
        out += _sources(item)
    return out


def _info_one(src: Any) -> dict[str, str]:
    from ..engine.config import RunConfig
    from ..engine.provenance import capslib_version, device_info, numerics_info, resolve_device

    if isinstance(src, RunConfig):
        try:
            dev = device_info(resolve_device(src.train.device))
        except RuntimeError:  # asks for CUDA on a machine without one
            dev = {"device": src.train.device, "device_name": "not available here"}
        return {"config_hash": src.config_hash(), "profile": src.profile, "dataset": src.data.dataset,
                "seed": str(src.train.seed), **dev, "capslib_version": capslib_version(),
                "numerics": _numerics_text(numerics_info()) if dev["device"] == "cpu" else ""}
    return {
        "config_hash": str(src.get("config_hash", "?")),
        "profile": str(src.get("profile", "?")),
        "dataset": str(src.get("data.dataset", src.get("dataset", "?"))),
        "seed": str(src.get("seed", src.get("train.seed", "?"))),
        "device": str(src.get("device", "?")),
        "device_name": str(src.get("device_name", "") or ""),
        "capslib_version": str(src.get("capslib_version", "?")),
        "numerics": _numerics_text(src) if str(src.get("device", "")) == "cpu" else "",
    }


def _numerics_text(src: Any) -> str:
    """``avx512 · oneDNN native · kernel native=znver3+avx512``: the instruction sets a CPU row was
    computed with (:func:`capslib.engine.provenance.numerics_info`), or ``not recorded`` for older rows."""
    isa = src.get("cpu_isa")
    if not isa or str(isa) == "nan":
        return "not recorded"
    return f"ATen {isa}, oneDNN {src.get('onednn_isa', '?')}, kernel {src.get('kernel_march', '?')}"


def provenance_info(source: Any) -> dict[str, list[str]]:
    """Distinct provenance values (in order) over the runs of ``source``.

    ``source``: a result row (a dict with ``config_hash``, ``profile``,
    ``data.dataset``, ``seed``, ``device``, ``device_name``,
    ``capslib_version``), a :class:`RunConfig`, or a list / dict of them.
    """
    infos = [_info_one(s) for s in _sources(source)]
    if not infos:
        raise ValueError("provenance needs at least one result row or RunConfig")
    out: dict[str, list[str]] = {}
    for info in infos:
        dev = info["device"] + (f" ({info['device_name']})" if info["device_name"] else "")
        info = {**info, "device": dev}
        for k in ("dataset", "profile", "seed", "device", "numerics", "capslib_version", "config_hash"):
            out.setdefault(k, [])
            if info[k] not in out[k]:
                out[k].append(info[k])
    return out


def provenance_text(source: Any, note: Optional[str] = None) -> str:
    """The footer line as Markdown (see :func:`provenance_footer`)."""
    p = provenance_info(source)
    datasets = ", ".join(DATASET_NAMES.get(d, d) for d in p["dataset"] if d and d != "nan")  # screens: none
    profiles = ", ".join(f"`{q}`" for q in p["profile"])
    notes = [PROFILE_NOTES[q] for q in p["profile"] if q in PROFILE_NOTES]
    seeds = ("seed " if len(p["seed"]) == 1 else "seeds ") + ", ".join(p["seed"])
    devices = ("device " if len(p["device"]) == 1 else "devices ") + "; ".join(p["device"])
    numerics = [n for n in p["numerics"] if n]
    version = "capslib " + ", ".join(p["capslib_version"])
    hashes = ("config " if len(p["config_hash"]) == 1 else "configs ") + ", ".join(
        f"`{h}`" for h in p["config_hash"])
    parts = [datasets, f"profile {profiles}" + (f" ({'; '.join(notes)})" if notes else ""),
             seeds, devices] + (["numerics " + "; ".join(numerics)] if numerics else []) + [version, hashes]
    text = "*Provenance:* " + " · ".join(parts)
    if note:
        text += f" · {note}"
    return text


def provenance_footer(source: Any, note: Optional[str] = None):
    """A small Markdown line for under a figure or table: where its numbers came from.

    Shows dataset, profile (and, for ``smoke``, that it is a smoke-scale check,
    not a reproduction), seed, device, the instruction sets of CPU runs (two rows that
    differ only by them may differ in their last digits), capslib version and config hash(es).
    ``source`` is a result row from the store (what ``cached_fit`` returns), a
    :class:`RunConfig` (then device and version are this machine's), or a list
    or dict of them; ``note`` adds a remark (e.g. which images were used).
    """
    from IPython.display import Markdown

    return Markdown(provenance_text(source, note))


def run_label(source: Any) -> str:
    """A short label for figure titles: ``Fashion-MNIST · smoke (check, not a reproduction) · seed 0 · cpu``."""
    p = provenance_info(source)
    datasets = ", ".join(DATASET_NAMES.get(d, d) for d in p["dataset"] if d and d != "nan")  # screens: none
    prof = ", ".join(p["profile"])
    if p["profile"] == ["smoke"]:
        prof = "smoke (check, not a reproduction)"
    devices = ", ".join(sorted({d.split(" ")[0] for d in p["device"]}))
    return f"{datasets} · {prof} · seed {', '.join(p['seed'])} · {devices}"


# ======================================================================================
# Squash
# ======================================================================================
def squash_curve(max_norm: float = 6.0) -> Figure:
    """Output length ‖v‖ against input length ‖s‖: the squash the code uses and eq. (4) as printed.

    The computed squash ‖s‖²/(1+‖s‖²) keeps short vectors near zero (a
    capsule is "off"); the printed ‖s‖/(1+‖s‖) would grow linearly from zero.
    """
    sns = _sns()
    s = np.linspace(0, max_norm, 400)
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(s, s**2 / (1 + s**2), lw=2.2, label=r"code, Sabour et al.: $\|s\|^2/(1+\|s\|^2)$")
    ax.plot(s, s / (1 + s), lw=1.8, ls="--", label=r"eq. (4) as printed: $\|s\|/(1+\|s\|)$")
    ax.axhline(DEAD, color="0.4", lw=0.8, ls=":")
    ax.text(0.98 * max_norm, DEAD + 0.01, "dead-capsule threshold 0.01", ha="right", va="bottom",
            fontsize=FONT["small"], color="0.3")
    ax.set_xlabel(r"input length $\|s_j\|$")
    ax.set_ylabel(r"output length $\|v_j\|$")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max_norm)
    ax.legend(loc="center right")
    ax.set_title("Squash (eq. 4): length in [0, 1), direction kept")
    sns.despine(fig=fig)
    return fig


# ======================================================================================
# Capsule activations (Fig. 2)
# ======================================================================================
def _activation_matrix(probe, definition: str) -> tuple[np.ndarray, list[str]]:
    layers = list(probe.layers)
    return probe.matrix(definition, layers), layers


def _draw_activations(ax, mat: np.ndarray, layers: list[str], cbar_ax=None, annot: Optional[bool] = None,
                      vmin: float = 1e-3):
    sns = _sns()
    shown = np.where(np.isnan(mat), np.nan, np.clip(mat, vmin, 1.0))
    annot = mat.shape[1] <= 20 if annot is None else annot
    sns.heatmap(shown, ax=ax, mask=np.isnan(mat), norm=LogNorm(vmin=vmin, vmax=1.0), cmap="rocket",
                annot=np.round(mat, 2) if annot else False, fmt=".2f", annot_kws={"fontsize": FONT["small"]},
                cbar=cbar_ax is not None, cbar_ax=cbar_ax, linewidths=0.5, linecolor="white",
                yticklabels=layers, xticklabels=[str(i + 1) for i in range(mat.shape[1])],
                cbar_kws={"label": "activation (log)"} if cbar_ax is not None else None)
    # Outline dead capsule types (activation ≤ 0.01).
    for (i, j), val in np.ndenumerate(mat):
        if not np.isnan(val) and val <= DEAD:
            ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor="#1f77b4", lw=1.6))
    ax.set_xlabel("capsule type")
    ax.grid(False)
    ax.tick_params(axis="y", rotation=0)
    if cbar_ax is not None:
        cbar_ax.axhline(DEAD, color="#1f77b4", lw=1.5)


def activation_heatmap(probe, definition: str = "paper000", title: Optional[str] = None,
                       figsize: Optional[tuple[float, float]] = None) -> Figure:
    """Capsule activations of one model, layers × capsule types (the paper's Fig. 2).

    ``probe`` is a :class:`capslib.engine.probes.ProbeResult`. ``definition``
    ``"paper000"``: ‖mean over images and locations of u‖ (the paper's);
    ``"paper002"``: mean capsule length. Colours are log-scaled; types at or
    below 0.01 (dead) are outlined in blue; ClassCaps has N class types.
    """
    mat, layers = _activation_matrix(probe, definition)
    figsize = book_figsize(*(figsize or heatmap_figsize(mat.shape[1], mat.shape[0])))
    fig = Figure(figsize=figsize, layout="constrained")
    gs = fig.add_gridspec(1, 2, width_ratios=[1, 0.04])
    ax, cax = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    _draw_activations(ax, mat, layers, cbar_ax=cax)
    ax.set_title(wrap_title(title or f"capsule activations ({definition})", figsize[0] - 1.0), fontsize=FONT["title"])
    return fig


def heatmap_figsize(types: int, layers: int) -> tuple[float, float]:
    """Size of :func:`activation_heatmap` for ``types`` columns and ``layers`` rows: cells wide
    enough for a two-decimal annotation at the book's small font, room for a two-line title."""
    return book_figsize(2.0 + 0.55 * types, 1.3 + 0.45 * layers)


def activation_heatmaps(probes: Mapping[Any, Any], name: str = "r", definition: str = "paper000",
                        title: Optional[str] = None) -> Figure:
    """Static grid of :func:`activation_heatmap`: one panel per key (e.g. per routing iteration count r)."""
    keys = list(probes)
    mats = [_activation_matrix(probes[k], definition) for k in keys]
    width = max(m.shape[1] for m, _ in mats)
    rows = max(m.shape[0] for m, _ in mats)
    fig = Figure(figsize=book_figsize(2.0 + 0.55 * width, 0.9 + (0.45 * rows + 0.6) * len(keys)),
                 layout="constrained")
    gs = fig.add_gridspec(len(keys), 2, width_ratios=[1, 0.035])
    cax = fig.add_subplot(gs[:, 1])
    for i, (k, (mat, layers)) in enumerate(zip(keys, mats)):
        ax = fig.add_subplot(gs[i, 0])
        _draw_activations(ax, mat, layers, cbar_ax=cax if i == 0 else None)
        ax.set_title(f"{name} = {k}", fontsize=FONT["base"], loc="left")
        if i < len(keys) - 1:
            ax.set_xlabel("")
    if title:
        fig.suptitle(title)
    return fig


# ======================================================================================
# Routing over iterations
# ======================================================================================
def routing_evolution(summary: pd.DataFrame, samples: Optional[pd.DataFrame] = None,
                      trained_r: Optional[int] = None, title: Optional[str] = None) -> Figure:
    """How the coupling coefficients and the agreement evolve over routing iterations.

    ``summary``: :func:`capslib.book.chapters.routing.trace_summary` rows (one per layer and
    iteration r); ``samples``: :func:`capslib.book.chapters.routing.trace_samples` for the
    distribution of max c. Panels: (a) entropy of c over the parents, (b) the
    distribution of each child's largest coupling, (c) agreement of a child
    with the parents it is routed to, (d) length of the longest parent capsule
    (and, for ClassCaps, the accuracy of the longest class). A dotted line
    marks the r the model was trained with.
    """
    sns = _sns()
    fig = Figure(figsize=(PAGE_WIDTH_IN, 6.6), layout="constrained")
    axes = fig.subplots(2, 2)
    palette = dict(zip(summary["layer"].unique(), sns.color_palette("deep")))
    kw = dict(hue="layer", palette=palette, marker="o")
    sns.lineplot(data=summary, x="r", y="entropy c", ax=axes[0, 0], **kw)
    axes[0, 0].set_ylim(-0.02, 1.02)
    axes[0, 0].set_title("(a) entropy of c over parents / log J")
    if samples is not None:
        with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib's deprecated `vert`
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.boxplot(data=samples, x="r", y="max c", hue="layer", palette=palette, ax=axes[0, 1],
                        fliersize=0.8, linewidth=0.8, native_scale=True)
    else:
        sns.lineplot(data=summary, x="r", y="max c", ax=axes[0, 1], **kw)
    axes[0, 1].set_ylim(0, 1.02)
    axes[0, 1].set_title(wrap_title("(b) largest coupling max_j c_ij of each child", 3.4))
    sns.lineplot(data=summary, x="r", y="agreement (coupled)", ax=axes[1, 0], **kw)
    axes[1, 0].set_title(r"(c) agreement $\sum_j c_{ij}\,\hat u_{j|i}\cdot v_j$")
    sns.lineplot(data=summary, x="r", y="|v| max", ax=axes[1, 1], **kw)
    if "acc" in summary and summary["acc"].notna().any():
        acc = summary.dropna(subset=["acc"])
        axes[1, 1].plot(acc["r"], acc["acc"], ls="--", color="0.3", marker="s", ms=4,
                        label="class accuracy")
        axes[1, 1].legend()
    axes[1, 1].set_ylim(0, 1.02)
    axes[1, 1].set_title(wrap_title("(d) longest parent ‖v_j‖ (and class accuracy)", 3.4))
    rs = sorted(summary["r"].unique())
    for ax in axes.flat:
        integer_ticks(ax, rs)
        ax.set_xlabel("routing iteration r")
        if trained_r is not None:
            ax.axvline(trained_r, color="0.5", ls=":", lw=1)
        if ax.get_legend() is not None and ax is not axes[1, 1]:
            ax.legend(title=None)
    if title:
        fig.suptitle(wrap_title(title, PAGE_WIDTH_IN, FONT["suptitle"]))
    return fig


# ======================================================================================
# Metrics against a parameter
# ======================================================================================
def metric_panels(df: pd.DataFrame, groups: Mapping[str, Sequence[str]], x: Optional[str] = None,
                  xscale: str = "linear", title: Optional[str] = None,
                  ylim: Optional[Mapping[str, tuple[float, float]]] = None,
                  figsize: Optional[tuple[float, float]] = None) -> Figure:
    """One panel per group of columns of ``df``, each column a line against ``x`` (default: the index).

    E.g. ``{"accuracy (%)": ["test acc (%)"], "dead types (%)": ["dead inter1 (%)"]}``.
    ``xscale="symlog"`` suits α grids that include 0; ``ylim`` maps a group to its y range.
    """
    sns = _sns()
    data = df.reset_index() if x is None else df
    x = x or df.index.name or "index"
    fig = Figure(figsize=book_figsize(*(figsize or (4.0 * len(groups), 3.4))), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    for ax, (label, cols) in zip(axes, groups.items()):
        long = data.melt(id_vars=[x], value_vars=list(cols), var_name="series", value_name=label)
        sns.lineplot(data=long, x=x, y=label, hue="series" if len(cols) > 1 else None, marker="o", ax=ax)
        if xscale == "symlog":
            positive = sorted(v for v in data[x] if v > 0)
            ax.set_xscale("symlog", linthresh=positive[0] if positive else 1.0)
        integer_ticks(ax, list(data[x]))
        ax.set_title(label)
        if ylim and label in ylim:
            ax.set_ylim(*ylim[label])
        legend_below(ax)
    if title:
        fig.suptitle(wrap_title(title, PAGE_WIDTH_IN, FONT["suptitle"]))
    return fig


def accuracy_dead_panels(table: pd.DataFrame, title: Optional[str] = None) -> Figure:
    """Accuracy and dead capsule types against a grid parameter, from :func:`capslib.book.runner.grid_table`."""
    acc = [c for c in table if "acc" in c]
    dead = [c for c in table if c.startswith("dead")]
    return metric_panels(table, {"accuracy (%)": acc, "dead capsule types (%)": dead}, title=title,
                         ylim={"dead capsule types (%)": (-3, 103)})


def ccm_panels(table: pd.DataFrame, title: Optional[str] = None) -> Figure:
    """CCM per conv layer and test accuracy against α, from :func:`capslib.book.chapters.ccm.correlation_table`."""
    ccm = [c for c in table if c.startswith("CCM")]
    groups = {"CCM (eq. 7): mean |corr|": ccm}
    if "test acc (%)" in table:
        groups["test accuracy (%)"] = ["test acc (%)"]
    return metric_panels(table, groups, xscale="symlog", title=title)


# ======================================================================================
# Channel correlations (CCM)
# ======================================================================================
def _draw_corr(ax, m, label: str, cbar_ax=None):
    sns = _sns()
    m = m.detach().cpu().numpy() if hasattr(m, "detach") else np.asarray(m)
    sns.heatmap(m, ax=ax, vmin=-1, vmax=1, center=0, cmap="vlag", square=True, xticklabels=False,
                yticklabels=False, cbar=cbar_ax is not None, cbar_ax=cbar_ax,
                cbar_kws={"label": "corr"} if cbar_ax is not None else None)
    ax.grid(False)
    ax.set_title(f"{label}: {m.shape[0]} ch\nCCM {np.abs(m).mean():.2f}", fontsize=FONT["small"])


def correlation_heatmaps(corrs: Mapping[str, Any], title: Optional[str] = None) -> Figure:
    """Channel correlation matrices of one model, one heatmap per conv layer (colours −1..1)."""
    return correlation_grid({"": corrs}, title=title)


def correlation_grid(corrs_by_key: Mapping[Any, Mapping[str, Any]], name: str = "",
                     title: Optional[str] = None) -> Figure:
    """Channel correlation matrices, one row per run (e.g. per α) and one column per conv layer.

    Each panel title gives the layer, its channel count and its CCM value
    (eq. 7: mean |corr| over all pairs, diagonal included).
    """
    keys = list(corrs_by_key)
    layers = list(next(iter(corrs_by_key.values())))
    side = min(2.1, (PAGE_WIDTH_IN - 0.9) / len(layers))
    fig = Figure(figsize=book_figsize(side * len(layers) + 0.9, (side + 0.35) * len(keys) + (0.5 if title else 0.1)),
                 layout="constrained")
    gs = fig.add_gridspec(len(keys), len(layers) + 1, width_ratios=[1] * len(layers) + [0.06])
    cax = fig.add_subplot(gs[:, -1])
    for i, k in enumerate(keys):
        for j, layer in enumerate(layers):
            ax = fig.add_subplot(gs[i, j])
            _draw_corr(ax, corrs_by_key[k][layer], layer, cbar_ax=cax if (i, j) == (0, 0) else None)
            if j == 0 and (name or k != ""):
                ax.set_ylabel(f"{name} = {k}" if name else str(k), fontsize=FONT["base"])
    if title:
        fig.suptitle(wrap_title(title, PAGE_WIDTH_IN, FONT["suptitle"]))
    return fig
