"""The generated part of the front page: what the book found, written by the build before Jupyter Book runs.

``book/intro.md`` is hand-written; it includes ``book/_generated/frontpage.md`` (git-ignored), which
:func:`write_front_page` writes at every build from the committed rows and a few seconds of forward passes:

* the claims table (:func:`capslib.book.claims.claims_html`, from the very :class:`Verdict` objects of the
  verdict page), so the two pages cannot disagree;
* the headline figure (:func:`headline_data`, :func:`headline_figure`): the class-capsule length of
  CapsNet[C, 8, I] at initialisation against I, measured and predicted by the length recurrence, for the
  ``cpu`` runs' CapsNet[20, 8] at std 0.5 and for the routes that avoid its cliff, with its caption;
* what the evidence cost and what could not be tested (:mod:`capslib.book.claims`).

The build (:func:`capslib.book.build.write_generated`) runs ``python -m capslib.book.frontpage BOOK_DIR
[--readme README.md]`` when a page includes the fragment (the test fixture books do not).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .build import FRONT_PAGE, GENERATED_DIR
from .params import RUNS_PROFILE
from .plots import FONT, PAGE_WIDTH_IN, book_figsize

#: The headline figure, beside the fragment (``book/_generated/frontpage.md``) that shows it.
HEADLINE_PNG = "headline.png"
#: Its width: the text column is 790 px at the browser test's window and the ``{figure}`` directive pads its
#: image by 8 px a side, so 7.7 in at 100 dpi (770 px) is shown at its natural size.
HEADLINE_WIDTH_IN = PAGE_WIDTH_IN - 0.3


# ======================================================================================
# The headline figure: class-capsule length against depth, at initialisation
# ======================================================================================
@dataclass(frozen=True)
class Route:
    """One CapsNet[C, 8] of the headline figure: its key, legend label, model config and colour."""

    key: str
    label: str
    cfg: object  # capslib.engine.config.ModelConfig
    colour: str


def headline_routes(runs_profile: str = RUNS_PROFILE) -> list[Route]:
    """The nets of the figure, from the decisive runs' own numbers (:data:`capslib.experiments.grids.COLLAPSE`)
    and profile: CapsNet[20, 8] at the authors' std (the runs that collapse), C′ from scratch (the width
    the prune leaves) and the length-map init (ConvCaps and class std chosen from the recurrence)."""
    from ..engine.config import profile
    from ..experiments.grids import COLLAPSE

    k = COLLAPSE
    base = profile(runs_profile).model.replace(C=k["C"], D=k["D"], init_std=k["std"])
    return [
        Route("authors", f"CapsNet[{k['C']}, {k['D']}], std {k['std']:g}: the runs that collapse", base, "tab:blue"),
        Route("narrow", f"C′ = {k['C_pruned']} from scratch (PR {k['pr']:g}'s width)",
              base.replace(C=k["C_pruned"], backbone_widths=tuple(k["widths_pruned"])), "tab:orange"),
        Route("remedy", f"length-map init: std {k['remedy_std']:g}, class std {k['remedy_class_std']:g}",
              base.replace(init_std=k["remedy_std"], class_init_std=k["remedy_class_std"]), "tab:purple"),
    ]


def class_length_by_depth(cfg, x, seed: int = 0, I_max: int = 12) -> list[float]:
    """Mean class-capsule length of CapsNet[C, D, I] (``cfg`` with that I, seed ``seed``) on images ``x``
    at initialisation, for I = 0..I_max, as the loss sees it (lengths in the model's dtype: exactly 0.0
    when every length underflows).

    One forward of the I_max model serves every I, as in :func:`capslib.experiments.init_study.depth_limit`
    (the I-model shares its backbone, PrimaryCaps and first I ConvCaps; only its ClassCaps are its own).
    """
    import torch

    from ..experiments.init_study import build_model
    from .runner import cpu_threads

    out = []
    with cpu_threads(1), torch.no_grad():
        deep = build_model(cfg.replace(I=I_max), seed)
        h = x
        for layer in deep.backbone:
            h = layer(h)
        u, _ = deep.primary(h)
        layers = [u]
        for layer in deep.intermediate:
            u = layer(u)
            layers.append(u)
        for I in range(I_max + 1):
            model = deep if I == I_max else build_model(cfg.replace(I=I), seed)
            v = model.classcaps(layers[I])
            out.append(torch.linalg.vector_norm(v, dim=-1).double().mean().item())
    return out


def headline_data(x=None, seed: int = 0, n_images: int = 32, I_max: int = 12,
                  routes: Optional[Sequence[Route]] = None) -> pd.DataFrame:
    """Per route and I = 0..I_max: the measured mean class length (:func:`class_length_by_depth`) and the
    recurrence's (``log10_predicted``, :func:`capslib.experiments.init_study.length_recurrence` started from
    the measured PrimaryCaps lengths of the same images). ``x``: default the first ``n_images``
    Fashion-MNIST test images. A few seconds on one thread."""
    from ..experiments.init_study import eval_batches, length_recurrence, primary_m2_maps
    from .runner import cpu_threads

    x = eval_batches(1, n_images)[0][0] if x is None else x
    rows = []
    for r in routes if routes is not None else headline_routes():
        measured = class_length_by_depth(r.cfg, x, seed, I_max)
        with cpu_threads(1):
            m2 = primary_m2_maps(r.cfg, x, seed)
        for I in range(I_max + 1):
            pred = length_recurrence(r.cfg.replace(I=I), primary_m2=m2)["log10_mean"].iloc[-1]
            rows.append({"route": r.key, "label": r.label, "colour": r.colour, "C": r.cfg.C, "D": r.cfg.D,
                         "std": r.cfg.init_std, "I": I, "measured": measured[I],
                         "log10_predicted": float(pred)})
    out = pd.DataFrame(rows)
    out.attrs.update(seed=seed, n_images=int(x.shape[0]), I_max=I_max)
    return out


def cliff_depth(summary: pd.DataFrame) -> Optional[int]:
    """The shallowest I at which every seed of a from-scratch point of the collapse claim sat at chance
    (the decisive runs, :func:`capslib.book.collapse_runs.run_summary`); None while no point shows it."""
    if summary.empty or "claim" not in summary:
        return None
    pts = summary[(summary["claim"] == "collapse") & (summary["seeds"] > 0)]
    dead = [int(r["I"]) for _, r in pts.iterrows() if str(r["collapsed"]).split("/")[0] == str(r["seeds"])]
    return min(dead) if dead else None


def _first_zero(d: pd.DataFrame) -> Optional[int]:
    zero = d[d["measured"] == 0.0]["I"]
    return int(zero.min()) if len(zero) else None


def headline_figure(data: pd.DataFrame, cliff: Optional[int] = None, pruned: Optional[dict] = None) -> Figure:
    """Class-capsule length (log axis) against I: measured (dots; exactly 0: triangles on the floor) and
    predicted (dashes) per route; the cliff (``cliff``) marked, and the committed probe of the pruned net at
    the start of retraining (``pruned``, :func:`capslib.book.claims.dead_at_retrain_start`) as an upper bound."""
    from matplotlib.lines import Line2D

    from .collapse_runs import _rc

    with _rc():
        fig = Figure(figsize=book_figsize(HEADLINE_WIDTH_IN, 5.4), layout="constrained")
        ax = fig.add_subplot()
        ax.set_yscale("log")
        pos = data["measured"][data["measured"] > 0]
        floor = 10.0 ** math.floor(math.log10(float(pos.min())) - 2) if len(pos) else 1e-30
        groups = list(data.groupby("route", sort=False))
        for j, (key, d) in enumerate(groups):
            c = d["colour"].iloc[0]
            I, meas = d["I"].to_numpy(), d["measured"].to_numpy()
            pred = 10.0 ** np.maximum(d["log10_predicted"].to_numpy(), math.log10(floor) - 10)
            ax.plot(I, pred, "--", color=c, lw=1.2, alpha=0.8)
            ok = meas > 0
            ax.plot(I[ok], meas[ok], "o-", color=c, ms=4.5, lw=1.6, label=d["label"].iloc[0])
            if (~ok).any():  # side by side where two routes are exactly 0 at the same I
                shift = 0.18 * (j - (len(groups) - 1) / 2)
                ax.plot(I[~ok] + shift, np.full((~ok).sum(), floor * 5), "v", color=c, ms=8, mec="black", mew=0.6)
        ax.axhline(0.01, color="0.35", lw=0.8, ls=":")
        ax.text(data["I"].max(), 0.013, "dead ≤ 0.01", ha="right", va="bottom", fontsize=FONT["small"], color="0.3")
        if pruned:
            ax.plot([pruned["I"]], [0.01], marker="v", color="tab:green", mfc="none", mew=2.0, ms=12, ls="none",
                    label=f"PR {pruned['pr']:g} prune, start of retraining: class ≤ 0.01 in "
                          f"{pruned['dead']}/{pruned['seeds']} seeds")
            ax.annotate("", xy=(pruned["I"], 3e-4), xytext=(pruned["I"], 0.006),
                        arrowprops={"arrowstyle": "->", "color": "tab:green", "lw": 1.8})
        if cliff is not None:
            ax.axvline(cliff, color="tab:red", lw=1.3, ls="-.", alpha=0.85,
                       label=f"cliff: the runs sit at chance from I = {cliff}")
        ax.set_ylim(floor, 3)
        ax.set_xlim(-0.4, data["I"].max() + 0.4)
        ax.set_xticks(sorted(data["I"].unique()))
        ax.set_xlabel("IntermediateCaps layers I")
        ax.set_ylabel("mean class-capsule length")
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title("Class-capsule length at initialisation against depth")
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="0.3", ls="--", lw=1.2),
                    Line2D([], [], color="0.5", marker="v", ls="none", ms=8, mec="black", mew=0.6)]
        labels += ["dashes: the length recurrence (predicted)", "measured: exactly 0"]
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False,
                  fontsize=FONT["small"])
    return fig


def _at(d: pd.DataFrame, I: Optional[int]) -> Optional[float]:
    """The measured length of one route at depth ``I`` (None when ``I`` is None or not measured)."""
    hit = d.loc[d["I"] == I, "measured"] if I is not None else d.iloc[0:0]["measured"]
    return float(hit.iloc[0]) if len(hit) else None


def headline_caption(data: pd.DataFrame, cliff: Optional[int], pruned: Optional[dict]) -> str:
    """Two or three sentences that say what the figure shows, with its numbers read from ``data``."""
    by = {k: d for k, d in data.groupby("route", sort=False)}
    I_max = int(data["I"].max())
    a, n, r = by.get("authors"), by.get("narrow"), by.get("remedy")
    s = [f"Mean length of the class capsules of CapsNet[C, 8, I] at initialisation against the number of "
         f"IntermediateCaps layers I, measured on {data.attrs.get('n_images', 32)} Fashion-MNIST test images "
         f"(dots; triangles: exactly 0) and predicted by the length recurrence (dashes)."]
    if a is not None:
        z = _first_zero(a)
        at = (f" is {_at(a, cliff):.0e} at I = {cliff}, where the decisive runs sit at chance in every seed, and"
              if _at(a, cliff) is not None else "")
        end = f"exactly 0 from I = {z}" if z is not None else f"non-zero to I = {I_max}"
        s.append(f"At the authors' init scale (ConvCaps std {a['std'].iloc[0]:g}) the length of "
                 f"CapsNet[{a['C'].iloc[0]}, {a['D'].iloc[0]}] falls doubly exponentially: it{at} is {end}.")
    routes = []
    if n is not None:
        z = _first_zero(n)
        at = f"is {_at(n, cliff):.0e} at I = {cliff} and " if _at(n, cliff) is not None else ""
        routes.append(f"{n['label'].iloc[0]} {at}stays non-zero to I = {(z - 1) if z is not None else I_max}")
    if r is not None:
        routes.append(f"the length-map init holds it between {r['measured'].min():.2f} and {r['measured'].max():.2f} "
                      f"up to I = {I_max}")
    if pruned:
        routes.append(f"the PR {pruned['pr']:g} prune at the start of retraining, whose trained backbone is not in "
                      f"the repository, is shown by its committed dead-capsule probe only: class capsules ≤ 0.01 in "
                      f"{pruned['dead']} of {pruned['seeds']} seeds at I = {pruned['I']}, after which it trained to "
                      f"{100 * pruned['retrained']:.1f} %")
    if routes:
        s.append("Around the cliff: " + "; ".join(routes) + ".")
    return " ".join(s)


# ======================================================================================
# The fragment
# ======================================================================================
def _files(listed: str) -> str:
    """A store list for prose: the files themselves when there are one or two, else how many and where."""
    files = [f.strip() for f in listed.split(",") if f.strip()]
    if len(files) <= 2:
        return " and ".join(files)
    folders = sorted({f.strip("`").split("/")[1] for f in files})
    return f"{len(files)} stores under `results/` ({', '.join(folders)})"


def _cost_markdown(root: Optional[Path], readme: Optional[Path], runs_profile: str = RUNS_PROFILE) -> str:
    from .claims import evidence_cost, make_book_cost

    cost = evidence_cost(root, runs_profile)
    lines = []
    if not cost.empty:
        devices = "; ".join(dict.fromkeys(d for ds in cost["devices"] for d in ds.split("; ") if d))
        parts = [f"{r['hours']:.1f} h of {r['evidence']} ({r['rows']} rows in {_files(r['files'])})"
                 for _, r in cost.iterrows()]
        lines.append(f"**The committed evidence cost {cost['hours'].sum():.1f} CPU-hours** on {devices} (the "
                     f"`device_name` of every row; this project's 2-core machine, each run on one thread), summed "
                     f"from the rows' recorded wall times: " + "; ".join(parts) + ".")
    where, steps = make_book_cost(readme) if readme is not None else ("", [])
    if steps:
        quoted = "; ".join(f"{step}: **{time}**" for step, time in steps)
        when = where[:1].lower() + where[1:]
        lines.append(f"**One `make book`**, as measured in the README (*What to expect*; {when}): {quoted}. It "
                     "trains only the small smoke models; every decisive run is read from its committed row.")
    return "\n\n".join(lines)


def front_page_markdown(vs, data: pd.DataFrame, cliff: Optional[int], pruned: Optional[dict],
                        root: Optional[Path] = None, readme: Optional[Path] = None, footer: str = "",
                        runs_profile: str = RUNS_PROFILE) -> str:
    """The included fragment: claims table, headline figure with caption and provenance, the cost of the
    evidence and what could not be tested (MyST Markdown)."""
    from .claims import claims_html, could_not_test

    untested = "\n".join(f"* {item}" for item in could_not_test(vs))
    return "\n".join([
        "## What this book found", "",
        "One row per claim, generated when this page was built from the same committed rows and the same "
        "code as the {doc}`verdict page <verdicts>`; click a verdict for its full text. What was tried and "
        "did not work is {ref}`on the verdict page too <what-did-not-work>`.", "",
        "```{raw} html", claims_html(vs, here="intro"), "```", "",
        f"*Evidence read:* `results/collapse/{runs_profile}.csv`, `results/depth_limits/fmnist.csv`, "
        "`results/table5_limits/`, `results/fig6_depth/`, `results/table1_pr/`, `results/seed002_dead/`, "
        "`results/kernel_widths/` and the other studies' stores as committed when this page was built; "
        "seeds: the fewest over the points a verdict rests on.", "",
        f"```{{figure}} {GENERATED_DIR}/{HEADLINE_PNG}",
        ":name: headline-figure",
        ":alt: Class-capsule length against the number of IntermediateCaps layers, measured and predicted",
        "", headline_caption(data, cliff, pruned), "```", "",
        footer, "",
        "### What the evidence cost", "",
        _cost_markdown(root, readme, runs_profile), "",
        "### What we could not test", "",
        untested, ""])


def write_front_page(book_dir: Path, runs_profile: str = RUNS_PROFILE, root: Optional[str | Path] = None,
                     readme: Optional[Path] = None) -> list[Path]:
    """Write ``<book_dir>/_generated/frontpage.md`` and its headline figure from the committed rows under
    ``root`` (default ``results/``); ``readme``: where the measured ``make book`` times are. Returns the
    files written."""
    from .chapters.collapse import live_footer
    from .chapters.verdicts import verdicts
    from .claims import dead_at_retrain_start
    from .collapse_runs import collapse_points, load_collapse, results_root, run_summary
    from .widgets import figure_png

    out_dir = Path(book_dir) / GENERATED_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = run_summary(load_collapse(runs_profile, root), collapse_points(runs_profile))
    vs = verdicts(runs_profile, root, summary=summary)
    data = headline_data()
    cliff = cliff_depth(summary)
    pruned = dead_at_retrain_start(root, runs_profile)
    png = out_dir / HEADLINE_PNG
    png.write_bytes(figure_png(headline_figure(data, cliff, pruned)))
    footer = live_footer(data.attrs["seed"], data.attrs["n_images"],
                         note=f"cliff and pruned net: `results/collapse/{runs_profile}.csv`")
    md = out_dir / FRONT_PAGE
    md.write_text(front_page_markdown(vs, data, cliff, pruned, results_root(root), readme, footer, runs_profile),
                  encoding="utf8")
    return [md, png]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m capslib.book.frontpage BOOK_DIR [--readme README.md]``: write the front page's generated
    part into ``BOOK_DIR/_generated/`` and print the files written."""
    parser = argparse.ArgumentParser(prog="python -m capslib.book.frontpage", description=main.__doc__)
    parser.add_argument("book_dir", type=Path)
    parser.add_argument("--readme", type=Path, default=None, help="where the measured make book times are")
    parser.add_argument("--runs-profile", default=RUNS_PROFILE)
    args = parser.parse_args(argv)
    for path in write_front_page(args.book_dir, args.runs_profile, readme=args.readme):
        print(path.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
