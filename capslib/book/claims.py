"""What the book found, in the form a reader meets first: the claims table, the negative results, the cost
of the evidence and what could not be tested.

Everything here is generated from the committed rows when the book is built, through the same
:func:`capslib.book.chapters.verdicts.verdicts` that writes the verdict page, so the front page
(:mod:`capslib.book.frontpage`) and the verdict page cannot disagree and no number is typed by hand:

* :func:`claims_html` - one row per claim: the claim in a few words, a verdict badge with its full text
  one click away (``<details>``), the scale of the evidence and a link to the section that decides it;
* :func:`negative_results` - what was tried and did not work or did not move anything, each with its rows;
* :func:`evidence_cost` / :func:`make_book_cost` - the CPU time the committed rows record, and what the
  README measured for one ``make book``;
* :func:`could_not_test` - what no machine of this project could test.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from ..experiments.results import read_store_csv
from .chapters.verdicts import Verdict, claim_anchor
from .collapse_runs import MIN_SEEDS
from .collapse_runs import DATASET_LABELS, _collapsed, results_root, summary_view

#: The badge class of each verdict category (colours in :data:`_STYLE`).
_BADGE_CLASS = (("reproduced", "reproduced"), ("not reproduced", "not-reproduced"), ("explained", "explained"),
                ("inconclusive", "inconclusive"), ("untestable", "untestable"))

_STYLE = """<style>
table.capslib-claims {width: 100%; table-layout: fixed; border-collapse: collapse; font-size: 0.9em;
  margin: 0.5em 0 1em}
table.capslib-claims th, table.capslib-claims td {vertical-align: top; text-align: left; padding: 0.4em 0.45em;
  border-bottom: 1px solid rgba(128, 128, 128, 0.35); overflow-wrap: anywhere}
table.capslib-claims th {font-weight: 600}
table.capslib-claims small {opacity: 0.75}
table.capslib-claims summary {cursor: pointer; list-style: none}
table.capslib-claims summary::-webkit-details-marker {display: none}
table.capslib-claims summary .capslib-badge::after {content: " ▸"}
table.capslib-claims details[open] summary .capslib-badge::after {content: " ▾"}
table.capslib-claims details p {margin: 0.35em 0 0}
.capslib-badge {display: inline-block; padding: 0.05em 0.55em; border-radius: 0.9em; font-weight: 600;
  line-height: 1.5}
.capslib-badge.reproduced {background: #d3efd9; color: #14532d}
.capslib-badge.not-reproduced {background: #f9d4d4; color: #7f1d1d}
.capslib-badge.explained {background: #fce6bd; color: #6b3c09}
.capslib-badge.inconclusive {background: #e3e5e8; color: #30363d}
.capslib-badge.untestable {background: #d6e4fb; color: #1e3a8a}
</style>"""


def _md_inline(text: str) -> str:
    """Markdown of a verdict's text (code spans, emphasis) as inline HTML; raw HTML in it is escaped."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).renderInline(text)


def badge_class(v: Verdict) -> str:
    """The CSS class of ``v``'s badge: its verdict category."""
    return next((cls for word, cls in _BADGE_CLASS if v.verdict.startswith(word)), "inconclusive")


def section_href(chapter: str, heading: str) -> str:
    """``<chapter>.html#<id>``: the id Sphinx gives the section ``heading`` (docutils' ``make_id``)."""
    from docutils.nodes import make_id

    return f"{chapter}.html#{make_id(heading)}" if heading else f"{chapter}.html"


def claims_html(vs: Sequence[Verdict], here: str = "intro") -> str:
    """The claims table as HTML (a raw block of the front page, an output of the verdict page).

    One row per verdict, in the verdict page's order and numbering: claim (a few words, and its source),
    verdict badge (click: the full verdict and a link to its evidence on the verdict page), evidence scale
    and seeds, and the section that decides it. ``here``: the page that shows it ("verdicts" links to its
    own claim blocks by fragment). The table has fixed column widths, so it never outgrows the text column.
    """
    rows = []
    for number, v in enumerate(vs, start=1):
        anchor = claim_anchor(number)
        to_claim = f"#{anchor}" if here == "verdicts" else f"verdicts.html#{anchor}"
        chapter, heading, label = v.decided_in
        decided = (f'<a href="{section_href(chapter, heading)}" title="{html.escape(heading)}">'
                   f'{html.escape(label or heading)}</a>' if chapter else "")
        seeds = f"{v.seeds} seed{'s' if v.seeds != 1 else ''}"
        rows.append(
            f'<tr class="capslib-claim">'
            f'<td>{number}</td>'
            f'<td>{_md_inline(v.title or v.claim)}<br><small>{_md_inline(v.source)}</small></td>'
            f'<td><details><summary><span class="capslib-badge {badge_class(v)}">{html.escape(v.badge)}</span>'
            f'</summary><p>{_md_inline(v.verdict[:1].upper() + v.verdict[1:])}.</p>'
            f'<p><a href="{to_claim}">Evidence, control and what would change it</a></p></details></td>'
            f'<td>{_md_inline(v.scale)}; {seeds}</td>'
            f'<td>{decided}</td></tr>')
    return "\n".join([
        _STYLE,
        '<table class="capslib-claims">',
        '<colgroup><col style="width: 2.2em"><col style="width: 30%"><col style="width: 27%">'
        '<col style="width: 25%"><col></colgroup>',
        "<thead><tr><th>#</th><th>claim</th><th>verdict (click for the full text)</th><th>evidence scale</th>"
        "<th>decided in</th></tr></thead>",
        "<tbody>", *rows, "</tbody></table>"])


# ======================================================================================
# Negative results
# ======================================================================================
@dataclass
class Negative:
    """One thing that was tried and did not work or did not move anything: a bold ``title``, what the
    rows show (``text``, Markdown, generated from them), the ``rows`` themselves and where they are
    (``source``)."""

    title: str
    text: str
    rows: pd.DataFrame
    source: str


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _read_store(root: Path, rel: str) -> pd.DataFrame:
    path = root / rel
    return read_store_csv(path) if path.is_file() else pd.DataFrame()


def _float64_negative(raw: pd.DataFrame, limits: pd.DataFrame, store: str) -> Optional[Negative]:
    """Float64 did not move the cliff: the float64 rows beside the float32 rows of the same depths."""
    if raw.empty or "train.dtype" not in raw:
        return None
    ok = raw[(raw["status"] == "ok") & (raw["stage"] == "train")]
    f64 = ok[ok["train.dtype"] == "float64"]
    if f64.empty:
        return None
    depths = sorted(int(i) for i in f64["model.I"].unique())
    f32 = ok[(ok["train.dtype"] == "float32") & ok["model.I"].isin(depths) & (ok["model.C"] == 20)
             & (ok["model.init_std"] == f64["model.init_std"].iloc[0])]
    both = pd.concat([f32, f64])
    at_chance = [_collapsed(r) for r in both.to_dict(orient="records")]
    rows = pd.DataFrame({"point": both["label"].to_numpy(), "dtype": both["train.dtype"].to_numpy(),
                         "seed": both["seed"].astype(int).to_numpy(), "test acc": [_pct(a) for a in both["test_acc"]],
                         "at chance": ["yes" if c else "no" for c in at_chance],
                         "wall time (s)": both["wall_time"].round().astype(int).to_numpy()})
    k64 = sum(c for c, d in zip(at_chance, both["train.dtype"]) if d == "float64")
    k32 = sum(c for c, d in zip(at_chance, both["train.dtype"]) if d == "float32")
    screen = ""
    if k64 < len(f64):  # some float64 run trained: precision did move it
        return Negative("Float64 did move the cliff", (
            f"CapsNet[20, 8] at I = {', '.join(map(str, depths))} in float64 trained in {len(f64) - k64} of "
            f"{len(f64)} runs, where float32 sat at chance in {k32} of {len(f32)}."), rows, store)
    if not limits.empty:
        pick = limits[(limits["preset"] == "authors") & (limits["C"] == 20) & (limits["D"] == 8) & (limits["PR"] == 0)]
        by = dict(zip(pick["dtype"], pick["max trainable I"]))
        if {"float32", "float64"} <= set(by):
            screen = (f" The initialisation screen had put the float64 limit deeper (max trainable I {by['float64']} "
                      f"against {by['float32']} in float32, authors' settings): exactly-zero lengths are not what "
                      "decides, lengths far below Adam's ε are.")
    text = (f"CapsNet[20, 8] at I = {', '.join(map(str, depths))} in float64 sat at chance in {k64} of "
            f"{len(f64)} runs, as in float32 ({k32} of {len(f32)}): double precision did not move the "
            f"cliff by even one layer.{screen}")
    return Negative("Float64 did not move the cliff", text, rows, store)


def _missed_predictions(limits: pd.DataFrame) -> Optional[Negative]:
    """The initialisation screen's maximum depth against the paper's, where they differ (authors' settings,
    float32): Table 5 and Fig. 6."""
    if limits.empty:
        return None
    t = limits[(limits["preset"] == "authors") & (limits["dtype"] == "float32")
               & limits["agrees"].isin(["no", "bound violated"])]
    if t.empty:
        return None
    label = [f"[{c}, {d}]" + (f" PR {pr:g} (C′ = {ce})" if pr else "")
             for c, d, pr, ce in zip(t["C"], t["D"], t["PR"], t["C'"])]
    rows = pd.DataFrame({"CapsNet": label, "screen: max I": t["max trainable I"].to_numpy(),
                         "recurrence: max I": t["predicted max I"].to_numpy(),
                         "paper: max I (CIFAR-10)": t["paper max I"].to_numpy(),
                         "seeds": t["seeds"].to_numpy()})
    shown = "; ".join(f"{lab}: {s} against the paper's {p}" for lab, s, p in
                      zip(label, t["max trainable I"], t["paper max I"]))
    text = (f"The initialisation screen (the authors' settings, float32) missed the paper's maximum depth in "
            f"{len(t)} of {int(((limits['preset'] == 'authors') & (limits['dtype'] == 'float32')).sum())} "
            f"configurations: {shown}. A screen is a prediction for CIFAR-10's trained limits made on "
            "Fashion-MNIST at initialisation; where it misses, the paper's numbers stand unexplained by it.")
    return Negative("Predictions that missed", text, rows, "`results/depth_limits/fmnist.csv`")


def _missed_run_predictions(runs_profile: str, root: Path) -> Optional[Negative]:
    """Training runs whose outcome was predicted in a committed file before they ran, and missed: hypothesis
    H's arms (``results/collapse/predictions_h.md``), the remedies (``results/remedies/predictions.md``), the
    Table 5 and Fig. 6 runs' first-step predictions, seed 004's rule and Table 1's paired-difference predictions."""
    from .remedies_runs import predicted_vs_trained
    from .study_points import arm_outcomes

    arms = arm_outcomes(runs_profile, root)
    arms = arms[arms["as_predicted"].eq(False)]
    rem = predicted_vs_trained(root, runs_profile)
    rem = rem[rem["status"] == "missed"]
    from . import table5_runs
    from .kernel_runs import PREDICTED, load_similarity, seed004_outcome

    t5 = table5_runs.outcomes(root, runs_profile)
    t5 = t5[t5["as_predicted"].eq(False)]
    s4 = seed004_outcome(load_similarity(runs_profile, root))
    s4_missed = bool(s4["outcome"]) and "missed" in s4["text"]
    from . import fig6_runs, table1_runs

    f6 = fig6_runs.outcomes(root, runs_profile)
    f6 = f6[f6["as_predicted"].eq(False)]
    t1 = table1_runs.scored_predictions(table1_runs.claim(root, runs_profile))
    t1 = t1[t1["held"].eq(False)]
    t5 = pd.concat([t5, f6], ignore_index=True)  # per-run first-step predictions, Table 5's then Fig. 6's
    rows = pd.DataFrame({
        "point": [*arms["label"], *(f"{r}, I = {i}" for r, i in zip(rem["remedy"], rem["I"])),
                  *(f"{r.label}, seed {r.seed}" for r in t5.itertuples()),
                  *(["seed 004's measure against width"] if s4_missed else []),
                  *(f"Table 1 [16, 6]: {c}" for c in t1["comparison"])],
        "predicted": [*arms["predicted"], *rem["prediction"], *t5["predicted"],
                      *([f"{PREDICTED['verdict']} (the trend in {', '.join(PREDICTED['holds_in'])} only)"]
                        if s4_missed else []), *t1["prediction"]],
        "test acc (%) per seed": [*arms["accs"], *rem["accs"], *(f"{a:.1f}" for a in t5["test_acc"]),
                                  *(["—"] if s4_missed else []), *(["—"] * len(t1))],
        "observed": [*arms["observed"], *rem["observed"], *t5["observed"],
                     *([f"{s4['outcome']} (the trend in {', '.join(s4['holds_in'])})"] if s4_missed else []),
                     *t1["observed"]],
        "predictions": ["`results/collapse/predictions_h.md`"] * len(arms)
                       + ["`results/remedies/predictions.md`"] * len(rem)
                       + ["`results/table5_limits/predictions.md`"] * (len(t5) - len(f6))
                       + ["`results/fig6_depth/predictions.md`"] * len(f6)
                       + (["`results/kernel_widths/predictions.md`"] if s4_missed else [])
                       + ["`results/table1_pr/predictions.md`"] * len(t1)})
    if rows.empty:
        return None
    shown = "; ".join(f"{p}: predicted {pr}, observed {o} ({a} %)" for p, pr, a, o in
                      zip(rows["point"], rows["predicted"], rows["test acc (%) per seed"], rows["observed"]))
    text = (f"{len(rows)} predictions committed before their runs missed: {shown}. "
            "Each stays on its own page as missed; none was re-predicted after its rows landed.")
    return Negative("Run predictions that missed", text, rows,
                    f"`results/collapse_h/{runs_profile}.csv`, `results/remedies/{runs_profile}.csv`, "
                    f"`results/remedies_deep/{runs_profile}.csv`, `results/table5_limits/{runs_profile}.csv`, "
                    f"`results/kernel_widths/similarity_{runs_profile}.csv`, `results/fig6_depth/{runs_profile}.csv`, "
                    f"`results/table1_pr/{runs_profile}.csv`")


def _plateau_rescue_negative(runs_profile: str, root: Path) -> Optional[Negative]:
    """The rescue with every stage at a plateau: the prune, the unpruned backbone and every channel-selection
    arm, when every seed of every one of them sat at chance."""
    from .study_points import point_outcomes

    out = point_outcomes("collapse_plateau", runs_profile, root)
    if out.empty:
        return None
    lab = out["label"].astype(str)
    pts = out[lab.str.contains("CCM+CHIP|PR 0.25|pretrained backbone", regex=True)]
    if len(pts) < 2 or (pts["seeds"] < MIN_SEEDS).any() or (pts["at_chance"] != pts["seeds"]).any():
        return None
    from .criterion_runs import criterion_table

    rows = pts[["label", "seeds", "mean", "at_chance", "epochs"]].reset_index(drop=True)
    crit = criterion_table(root, runs_profile)
    steps = crit[(crit["study"] == "collapse_plateau") & crit["label"].isin(pts["label"])]["update_max"] \
        if not crit.empty else pd.Series(dtype=float)
    step = ("" if steps.empty or steps.isna().any() else
            "; each started retraining with a first Adam step of exactly 0 (its fit log)" if steps.max() == 0 else
            f"; the largest first Adam step of their retraining was {steps.max():.2g} (the fit logs)")
    text = (f"With every stage trained to a plateau, the CCM + CHIP prune at I = 7 and all {len(pts) - 1} of its "
            f"controls on the same backbones sat at chance in every seed ({', '.join(pts['label'])}): neither "
            "CHIP's channels, nor random ones, nor the highest-CI ones removed, nor CHIP without CCM, nor no "
            f"pruning at all revived the net{step}.")
    return Negative("No channel choice rescued the plateau-trained backbone", text, rows,
                    f"`results/collapse_plateau/{runs_profile}.csv`")


def _rescue_negative(summary: pd.DataFrame, store: str) -> Optional[Negative]:
    """The CCM + CHIP prune against its controls: did which channels CHIP keeps move anything?"""
    pts = summary[(summary["claim"] == "rescue") & (summary["seeds"] > 0)]
    test, ctrl = pts[pts["role"] == "test"], pts[pts["role"] == "control"]
    if test.empty or ctrl.empty:
        return None
    rows = summary_view(pts).reset_index()
    best = ctrl.loc[ctrl["test acc (%)"].idxmax()]
    t = test.iloc[0]
    rel = "no better than" if t["test acc (%)"] <= best["test acc (%)"] + (best["± std"] or 0) else "better than"
    ctrl_txt = " and ".join(f"`{r['point']}` ({r['test acc (%)']:.1f} %)" for _, r in ctrl.iterrows())
    text = (f"The pruned net trained ({t['test acc (%)']:.1f} % over {int(t['seeds'])} seeds), {rel} its controls "
            f"without a CHIP selection: {ctrl_txt}. Choosing channels by CCM + CHIP added nothing that a narrower "
            "net from scratch, or the same backbone unpruned, did not already give.")
    return Negative("The CCM + CHIP prune did not beat its controls", text, rows, store)


def _pipeline_stages(raw: pd.DataFrame, store: str) -> Optional[Negative]:
    """The pipeline's base and CCM stages (one epoch each): how far the backbone CHIP scores had learned."""
    if raw.empty or "stage" not in raw:
        return None
    st = raw[(raw["status"] == "ok") & raw["stage"].isin(["base", "ccm"])]
    st = st.drop_duplicates(["stage", "seed", "config_hash"], keep="last")  # prune points share these stages
    if st.empty:
        return None
    g = st.groupby("stage", sort=False)
    rows = pd.DataFrame({"stage": list(g.groups), "seeds": [", ".join(str(int(x)) for x in sorted(d["seed"].unique()))
                                                           for _, d in g],
                         "test acc, min": [_pct(v) for v in g["test_acc"].min()],
                         "test acc, max": [_pct(v) for v in g["test_acc"].max()]})
    text = (f"The base and CCM stages of the §3.5 pipeline, one epoch each, reached only "
            f"{_pct(st['test_acc'].min())} to {_pct(st['test_acc'].max())} test accuracy: CHIP scored the channels "
            "of a backbone that had barely learned, so the prune test says nothing about which channels CHIP "
            "keeps after a full training.")
    return Negative("One-epoch pipeline stages barely trained the backbone", text, rows, store)


def negative_results(runs_profile: str, root: Optional[str | Path] = None,
                     summary: Optional[pd.DataFrame] = None) -> list[Negative]:
    """What was tried and did not work or did not move anything, from the committed rows (``root``:
    default ``results/``): float64, predictions that missed, the prune against its controls, and the
    pipeline stages it rests on. A kind with no rows yet is left out."""
    from .chapters.collapse import depth_limit_table, load_depth_limits
    from .collapse_runs import collapse_points, load_collapse, run_summary

    root = results_root(root)
    rel = f"collapse/{runs_profile}.csv"
    store = f"`results/{rel}`"
    raw = _read_store(root, rel)
    limits = depth_limit_table(load_depth_limits(root), dtype=None)
    if summary is None:
        summary = run_summary(load_collapse(runs_profile, root), collapse_points(runs_profile))
    found = [_float64_negative(raw, limits, store), _missed_predictions(limits),
             _missed_run_predictions(runs_profile, root), _rescue_negative(summary, store),
             _plateau_rescue_negative(runs_profile, root), _pipeline_stages(raw, store)]
    return [n for n in found if n is not None]


def negative_markdown(n: Negative, number: int) -> str:
    """One negative result's heading line and text (CommonMark, for a notebook output)."""
    return f"**{number}. {n.title}.** {n.text} *Rows:* {n.source}."


# ======================================================================================
# The cost of the evidence, and what could not be tested
# ======================================================================================
def _evidence_kind(rel: str, runs_profile: str) -> str:
    """What a committed store holds, by its path under ``results/``."""
    if rel == f"collapse/{runs_profile}.csv":
        return "decisive training runs"
    if rel.startswith("depth_limits/"):
        return "initialisation screens"
    if rel.endswith("/smoke.csv"):
        return "smoke runs of the chapters and paper-table sweeps"
    return "other committed studies"


def evidence_cost(root: Optional[str | Path] = None, runs_profile: str = "cpu") -> pd.DataFrame:
    """Per kind of committed store (every ``results/**/*.csv`` whose rows record a wall time, ``wall_time``
    or ``wall_s``; reports excluded): its files, rows, the summed wall time (hours) and the devices the
    rows name. Every run is single-threaded on the CPU, so wall hours are CPU-core hours."""
    root = results_root(root)
    kinds: dict[str, dict] = {}
    for path in sorted(root.rglob("*.csv")):
        if path.name.endswith("_report.csv"):
            continue
        df = read_store_csv(path)
        col = next((c for c in ("wall_time", "wall_s") if c in df), None)
        if col is None or df.empty:
            continue
        rel = str(path.relative_to(root))
        k = kinds.setdefault(_evidence_kind(rel, runs_profile),
                             {"files": [], "rows": 0, "hours": 0.0, "devices": set()})
        k["files"].append(f"`results/{rel}`")
        k["rows"] += len(df)
        k["hours"] += float(pd.to_numeric(df[col], errors="coerce").sum()) / 3600
        if "device_name" in df:
            k["devices"].update(df["device_name"].dropna().astype(str))
    order = ["decisive training runs", "initialisation screens", "smoke runs of the chapters and paper-table sweeps",
             "other committed studies"]
    return pd.DataFrame([{"evidence": kind, "files": ", ".join(kinds[kind]["files"]), "rows": kinds[kind]["rows"],
                          "hours": kinds[kind]["hours"], "devices": "; ".join(sorted(kinds[kind]["devices"]))}
                         for kind in order if kind in kinds])


def make_book_cost(readme: Path) -> tuple[str, list[tuple[str, str]]]:
    """What the README measured for ``make book``: (the sentence that says when and where, [(step, time)]
    for every row of its timing table that runs ``make book``). ("", []) when the README has none."""
    if not readme.is_file():
        return "", []
    text = readme.read_text(encoding="utf8")
    m = re.search(r"\*\*What to expect\.\*\*\s*(.*?):\s*\n", text, re.S)
    where = re.sub(r"\s+", " ", m.group(1)).strip() if m else ""
    steps = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and "`make book`" in cells[0] and re.search(r"\d", cells[1]):
            steps.append((re.sub(r"\bafter it\b", "after the install", cells[0]), cells[1]))
    return where, steps


def could_not_test(vs: Sequence[Verdict]) -> list[str]:
    """What no machine of this project could test (Markdown list items): CIFAR-10, the GPU-scale profiles,
    what each verdict marks untestable, and every verdict graded "untestable here"."""
    from ..engine.config import PROFILES

    items = []
    cifar = [i for i, v in enumerate(vs, start=1) if "CIFAR-10" in v.untestable]
    if cifar:
        items.append("**CIFAR-10**, the paper's dataset: it could not be obtained on these machines, so the paper's "
                     f"accuracies themselves (claims {', '.join(map(str, cifar))}) stand beside ours, never "
                     "reproduced. Every run here is Fashion-MNIST, which tests the mechanism, not the numbers.")
    gpu = []
    for name in ("fmnist", "paper"):
        cfg = PROFILES[name]() if name in PROFILES else None
        if cfg is not None:
            gpu.append(f"`{name}` ({DATASET_LABELS.get(cfg.data.dataset, cfg.data.dataset)}, every training image, "
                       f"{cfg.train.epochs} epochs)")
    if gpu:
        items.append("**GPU-scale runs**: no GPU was lent to this project, so the profiles "
                     f"{' and '.join(gpu)} were never run; the decisive runs use the `cpu` profile.")
    for i, v in enumerate(vs, start=1):
        if v.untestable and "CIFAR-10" not in v.untestable:
            items.append(f"**{v.untestable[:1].upper() + v.untestable[1:]}**: not available here (claim {i}).")
        if v.verdict.startswith("untestable"):
            items.append(f"Claim {i} ({v.title or v.claim}) is graded *{v.verdict}*.")
    return items


def dead_at_retrain_start(root: Optional[str | Path], runs_profile: str) -> Optional[dict]:
    """The committed probe of the pruned net at the start of retraining (stage ``pruned`` of the prune
    point with PR > 0): {"pr", "C", "I", "dead" (seeds whose class capsules are all dead), "seeds", "label",
    "retrained" (mean test accuracy after retraining)}; None without such rows."""
    raw = _read_store(results_root(root), f"collapse/{runs_profile}.csv")
    if raw.empty or "stage" not in raw:
        return None
    pruned = raw[(raw["stage"] == "pruned") & (pd.to_numeric(raw["pr"], errors="coerce") > 0) & (raw["status"] == "ok")]
    if pruned.empty:
        return None
    label = pruned["label"].iloc[0]
    pruned = pruned[pruned["label"] == label].drop_duplicates("seed", keep="last")
    dead = [json.loads(d).get("class") == 1.0 for d in pruned["dead_000"]]
    retrain = raw[(raw["stage"] == "retrain") & (raw["label"] == label)].drop_duplicates("seed", keep="last")
    return {"pr": float(pruned["pr"].iloc[0]), "C": int(pruned["model.C"].iloc[0]), "I": int(pruned["model.I"].iloc[0]),
            "dead": int(sum(dead)), "seeds": len(dead), "label": label,
            "retrained": float(retrain["test_acc"].mean()) if len(retrain) else float("nan")}
