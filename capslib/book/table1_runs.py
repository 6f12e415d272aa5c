"""Table 1's PR trend read from the committed rows of the ``table1_pr`` study: paired differences between cells of
one seed, with their 95 % t intervals, and the rule that grades the claim (the CHIP chapter and the verdict page).

Nothing here trains a model. The rows are ``results/table1_pr/<profile>.csv``: CapsNet[16, 6, 0] trained to a
plateau as plain training (PR 0), through the pipeline at PR 0 (base, CCM, rebuild, retrain: the pruned cells'
extra training matched), CCM + CHIP at PR 0.125 … 0.75 and random channels at PR 0.5, seeds paired (a seed's
pipeline cells share its base and CCM stages). The predictions were committed before the rows
(``results/table1_pr/predictions.md``). The rule, applied to differences *against the pipeline's PR 0*:

* the **rise** is shown when CCM + CHIP at PR 0.125 or 0.25 lies above it with an interval excluding 0, and
  refuted when both lie below it with intervals excluding 0;
* the **fall** is shown when PR 0.75 lies below it with an interval excluding 0;
* the claim is *reproduced* when both are shown, *not reproduced* when the rise or the fall is refuted,
  *explained by the extra training* when a pruned cell beats plain training but not the pipeline's PR 0, and
  *inconclusive* while an interval spans zero, which the verdict says.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import pandas as pd
from matplotlib.figure import Figure

from ..experiments.grids import TABLE1, TABLE1_TREND
from ..experiments.results import read_store_csv
from .collapse_runs import _rc, final_rows, results_root
from .plots import PAGE_WIDTH_IN, book_figsize, wrap_title
from .rescue_evidence import study_hours

EXPERIMENT = "table1_pr"
#: Seeds the issue asks for per cell (Table 1's differences are 0.2-1.5 points).
MIN_PAIRED_SEEDS = 5
#: Two-sided 95 % quantiles of Student's t by degrees of freedom (df > 30: the normal 1.96).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (the next tabulated df below when
    ``df`` is not tabulated, which errs wide)."""
    if df < 1:
        raise ValueError(f"t975 needs df >= 1, got {df}")
    if df > 30:
        return 1.96
    return _T975[max(k for k in _T975 if k <= df)]


def label(cell: str, C: int = TABLE1_TREND["C"], D: int = TABLE1_TREND["D"]) -> str:
    """The grid label of a cell: "plain", "pipeline", "random 0.5" or a PR such as "0.25"."""
    tag = f"Table 1 [{C}, {D}]"
    if cell == "plain":
        return f"{tag}: PR 0, plain training"
    if cell == "pipeline":
        return f"{tag}: PR 0 through the pipeline"
    if cell.startswith("random"):
        return f"{tag}: random channels PR {cell.split()[1]}"
    return f"{tag}: CCM+CHIP PR {cell}"


def cell_accuracies(root: Optional[str | Path] = None, profile: str = "cpu") -> pd.DataFrame:
    """Test accuracy (%) per cell (columns: "plain", "pipeline", each PR, "random 0.5") and seed (index)."""
    cells = ["plain", "pipeline", *[f"{pr:g}" for pr in TABLE1_TREND["prs"]], "random 0.5"]
    table = {}
    path = results_root(root) / EXPERIMENT / f"{profile}.csv"
    if path.is_file():
        rows = final_rows(read_store_csv(path))
        for cell in cells:
            g = rows[rows["label"] == label(cell)].drop_duplicates("seed", keep="last")
            table[cell] = pd.Series(100 * g["test_acc"].astype(float).to_numpy(), index=g["seed"].astype(int))
    return pd.DataFrame(table, columns=cells).sort_index()


def paired(acc: pd.DataFrame, a: str, b: str) -> dict:
    """``a`` − ``b`` over the seeds that have both: n, mean, sd, the 95 % t interval (NaN with fewer than 2)."""
    d = (acc[a] - acc[b]).dropna() if a in acc and b in acc else pd.Series(dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    half = t975(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return dict(comparison=f"{a} − {b}", a=a, b=b, n=n, mean=mean, sd=sd, lo=mean - half, hi=mean + half)


def differences(acc: pd.DataFrame) -> pd.DataFrame:
    """Every pruned cell against the pipeline's PR 0, the pipeline against plain training, CHIP against random
    channels at PR 0.5, and every pruned cell against plain training."""
    prs = [f"{pr:g}" for pr in TABLE1_TREND["prs"]]
    pairs = [(pr, "pipeline") for pr in prs] + [("pipeline", "plain"), ("0.5", "random 0.5")] + \
        [(pr, "plain") for pr in prs]
    return pd.DataFrame([paired(acc, a, b) for a, b in pairs])


def _sign(row: pd.Series) -> int:
    """+1 / −1 when the interval excludes 0 above / below, 0 when it spans 0 or is undefined."""
    if pd.isna(row["lo"]) or pd.isna(row["hi"]):
        return 0
    return 1 if row["lo"] > 0 else (-1 if row["hi"] < 0 else 0)


def claim(root: Optional[str | Path] = None, profile: str = "cpu") -> dict:
    """The rule of the module docstring: ``supported`` (True / False / None), ``explained_by`` (or None),
    ``seeds`` (the fewest seeds of any cell), ``why`` (one sentence), ``table`` (:func:`differences`),
    ``accuracies`` (:func:`cell_accuracies`) and the paper's row."""
    acc = cell_accuracies(root, profile)
    diffs = differences(acc)
    seeds = int(acc.notna().sum().min()) if len(acc) else 0
    by = {r["comparison"]: r for _, r in diffs.iterrows()}
    small = [by[f"{pr} − pipeline"] for pr in ("0.125", "0.25")]
    rise = 1 if any(_sign(r) > 0 for r in small) else (-1 if all(_sign(r) < 0 for r in small) else 0)
    fall = _sign(by["0.75 − pipeline"])
    beats_plain = any(_sign(by[f"{pr} − plain"]) > 0 for pr in ("0.125", "0.25"))
    supported, explained, why = None, None, ""
    if seeds < MIN_PAIRED_SEEDS:
        why = f"{seeds} of {MIN_PAIRED_SEEDS} seeds in every cell so far"
    elif rise < 0 or fall > 0:
        supported = False
        why = ("accuracy falls from the first PR on: PR 0.125 and 0.25 both lie below the pipeline's PR 0"
               if rise < 0 else "PR 0.75 lies above the pipeline's PR 0")
    elif rise > 0 and fall < 0:
        supported = True
        why = "a small PR lies above the pipeline's PR 0 and PR 0.75 below it, both intervals excluding 0"
    elif rise == 0 and beats_plain:
        supported, explained = True, "the extra training (the pipeline's PR 0 gains as much)"
        why = ("a small PR beats plain training but not the pipeline's PR 0, which has the same extra training; "
               + ("PR 0.75 lies below the pipeline's PR 0" if fall < 0 else "the fall's interval spans 0"))
    else:
        why = ("the interval of the rise spans 0" if rise == 0 else "the interval of the fall spans 0")
    C, D = TABLE1_TREND["C"], TABLE1_TREND["D"]
    paper = dict(zip((0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75), TABLE1[(C, D)]))
    return dict(supported=supported, explained_by=explained, seeds=seeds, why=why, table=diffs, accuracies=acc,
                rise=rise, fall=fall, paper=paper)


def differences_text(table: pd.DataFrame) -> str:
    """The paired differences as "a − b: +0.42 (95 % CI −0.10 to +0.94, 5 seeds)"."""
    parts = []
    for _, r in table.iterrows():
        if r["n"] == 0:
            continue
        ci = "" if pd.isna(r["lo"]) else f" (95 % CI {r['lo']:+.2f} to {r['hi']:+.2f}"
        parts.append(f"{r['comparison']}: {r['mean']:+.2f}{ci}, {r['n']} seeds{')' if ci else ''}")
    return "; ".join(parts) or "no paired cells yet"


def accuracy_text(acc: pd.DataFrame) -> str:
    """Mean ± sd test accuracy per cell."""
    return "; ".join(f"{c}: {acc[c].mean():.2f} ± {acc[c].std(ddof=1):.2f} % ({acc[c].notna().sum()} seeds)"
                     for c in acc.columns if acc[c].notna().sum() > 1) or "no cell has two seeds yet"




def verdict_fields(root: Optional[str | Path], profile: str) -> dict:
    """The verdict page's fields for Table 1 (every :class:`~capslib.book.chapters.verdicts.Verdict` field but the
    verdict itself) and the grade's inputs: ``supported``, ``explained_by``, ``n_seeds``, ``control_seen``."""
    c = claim(root, profile)
    acc, C, D = c["accuracies"], TABLE1_TREND["C"], TABLE1_TREND["D"]
    hours = study_hours(root, f"{EXPERIMENT}/{profile}.csv")
    paper = ", ".join(f"PR {pr:g}: {v:.2f}" for pr, v in c["paper"].items())
    data = TABLE1_TREND["data"]
    budget = (f"{data['train_size']:,} training, {data['val_size']:,} validation and {data['test_size']:,} test "
              "images, every stage to a plateau (at most 10 epochs, patience 3)")
    return dict(
        supported=c["supported"], explained_by=c["explained_by"], n_seeds=c["seeds"],
        control_seen="pipeline" in acc and bool(acc["pipeline"].notna().any()),
        claim="Table 1's trend: accuracy first rises, then falls with the pruning ratio",
        source="paper 000, Table 1, §4",
        paper=f"CapsNet[{C}, {D}]: {paper} (CIFAR-10)",
        evidence=(f"CapsNet[{C}, {D}, 0] (Table 1's cheapest configuration that the paper's prune rule plans at every "
                  f"PR), Fashion-MNIST, {budget}, seeds paired (`results/table1_pr/{profile}.csv`, "
                  f"{hours:.2f} CPU-hours; predictions committed first in "
                  f"`results/table1_pr/predictions.md`). Test accuracy: {accuracy_text(acc)}. Paired differences: "
                  f"{differences_text(c['table'])}. {c['why'].capitalize()}."),
        scale=f"Fashion-MNIST, CapsNet[{C}, {D}, 0], {budget}",
        seeds=c["seeds"],
        control="PR 0 run through the same pipeline (base, CCM, rebuild, retrain), so that a pruned cell's extra "
                "training is matched; random channels at PR 0.5.",
        would_change=(f"Decided by ≥ {MIN_PAIRED_SEEDS} paired seeds: reproduced when PR 0.125 or 0.25 lies above "
                      "the pipeline's PR 0 and PR 0.75 below it, each 95 % interval excluding 0; not reproduced when "
                      "both small PRs lie below it; inconclusive while the rise's interval spans 0 (more seeds would "
                      "narrow it). The paper's own accuracies are CIFAR-10 and untestable here."),
        breakdown=(
            ("What the rows show", differences_text(c["table"])),
            ("The committed predictions", "; ".join(
                f"{r.prediction}: {r.observed}, {'held' if r.held else 'missed' if r.held is False else 'open'}"
                for r in scored_predictions(c).itertuples())),
            ("What is sufficient", "the pipeline's PR 0 is the comparison that isolates pruning: plain training "
             "gets a third of the pruned cells' epochs."),
            ("What is untested", "\"doubling C or D raises accuracy\" (the other configurations of Table 1); the "
             "authors' prune rule; CIFAR-10."),
        ),
        title="Table 1's trend over PR",
        decided_in=("chip", "Table 1 at a plateau, paired by seed", "CHIP: Table 1's trend"))


def figure(c: dict, title: Optional[str] = None) -> Figure:
    """Left: test accuracy per cell, one faint line per seed (the pairing) and the mean. Right: each pruned cell
    minus the pipeline's PR 0 with its 95 % t interval; 0 is no effect of pruning."""
    acc, table = c["accuracies"], c["table"]
    with _rc():
        fig = Figure(figsize=book_figsize(PAGE_WIDTH_IN, 3.2), layout="constrained")
        left, right = fig.subplots(1, 2, width_ratios=(3, 2))
        x = range(len(acc.columns))
        for seed, r in acc.iterrows():
            left.plot(x, r.values, color="0.6", lw=0.8, alpha=0.6)
        left.plot(x, acc.mean().values, color="C3", marker="o", ms=4, label="mean over seeds")
        left.set_xticks(list(x), list(acc.columns), rotation=30, ha="right")
        left.set_ylabel("test accuracy (%)")
        left.set_title("every cell, a line per seed")
        vs = table[table["b"] == "pipeline"].dropna(subset=["mean"])
        if len(vs):
            prs = [float(a) for a in vs["a"]]
            right.errorbar(prs, vs["mean"], yerr=[vs["mean"] - vs["lo"].fillna(vs["mean"]),
                                                   vs["hi"].fillna(vs["mean"]) - vs["mean"]],
                           marker="o", ms=4, capsize=3, color="C3")
        right.axhline(0, color="0.3", lw=0.8, ls="--")
        right.set_xlabel("PR")
        right.set_ylabel("minus the pipeline's PR 0 (points)")
        right.set_title("pruning's effect, 95 % t interval")
        if title:
            fig.suptitle(wrap_title(title, PAGE_WIDTH_IN))
    return fig


#: The predictions committed in ``results/table1_pr/predictions.md`` before any row, each with its test on the
#: paired differences (keyed by :func:`differences`' "comparison").
PREDICTIONS = (
    ("no rise from pruning: PR 0.125 − the pipeline's PR 0 has an interval containing 0 or below it",
     "0.125 − pipeline", lambda r: r["lo"] <= 0),
    ("the fall: PR 0.75 − the pipeline's PR 0 below −1 point, its interval excluding 0",
     "0.75 − pipeline", lambda r: r["mean"] < -1 and r["hi"] < 0),
    ("CHIP and random channels at PR 0.5 within ±1 point", "0.5 − random 0.5", lambda r: abs(r["mean"]) <= 1),
    ("the pipeline's extra training is worth something: its PR 0 minus plain training ≥ 0 (mean)",
     "pipeline − plain", lambda r: r["mean"] >= 0),
)


def scored_predictions(c: dict) -> pd.DataFrame:
    """Each committed prediction, the paired difference it is judged on and whether it held (None before every
    cell has :data:`MIN_PAIRED_SEEDS` seeds)."""
    by = {r["comparison"]: r for _, r in c["table"].iterrows()}
    rows = []
    for text, comparison, test in PREDICTIONS:
        r = by[comparison]
        held = bool(test(r)) if c["seeds"] >= MIN_PAIRED_SEEDS else None
        rows.append(dict(prediction=text, comparison=comparison,
                         observed=f"{r['mean']:+.2f} (95 % CI {r['lo']:+.2f} to {r['hi']:+.2f})" if r["n"] > 1 else "",
                         held=held))
    return pd.DataFrame(rows)
