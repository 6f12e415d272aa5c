"""The paper's experiments as named grids of independent runs, with the paper's own numbers.

Each :class:`Experiment` knows

* its grid of :class:`Point`\\ s for a profile: the paper's full grid under
  ``paper`` (CIFAR-10) and ``fmnist`` (Fashion-MNIST at paper scale), and a
  miniature of the same shape under ``smoke`` (small C, D and I, a data subset,
  one epoch) so that every sweep runs on a CPU in minutes;
* the paper's table, as printed (Sahu & Altahhan 2024, CIFAR-10).

A smoke grid exercises the code path; its numbers are never a reproduction.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..engine.config import RunConfig, apply_overrides
from ..engine.config import profile as make_profile
from ..engine.provenance import capslib_version

__all__ = ["Point", "Experiment", "EXPERIMENTS", "get_experiment", "PAPER_TABLES", "SEED002_ROUTINGS",
           "STUDY_ROUTINGS", "seed002_point", "COLLAPSE", "collapse_limits", "point_key", "tag_rows"]


@dataclass(frozen=True)
class Point:
    """One independent run of a grid.

    ``kind``: "train" (capslib train), "snapshots" (a training that also records
    the capsule activations after epoch 1 and after the last epoch, seed 002's
    Figs. 6-7; :func:`capslib.experiments.depth_study.study_row`), "prune" (the §3.5
    pipeline at ``pr``, retrained with ``I_after`` IntermediateCaps) or "depth"
    (a depth search, with pruning at ``pr`` when ``pr > 0``).

    A point of a study that tests claims (``collapse``) also says which ``claim`` it decides, whether it
    is that claim's "test" or its "control" (``role``), and ``why``; the verdict page reads them. None of
    the three enters the point's key.
    """

    kind: str
    overrides: tuple[tuple[str, Any], ...]
    pr: float = 0.0
    I_after: Optional[int] = None
    max_I: Optional[int] = None
    label: str = ""
    claim: str = ""
    role: str = ""
    why: str = ""
    #: For a "prune" point: which channels go (:data:`capslib.experiments.pipeline.SELECTIONS`).
    selection: str = "chip"

    def config(self, profile: str, seed: int = 0) -> RunConfig:
        return apply_overrides(make_profile(profile), seed=seed, **dict(self.overrides))

    def key_extra(self) -> str:
        sel = "" if self.selection == "chip" else f"|selection={self.selection}"  # older keys unchanged
        return f"{self.kind}|pr={self.pr}|I_after={self.I_after}|max_I={self.max_I}{sel}"

    def describe(self) -> str:
        ov = " ".join(f"{k}={v}" for k, v in self.overrides)
        extra = []
        if self.kind in ("prune", "depth"):
            extra.append(f"PR={self.pr}")
        if self.I_after is not None:
            extra.append(f"I_after={self.I_after}")
        if self.max_I is not None:
            extra.append(f"max_I={self.max_I}")
        if self.selection != "chip":
            extra.append(f"selection={self.selection}")
        return f"{self.kind:5s} {ov} {' '.join(extra)}".rstrip()


def _cd(C: int, D: int, **kw: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(dict(C=C, D=D, **kw).items()))


# --------------------------------------------------------------------------------------
# The paper's numbers (CIFAR-10, test accuracy in %; Table 5: maximum depth I).
# --------------------------------------------------------------------------------------
TABLE1_CONFIGS = [(10, 8), (20, 8), (32, 8), (16, 6), (16, 12), (8, 12)]
TABLE1_PR = [0.0, 0.125, 0.25, 0.375, 0.5, 0.6, 0.75]  # 0.625 for D = 6 and 12 (the table's *)
TABLE1 = {
    (10, 8): [73.92, 74.26, 74.37, 74.53, 74.71, 74.09, 73.84],
    (20, 8): [77.05, 78.71, 77.75, 77.61, 76.76, 76.88, 76.12],
    (32, 8): [77.37, 78.01, 76.88, 78.50, 78.50, 77.24, 76.63],
    (16, 6): [75.40, 75.54, 75.39, 74.66, 73.99, 73.02, 71.49],
    (16, 12): [76.30, 79.12, 78.43, 78.43, 78.21, 77.02, 75.06],
    (8, 12): [75.12, 76.12, 75.46, 75.44, 74.94, 75.39, 74.28],
}
TABLE2_CONFIGS = [(10, 8), (20, 8), (16, 12), (8, 12)]
TABLE2 = {
    (10, 8): [73.9, 75.2, 75.2, 75.5, 75.4, 74.3, 74.1, 75.2, 74.4, 73.3, 73.5],
    (20, 8): [77.1, 76.7, 77.3, 77.7, 77.4, 76.8, 76.2, 10, 10, 10, 10],
    (16, 12): [76.3, 78.6, 78.6, 78.2, 77.1, 77.6, 76.7, 76.4, 75, 75.6, 74.3],
    (8, 12): [75.1, 75.1, 75.2, 75.4, 75.1, 75.5, 75.1, 75.3, 73.7, 75.3, 75.2],
}
TABLE3 = {0.0: {6: 76.2, 7: 10}, 0.125: {6: 78.9, 7: 79.3}, 0.25: {6: 79.5, 7: 79.6}, 0.375: {6: 79.0, 7: 79.2}}
KERNEL3 = dict(backbone_kernels=(3, 3, 3), backbone_strides=(1, 2, 1), backbone_padding=(1, 1, 1),
               primary_kernel=3, primary_stride=2, primary_padding=0)
KERNEL5 = dict(backbone_kernels=(5, 5, 5), backbone_strides=(1, 1, 1), backbone_padding=(0, 0, 0),
               primary_kernel=5, primary_stride=1, primary_padding=0)
TABLE4 = [((32, 8), "k5", 82.17), ((32, 8), "k3", 77.37), ((20, 8), "k5", 72.94), ((20, 8), "k3", 77.05)]
TABLE5 = {(20, 10): 8, (20, 8): 6, (20, 6): 4, (16, 6): 5, (10, 6): 7, (10, 8): ">30"}

#: The paper's tables, keyed by experiment name, as long-format records for reports.
PAPER_TABLES: dict[str, list[dict[str, Any]]] = {
    "table1": [dict(C=c, D=d, PR=(0.625 if pr == 0.6 and d != 8 else pr), paper=v)
               for (c, d), vals in TABLE1.items() for pr, v in zip(TABLE1_PR, vals)],
    "table2": [dict(C=c, D=d, I=i, paper=v) for (c, d), vals in TABLE2.items() for i, v in enumerate(vals)],
    "table3": [dict(C=20, D=8, PR=pr, I=i, paper=v) for pr, row in TABLE3.items() for i, v in row.items()],
    "table4": [dict(C=c, D=d, kernels=k, paper=v) for (c, d), k, v in TABLE4],
    "table5": [dict(C=c, D=d, paper=v) for (c, d), v in TABLE5.items()],
    "fig3": [],
    "seed002_depth": [],  # seed 002 prints figures, not tables (Everett et al., Figs. 1-5)
    # the collapse study's decisive runs: the paper has no such table (Table 3 has no same-width control)
    "collapse": [], "collapse_h": [], "collapse_plateau": [], "remedies": [], "remedies_deep": [],
    # table1_pr's paper row is TABLE1[(16, 6)] (label-keyed rows do not merge with PR-keyed paper rows)
    "kernel_widths": [], "seed002_dead": [], "table1_pr": [], "fig6_depth": [],
    "table5_limits": [dict(C=c, D=d, paper=v) for (c, d), v in TABLE5.items()],
}


@dataclass
class Experiment:
    """A named grid of independent runs.

    ``versioned`` (default True): a sweep point's key holds the capslib version, so after any library
    edit a resumed sweep runs every point again. False: the key is experiment + config hash + point
    (+ seed, through the config) only, so finished rows stay done across library versions - for a
    long study run over several sittings from a frozen snapshot; each row still records the version
    it was made with (``capslib_version``). ``point_major``: a sweep runs every seed of the first point,
    then every seed of the next (so the grid's order is its priority), instead of seed by seed.
    """

    name: str
    title: str
    grid_fn: Callable[[str], list[Point]]
    default_profile: str = "fmnist"
    columns: tuple[str, ...] = field(default_factory=tuple)
    versioned: bool = True
    point_major: bool = False
    #: Prune points of one base config and seed share their checkpoint folder, so the base and CCM stages
    #: (whose folders are keyed by their chain) are trained once for every selection arm and PR.
    shared_stages: bool = False

    def grid(self, profile: str) -> list[Point]:
        return self.grid_fn(profile)


def _small(profile: str) -> bool:
    return profile == "smoke"


def _table1(profile: str) -> list[Point]:
    if _small(profile):
        return [Point("prune", _cd(c, d, I=0), pr=pr) if pr else Point("train", _cd(c, d, I=0))
                for c, d in [(8, 4), (8, 8)] for pr in (0.0, 0.25, 0.5)]
    pts = []
    for c, d in TABLE1_CONFIGS:
        for pr in TABLE1_PR:
            pr = 0.625 if pr == 0.6 and d != 8 else pr
            pts.append(Point("prune", _cd(c, d, I=0), pr=pr) if pr else Point("train", _cd(c, d, I=0)))
    return pts


def _table2(profile: str) -> list[Point]:
    if _small(profile):
        return [Point("train", _cd(4, 4, I=i)) for i in range(3)]
    return [Point("train", _cd(c, d, I=i)) for c, d in TABLE2_CONFIGS for i in range(11)]


def _table3(profile: str) -> list[Point]:
    if _small(profile):
        C, D, depths, prs = 8, 4, (1, 2), (0.0, 0.25)
    else:
        C, D, depths, prs = 20, 8, (6, 7), (0.0, 0.125, 0.25, 0.375)
    # the paper prunes the I = 0 base model, then rebuilds it with I IntermediateCaps
    return [Point("prune", _cd(C, D, I=0), pr=pr, I_after=i) if pr else Point("train", _cd(C, D, I=i))
            for pr in prs for i in depths]


def _table4(profile: str) -> list[Point]:
    configs = [(4, 4)] if _small(profile) else [(32, 8), (20, 8)]
    return [Point("train", _cd(c, d, **(KERNEL5 if k == "k5" else KERNEL3)), label=k)
            for c, d in configs for k in ("k5", "k3")]


def _table5(profile: str) -> list[Point]:
    if _small(profile):
        return [Point("depth", _cd(8, 4), max_I=2)]
    return [Point("depth", _cd(c, d), max_I=(31 if (c, d) == (10, 8) else 12)) for c, d in TABLE5]


def _fig3(profile: str) -> list[Point]:
    if _small(profile):
        return [Point("train", _cd(4, 4, I=2, epochs=2))]
    return [Point("train", _cd(20, 8, I=6))]


#: Seed 002's routing algorithms (Everett et al., §3.1); see capslib.engine.routing_alt.
SEED002_ROUTINGS = ("em", "self", "vb")
#: The depth study's routings: the main paper's dynamic routing, for comparison, then seed 002's.
STUDY_ROUTINGS = ("dynamic",) + SEED002_ROUTINGS


def seed002_point(routing: str, depth: int, profile: str) -> Point:
    """One run of seed 002's depth study: ``depth`` ConvCaps layers routed by ``routing``.

    Seed 002 §3.1 uses 16 capsule types whenever there is more than one capsule layer; here every
    depth uses 16 types (PrimaryCaps and ConvCaps share C) and 4×4 poses (D = 16); dataset, epochs
    and optimiser come from the profile. The smoke miniature (CPU) uses 4 types, 3×3 poses (D = 9),
    lr 3e-3 and two epochs on 2,000 images (votes kept in memory, a few MB at this size), so that it
    learns something in seconds and its epoch-1 and last-epoch activations (Figs. 6-7) differ. The
    run records both ("snapshots" point).
    """
    if _small(profile):
        over = _cd(4, 9, I=depth, routing=routing, lr=0.003, epochs=2, train_size=2000, val_size=500,
                   recompute_votes=False)
    else:
        over = _cd(16, 16, I=depth, routing=routing)
    return Point("snapshots", over, label=f"{routing} I={depth}")


def _seed002_depth(profile: str) -> list[Point]:
    depths = range(1, 4) if _small(profile) else range(1, 11)
    return [seed002_point(r, d, profile) for r in STUDY_ROUTINGS for d in depths]


# --------------------------------------------------------------------------------------
# Issue 10, part 4: the decisive runs of the collapse study (hypothesis H: the cliff is the capsule
# length map at initialisation). Depths and the remedy come from forward screens at initialisation
# (collapse_limits, capslib.experiments.init_study); see COLLAPSE and results/collapse/README.md.
# --------------------------------------------------------------------------------------

#: The collapse study's fixed numbers (profile ``cpu``: CapsNet[20, 8], ConvCaps and class init std 0.5).
#:
#: * ``L`` = 7: the smallest per-seed depth limit of the screen (:func:`collapse_limits`, results/collapse/
#:   limits_cpu.csv): on the first three training batches of each seed's own run the class lengths at
#:   initialisation are exactly 0 from I = 7 on 4 of 9 batches (seeds 0 and 2) and from I = 8 on the
#:   others, are <= 5e-13 at I = 7 everywhere, and the PrimaryCaps gradient at I = 7 is 0 or 1e-13 (Adam
#:   moves a parameter by ~lr·g/(|g| + 1e-8): nothing). It is also where the paper (Table 2) and the
#:   issue's pilot collapse. ``L_exact`` = 8: exactly 0 on every screened batch in float32;
#:   ``L_exact64``: the same in float64 (deeper; see limits_cpu.csv).
#: * ``C_pruned``, ``widths_pruned``: CapsNet[20, 8] pruned at PR 0.25 by the paper's rule (C' = 15),
#:   the architecture the prune pipeline rebuilds (:func:`capslib.experiments.init_study.pruned_model_config`).
#: * the remedy: every ConvCaps at ``remedy_std`` and the class capsules at ``remedy_class_std``, chosen
#:   from the length map so that lengths neither vanish nor saturate over ``remedy_I`` >= 1.5·7 layers.
COLLAPSE: dict[str, Any] = dict(C=20, D=8, std=0.5, L=7, L_exact=8, L_exact64=10, pr=0.25, C_pruned=15,
                                widths_pruned=(24, 56, 120), remedy_I=11, remedy_std=0.6, remedy_class_std=0.1)
#: The smoke miniature of the same grid (tiny C, D and depths; a code path, never a result).
COLLAPSE_SMOKE: dict[str, Any] = dict(C=8, D=4, std=0.5, L=2, L_exact=2, L_exact64=2, pr=0.25, C_pruned=6,
                                      widths_pruned=(4, 12, 24), remedy_I=3, remedy_std=0.6, remedy_class_std=0.1)


def _collapse(profile: str) -> list[Point]:
    """The decisive runs, in priority order (a ``point_major`` sweep runs every seed of one point before
    the next): from scratch at L−1 and L (and L+1 = L_exact); C' = 15 from scratch and CCM + CHIP pruned
    at PR 0.25, both at L; the pretrained-backbone-unpruned control (the §3.5 pipeline at PR 0: the
    CCM-trained C20 backbone, fresh capsule layers at L, retrained); the remedy at ``remedy_I`` layers;
    float64 at L and L+1 last (the slowest runs: float64 trains ~1.7x slower than float32 on CPU). Every
    point's label is unique (the report keys on it); each says which claim it decides and how."""
    k = COLLAPSE_SMOKE if _small(profile) else COLLAPSE
    C, D, L, std = k["C"], k["D"], k["L"], k["std"]
    pruned = dict(backbone_widths=k["widths_pruned"])
    collapse = dict(claim="collapse")
    rescue_control = dict(claim="rescue", role="control",
                          why="no CHIP selection: decides whether pruning or fewer types C′ rescues")
    precision = dict(claim="precision", role="test",
                     why="the same net in float64: does the cliff move by more than one layer?")
    return [
        Point("train", _cd(C, D, I=L - 1, init_std=std), label=f"C{C} I={L - 1} (L-1)", role="control",
              why="one layer below the cliff: must train", **collapse),
        Point("train", _cd(C, D, I=L, init_std=std), label=f"C{C} I={L} (L)", role="test",
              why="the paper's collapse: must sit at chance", **collapse),
        Point("train", _cd(C, D, I=L + 1, init_std=std), label=f"C{C} I={L + 1} (L+1)", role="test",
              why="beyond the cliff: must sit at chance", **collapse),
        Point("train", _cd(k["C_pruned"], D, I=L, init_std=std, **pruned),
              label=f"C'={k['C_pruned']} from scratch I={L} (same-width control)", **rescue_control),
        Point("prune", _cd(C, D, I=0, init_std=std), pr=k["pr"], I_after=L,
              label=f"CCM+CHIP PR {k['pr']:g} (C'={k['C_pruned']}) I={L}", claim="rescue", role="test",
              why="CCM + CHIP prune of the base model, fresh ConvCaps"),
        Point("prune", _cd(C, D, I=0, init_std=std), pr=0.0, I_after=L,
              label=f"C{C} pretrained backbone, unpruned, I={L} (control)", **rescue_control),
        Point("train", _cd(C, D, I=k["remedy_I"], init_std=k["remedy_std"], class_init_std=k["remedy_class_std"]),
              label=f"remedy: C{C} I={k['remedy_I']} std {k['remedy_std']:g}, class std {k['remedy_class_std']:g}",
              claim="remedy", role="test",
              why="no pruning: an init scale chosen from the length map, at ≥ 1.5× the limit"),
        Point("train", _cd(C, D, I=L, init_std=std, dtype="float64"), label=f"C{C} I={L} (L) float64", **precision),
        Point("train", _cd(C, D, I=L + 1, init_std=std, dtype="float64"), label=f"C{C} I={L + 1} (L+1) float64",
              **precision),
    ]


#: Hypothesis H, one factor per arm, at the decisive runs' budget (one epoch): the remedy's two init changes
#: apart, an init the length map says saturates, and the remedy at the paper's Table 5 maximum (I = 30).
#: The predictions were committed before the runs (results/collapse/predictions_h.md).
H_ARMS: tuple[tuple[str, float, float, int, str], ...] = (
    ("ConvCaps std 0.6 alone", 0.6, 0.5, 11, "the remedy's ConvCaps std with the authors' class std"),
    ("class std 0.1 alone", 0.5, 0.1, 11, "the remedy's class std with the authors' ConvCaps std"),
    ("std 0.8, class std 0.1", 0.8, 0.1, 11, "an init the length map says saturates"),
    ("remedy at I=30", 0.6, 0.1, 30, "the remedy at the paper's Table 5 maximum depth"),
)


def _collapse_h(profile: str) -> list[Point]:
    """Hypothesis H factor by factor (:data:`H_ARMS`; the smoke miniature runs them at depth 3)."""
    k = COLLAPSE_SMOKE if _small(profile) else COLLAPSE
    return [Point("train", _cd(k["C"], k["D"], I=I if not _small(profile) else 3, init_std=std,
                               class_init_std=class_std),
                  label=f"H: {name}, C{k['C']} I={I if not _small(profile) else 3}", claim="remedy", role="test",
                  why=why)
            for name, std, class_std, I, why in H_ARMS]


#: The plateau rule of the rigorous-verdicts runs: at most 10 epochs, stop after 3 without a better
#: validation accuracy (every stage of a pipeline point too).
PLATEAU = dict(epochs=10, patience=3)


def _collapse_plateau(profile: str) -> list[Point]:
    """The decisive points trained to a plateau (:data:`PLATEAU`), cheapest decisive first, with the
    channel-selection controls of the rescue at the same per-layer removal counts."""
    k = COLLAPSE_SMOKE if _small(profile) else COLLAPSE
    C, D, L, std, pr = k["C"], k["D"], k["L"], k["std"], k["pr"]
    plateau = PLATEAU if not _small(profile) else dict(epochs=2, patience=1)
    base = _cd(C, D, I=0, init_std=std, **plateau)
    rescue = dict(claim="rescue", role="control")
    arms = [Point("prune", base, pr=pr, I_after=L, selection=sel,
                  label=f"plateau: PR {pr:g} {name} I={L}", why=why, **rescue)
            for sel, name, why in (("random", "random channels", "no CHIP: channels drawn at random"),
                                   ("anti_chip", "highest-CI channels removed", "CHIP's ranking reversed"),
                                   ("chip_base", "CHIP on the base model, no CCM", "CHIP without the CCM stage"))]
    return [
        Point("train", _cd(k["C_pruned"], D, I=L, init_std=std, backbone_widths=k["widths_pruned"], **plateau),
              label=f"plateau: C'={k['C_pruned']} from scratch I={L}", why="fewer types, no pruning", **rescue),
        Point("train", _cd(C, D, I=L - 1, init_std=std, **plateau), label=f"plateau: C{C} I={L - 1}",
              claim="collapse", role="control", why="one layer below the cliff"),
        Point("train", _cd(C, D, I=L, init_std=std, **plateau), label=f"plateau: C{C} I={L}",
              claim="collapse", role="test", why="the collapse, given ten epochs"),
        Point("prune", base, pr=pr, I_after=L, label=f"plateau: CCM+CHIP PR {pr:g} I={L}", claim="rescue",
              role="test", why="the paper's rescue, every stage to a plateau"),
        Point("prune", base, pr=0.0, I_after=L, label=f"plateau: C{C} pretrained backbone, unpruned, I={L}",
              why="the CCM-trained backbone without pruning", **rescue),
        *arms,
        Point("train", _cd(C, D, I=k["remedy_I"], init_std=k["remedy_std"], class_init_std=k["remedy_class_std"],
                           **plateau),
              label=f"plateau: remedy C{C} I={k['remedy_I']}", claim="remedy", role="test",
              why="the length-map init without pruning, given ten epochs"),
    ]


def collapse_limits(profile: str = "cpu", seeds: int = 3, batches: int = 3, I_max: int = 12,
                    dtypes: tuple[str, ...] = ("float32", "float64"), remedy: bool = True):
    """The depth limits behind :data:`COLLAPSE`: for every from-scratch model config of the grid (C20 and
    C' = 15; the remedy at its own stds when ``remedy``), each seed and each of the first ``batches``
    *training* batches that seed's run sees (the profile's data split, batch size and shuffle), the
    first I whose class capsule lengths are exactly zero on the batch at initialisation
    (:func:`capslib.experiments.init_study.depth_limit`, which builds exactly the model ``fit`` builds from the seed),
    the largest class length at L−1, L, L+1, and the max |gradient| of the margin loss on the PrimaryCaps
    conv at each of those depths on the first batch (:func:`capslib.experiments.init_study.gradient_at`; Adam moves a
    parameter by ~lr·g/(|g| + 1e-8), so a gradient far below 1e-8 moves nothing). A pandas DataFrame,
    one row per (config, dtype, seed, batch). Forward screens only: minutes on one thread."""
    import pandas as pd
    import torch

    from ..engine.data import load_splits
    from .init_study import depth_limit, gradient_at

    k = COLLAPSE_SMOKE if _small(profile) else COLLAPSE
    base = make_profile(profile)
    data = load_splits(base.data)
    configs = {f"C{k['C']}": base.model.replace(C=k["C"], D=k["D"], init_std=k["std"]),
               f"C'={k['C_pruned']}": base.model.replace(C=k["C_pruned"], D=k["D"], init_std=k["std"],
                                                         backbone_widths=k["widths_pruned"])}
    if remedy:
        configs["remedy"] = base.model.replace(C=k["C"], D=k["D"], init_std=k["remedy_std"],
                                               class_init_std=k["remedy_class_std"])
    rows = []
    for name, mcfg in configs.items():
        for dtype in dtypes:
            for seed in range(seeds):
                it = data.batches("train", base.train.batch_size, shuffle=True, seed=seed, epoch=0)
                for b, (x, y) in zip(range(batches), it):
                    r = depth_limit(mcfg.replace(I=0), x, seed=seed, dtype=dtype, I_max=I_max)
                    row = dict(config=name, C=mcfg.C, D=mcfg.D, init_std=mcfg.init_std, class_std=mcfg.class_std,
                               dtype=dtype, seed=seed, batch=b, limit=r.limit, I_max=I_max,
                               class_max=[float(f"{v:.3e}") for v in r.class_max])
                    if b == 0 and name != "remedy":
                        for I in (k["L"] - 1, k["L"], k["L"] + 1):
                            with torch.random.fork_rng(devices=[]):
                                row[f"grad_primary_I{I}"] = gradient_at(mcfg, x, y, I, seed, dtype)["primary"]
                    rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# Issue 23: going deep without pruning. The known remedies for vanishing activations, each alone on the
# collapse study's model and budget (profile cpu: CapsNet[20, 8], std 0.5 everywhere else, one epoch),
# beside the length-map init (the collapse study's remedy) and pruning at PR 0.375 with its C' control.
# --------------------------------------------------------------------------------------

#: (name, config overrides, why): each remedy of :mod:`capslib.engine` (ModelConfig fields, off by default).
REMEDIES: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("squash bias 0.1", dict(squash_bias=0.1), "Peer et al. 2021: a trainable bias before every squash, at 0.1"),
    ("Efficient-CapsNet squash", dict(squash_fn="efficient"), "Mazzia et al. 2021: about linear for short s"),
    ("residual ConvCaps", dict(residual=True), "each ConvCaps adds its input poses after the squash (DeepCaps)"),
)
#: Depths of the remedy grid (the smoke miniature's in brackets): the collapse study's remedy depth 11 (3)
#: and the paper's Table 5 maximum 30 (5).
REMEDY_DEPTHS = {"cpu": (11, 30), "smoke": (3, 5)}
#: The prune beside the remedies: PR 0.375 leaves C' = 12, widths 24/48/96 of CapsNet[20, 8] (C' = 5,
#: widths 4/8/20 of the smoke CapsNet[8, 4]), the paper's rule (``make_plan``).
REMEDY_PRUNE = {"cpu": (0.375, 12, (24, 48, 96)), "smoke": (0.375, 5, (4, 8, 20))}


def _remedy_arms(profile: str, I: int) -> list[Point]:
    k = COLLAPSE_SMOKE if _small(profile) else COLLAPSE
    return [Point("train", _cd(k["C"], k["D"], I=I, init_std=k["std"], **over), label=f"{name}, C{k['C']} I={I}",
                  claim="deep", role="test", why=why) for name, over, why in REMEDIES]


def _remedies(profile: str) -> list[Point]:
    """Every remedy at the shallow depth, then CCM + CHIP at PR 0.375 and the same C' from scratch there."""
    k = COLLAPSE_SMOKE if _small(profile) else COLLAPSE
    I = REMEDY_DEPTHS["smoke" if _small(profile) else "cpu"][0]
    pr, C_pruned, widths = REMEDY_PRUNE["smoke" if _small(profile) else "cpu"]
    return [*_remedy_arms(profile, I),
            Point("prune", _cd(k["C"], k["D"], I=0, init_std=k["std"]), pr=pr, I_after=I,
                  label=f"CCM+CHIP PR {pr:g} (C'={C_pruned}) I={I}", claim="deep", role="control",
                  why="the paper's remedy at the same depth"),
            Point("train", _cd(C_pruned, k["D"], I=I, init_std=k["std"], backbone_widths=widths),
                  label=f"C'={C_pruned} from scratch I={I}", claim="deep", role="control",
                  why="the prune's architecture, fresh")]


def _remedies_deep(profile: str) -> list[Point]:
    """Every remedy at the deep depth (run only those that trained at the shallow one: ``sweep --only``)."""
    return _remedy_arms(profile, REMEDY_DEPTHS["smoke" if _small(profile) else "cpu"][1])


# --------------------------------------------------------------------------------------
# Seed 004's claim (kernel similarity measures redundancy): CapsNets of several widths trained from scratch,
# whose conv kernels `capslib.experiments.kernel_study` scores against their initial and Gaussian kernels.
# --------------------------------------------------------------------------------------

#: Table 1's PR-0 configurations at D = 8 (the smoke miniature's in brackets): layer widths C·D/4, C·D/2, C·D
#: and the PrimaryCaps' C·D, from 20 to 256 channels.
KERNEL_WIDTHS = {"cpu": (10, 20, 32), "smoke": (4, 8)}


def _kernel_widths(profile: str) -> list[Point]:
    """CapsNet[C, 8, 0] for each C of :data:`KERNEL_WIDTHS`, trained to a plateau (:data:`PLATEAU`), narrowest
    first; the smoke miniature: D = 4, one epoch."""
    small = _small(profile)
    D = 4 if small else 8
    plateau = dict(epochs=1) if small else PLATEAU
    return [Point("train", _cd(C, D, I=0, **plateau),
                  label=f"kernels: C{C} D{D} I=0 (widths {C * D // 4}, {C * D // 2}, {C * D}; PrimaryCaps {C * D})",
                  claim="seed004", role="test", why="a trained model of this width for seed 004's measure")
            for C in KERNEL_WIDTHS["smoke" if small else "cpu"]]


# --------------------------------------------------------------------------------------
# Table 5 at the decisive runs' profile: each configuration trained one layer below, at and one layer beyond the
# depth limit the first-step rule puts it at (``results/table5_limits/screen_cpu.csv``, the seeds' majority).
# --------------------------------------------------------------------------------------

#: (C, D) -> the screen's limit L (the first I whose first Adam step is below 1e-5, majority of 3 seeds; ``cpu``
#: profile, std 0.5) and the depths trained. [20, 8] is left out: the collapse study trains it at 6, 7, 8.
#: [10, 8] reaches no limit by I = 40; it is trained at 20 (the authors'-settings screen's limit), 25 and 31
#: (the paper's "> 30"). Cheapest first.
TABLE5_LIMITS: dict[tuple[int, int], tuple[Optional[int], tuple[int, ...]]] = {
    (10, 6): (8, (7, 8, 9)), (10, 8): (None, (20, 25, 31)), (16, 6): (6, (5, 6, 7)), (20, 6): (5, (4, 5, 6)),
    (20, 10): (9, (8, 9, 10))}
#: The std of the arm that the screen says should die at each configuration's std-0.5 maximum depth.
TABLE5_LOW_STD = 0.3


def _table5_limits(profile: str) -> list[Point]:
    """Every configuration of :data:`TABLE5_LIMITS` from scratch at its depths (std 0.5), then each at std 0.3 at
    its std-0.5 maximum (L − 1; [10, 8] at 20); [20, 10], the costliest, last. The smoke miniature: CapsNet[8, 4]
    at I = 1, 2, 3 and std 0.3 at 1."""
    if _small(profile):
        return [Point("train", _cd(8, 4, I=I, init_std=0.5), label=f"Table 5 [8, 4]: I={I}", claim="table5",
                      role="test")
                for I in (1, 2, 3)] + [Point("train", _cd(8, 4, I=1, init_std=TABLE5_LOW_STD), claim="table5",
                                             label="Table 5 [8, 4]: std 0.3, I=1", role="test")]
    main, low, last = [], [], []
    for (C, D), (L, depths) in TABLE5_LIMITS.items():
        below = depths[0]
        for I in depths:
            role = "control" if L is not None and I < L else "test"
            pt = Point("train", _cd(C, D, I=I), label=f"Table 5 [{C}, {D}]: I={I}", claim="table5", role=role,
                       why="below the screen's limit" if role == "control" else "at or beyond the screen's limit")
            (last if (C, D) == (20, 10) else main).append(pt)
        low.append(Point("train", _cd(C, D, I=below, init_std=TABLE5_LOW_STD),
                         label=f"Table 5 [{C}, {D}]: std {TABLE5_LOW_STD:g}, I={below}", claim="table5", role="test",
                         why="the std-0.5 maximum at std 0.3: the screen says it should die"))
    return main + low + last


# --------------------------------------------------------------------------------------
# Seed 002 at the cpu profile: dead capsules against depth for each routing, at initialisation and after training.
# --------------------------------------------------------------------------------------

#: (routing, depth) in priority order, cheapest first (per-image costs measured by benchmarks/bench_seed002.py,
#: results/seed002_depth/bench_cpu.csv: EM and VB cost 11-21× dynamic routing), EM and VB at depth 5 last.
SEED002_DEAD = (("dynamic", 1), ("dynamic", 3), ("dynamic", 5), ("self", 1), ("self", 3), ("self", 5),
                ("em", 1), ("vb", 1), ("em", 3), ("vb", 3), ("em", 5), ("vb", 5))


def _seed002_dead(profile: str) -> list[Point]:
    """Seed 002's capsule sizes (16 types, 4×4 poses: C = 16, D = 16) with the library's default init std 0.3 (the
    seed-002 study's; the cpu profile's 0.5 is the authors' CapsNet's), on the profile's data and budget (``cpu``:
    3,000 images, one epoch); "snapshots" points, so every row has the dead share at initialisation, after epoch 1
    and after training. The smoke miniature: dynamic and EM at depth 1 of the routing chapter's tiny net."""
    if _small(profile):
        return [Point("snapshots", seed002_point(r, 1, profile).overrides, label=f"seed 002 {r} I=1",
                      claim="seed002", role="test") for r in ("dynamic", "em")]
    return [Point("snapshots", _cd(16, 16, I=I, routing=r, init_std=0.3), label=f"seed 002 {r} I={I}",
                  claim="seed002", role="control" if I == 1 else "test",
                  why="depth 1: must train well above chance" if I == 1 else "deeper: dead share against depth")
            for r, I in SEED002_DEAD]


# --------------------------------------------------------------------------------------
# Table 1's PR trend on its cheapest configuration, every stage to a plateau, with the pipeline's PR 0 control.
# --------------------------------------------------------------------------------------

#: CapsNet[16, 6, 0], Table 1's cheapest configuration that the paper's prune rule can plan at every PR ([10, 8] keeps
#: 4 of conv1's 20 channels from PR 0.5 on, fewer than D; ``check_prunable``), on 5,000 training images, 1,000
#: validation and the full 10,000-image test split (a 1-point effect needs the test noise of one run, about ±0.4
#: points, well below it); every stage to a plateau (:data:`PLATEAU`).
TABLE1_TREND = dict(C=16, D=6, prs=(0.125, 0.25, 0.5, 0.75),
                    data=dict(train_size=5000, val_size=1000, test_size=10000))


def _table1_pr(profile: str) -> list[Point]:
    """Plain training (PR 0), the pipeline at PR 0 (base, CCM, retrain: the pruned cells' extra training matched),
    CCM + CHIP at each PR, random channels at PR 0.5. Seed-major (not ``point_major``), so a seed's paired cells
    come from one sitting and one machine (:data:`TABLE1_TREND`). The smoke miniature: CapsNet[8, 4, 0], PR 0 and 0.5,
    one epoch."""
    small = _small(profile)
    C, D, prs = (8, 4, (0.5,)) if small else (TABLE1_TREND["C"], TABLE1_TREND["D"], TABLE1_TREND["prs"])
    over = _cd(C, D, I=0, **(dict(epochs=1) if small else dict(**PLATEAU, **TABLE1_TREND["data"])))
    tag = f"Table 1 [{C}, {D}]"
    t1 = dict(claim="table1")
    return [Point("train", over, label=f"{tag}: PR 0, plain training", role="control",
                  why="the paper's PR-0 cell", **t1),
            Point("prune", over, pr=0.0, label=f"{tag}: PR 0 through the pipeline", role="control",
                  why="base, CCM and retraining without pruning: the pruned cells' extra training", **t1),
            *[Point("prune", over, pr=pr, label=f"{tag}: CCM+CHIP PR {pr:g}", role="test",
                    why="the paper's pruned cell", **t1) for pr in prs],
            Point("prune", over, pr=0.5, selection="random", label=f"{tag}: random channels PR 0.5", role="control",
                  why="the same counts, channels drawn at random", **t1)]


# --------------------------------------------------------------------------------------
# Fig. 6 (the higher the PR, the deeper): the rebuilt CCM + CHIP pruned net around its screened depth limit, the
# same C' from scratch at the same depths, and the pipeline's PR 0 (the trained backbone, unpruned).
# --------------------------------------------------------------------------------------

#: PR -> the rebuilt net's depth limit L' (the first I whose first Adam step is below 1e-5 in most of 3 seeds;
#: ``results/fig6_depth/screen_cpu.csv``, :func:`capslib.experiments.depth_screen.screen_pruned_depths`). PR 0 is
#: the pipeline without pruning: the CCM-trained CapsNet[20, 8] backbone with fresh ConvCaps. Per seed: PR 0.125 11, 11,
#: 9 (its C' = 17 from scratch 8, 8, 7); PR 0.25 13, 13, 11 (C' = 15: 9, 9, 9); PR 0.375 21, 23, 21 (C' = 12: 16, 15,
#: 13); PR 0 9, 9 in seeds 0 and 1 (the median whatever seed 2 gives).
FIG6_LIMITS: dict[float, int] = {0.125: 11, 0.25: 13, 0.375: 21, 0.0: 9}
#: PR -> the shallower depths added after the PR 0.25 and 0.375 prunes trained at none of L' − 1 .. L' + 1 in most
#: seeds (addendum 3 of ``results/fig6_depth/predictions.md``), the more decisive first.
FIG6_SHALLOW: dict[float, tuple[int, ...]] = {0.25: (11, 10), 0.375: (19, 18)}


def _fig6_depth(profile: str) -> list[Point]:
    """For each PR of :data:`FIG6_LIMITS` the prune at L' − 1, L', L' + 1 and its C' from scratch at the same
    depths (CapsNet[20, 8] base, ``cpu`` profile, one epoch per stage), most decisive first: every PR's pair at
    L' − 1 (the prune must train there; does its C' from scratch?), then the prunes at L' and L' + 1, then the
    scratch nets there, then the pipeline's PR 0, then the pairs at :data:`FIG6_SHALLOW`'s depths. The smoke
    miniature: CapsNet[8, 4], PR 0.25 and 0 at I = 1."""
    from .init_study import pruned_model_config

    small = _small(profile)
    C, D = (8, 4) if small else (20, 8)
    base = _cd(C, D, I=0)
    model = Point("train", base).config(profile).model
    fig6 = dict(claim="fig6")

    def pruned(pr: float, I: int) -> Point:
        if pr == 0:
            return Point("prune", base, pr=0.0, I_after=I, label=f"Fig. 6 PR 0: trained backbone, unpruned, I={I}",
                         role="control", why="the pipeline without pruning: the trained backbone alone", **fig6)
        Cp = pruned_model_config(model, pr).C
        return Point("prune", base, pr=pr, I_after=I, label=f"Fig. 6 PR {pr:g}: CCM+CHIP (C'={Cp}) I={I}",
                     role="test", why="the paper's pruned net at this depth", **fig6)

    def scratch(pr: float, I: int) -> Point:
        m = pruned_model_config(model, pr)
        return Point("train", _cd(m.C, D, I=I, backbone_widths=m.widths),
                     label=f"Fig. 6 PR {pr:g}: C'={m.C} from scratch I={I}", role="control",
                     why="the pruned architecture, fresh: does depth follow C'?", **fig6)

    if small:
        return [pruned(0.25, 1), scratch(0.25, 1), pruned(0.0, 1)]
    limits = FIG6_LIMITS
    prs = [pr for pr in limits if pr > 0]
    order = ([p for pr in prs for p in (pruned(pr, limits[pr] - 1), scratch(pr, limits[pr] - 1))]
             + [pruned(pr, limits[pr] + k) for k in (0, 1) for pr in prs]
             + [scratch(pr, limits[pr] + k) for k in (0, 1) for pr in prs]
             + [pruned(0.0, limits[0.0] + k) for k in (-1, 0, 1)]
             + [p for k in range(max(map(len, FIG6_SHALLOW.values()))) for pr, depths in FIG6_SHALLOW.items()
                if k < len(depths) for p in (pruned(pr, depths[k]), scratch(pr, depths[k]))])
    return order


def _study(name: str, title: str, grid_fn: Callable[[str], list[Point]], **kw: Any) -> Experiment:
    """A study of the rigorous verdicts: the ``cpu`` profile by default, unversioned keys (its rows stay done across
    library edits, so it can span sittings) and point-major order unless ``kw`` says otherwise."""
    return Experiment(name, title, grid_fn, **{"default_profile": "cpu", "versioned": False, "point_major": True, **kw})


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("table1", "Table 1: C/D configurations × pruning ratio (I = 0)", _table1),
    Experiment("table2", "Table 2: accuracy against IntermediateCaps depth I = 0..10", _table2),
    Experiment("table3", "Table 3: pruning rescues CapsNet[C=20, D=8] at I = 6, 7", _table3),
    Experiment("table4", "Table 4: backbone kernel size and stride", _table4),
    Experiment("table5", "Table 5: maximum depth without pruning (depth search)", _table5),
    Experiment("fig3", "Fig. 3: dead capsules over epochs, CapsNet[C=20, D=8, I=6]", _fig3),
    Experiment("seed002_depth", "Seed 002 Figs. 1-7: dynamic, EM, self- and VB routing at depth 1..10 "
                                "(accuracy, dead capsules, activations)", _seed002_depth),
    _study("collapse", "The decisive runs of the collapse study (CapsNet[20, 8] at its depth limit: from "
                       "scratch, float64, C'=15 pruned vs from scratch, a remedy)", _collapse),
    _study("collapse_h", "Hypothesis H factor by factor: single-factor init arms, a predicted failure and the "
                         "remedy at I = 30 (one epoch)", _collapse_h),
    _study("collapse_plateau", "The decisive points trained to a plateau (at most 10 epochs, patience 3), with "
                               "channel-selection controls of the rescue", _collapse_plateau,
           shared_stages=True),
    _study("remedies", "Going deep without pruning: each remedy (squash bias, Efficient-CapsNet squash, residual "
                       "ConvCaps) at I = 11, beside CCM + CHIP at PR 0.375 and its C' from scratch", _remedies),
    _study("remedies_deep", "Going deep without pruning: each remedy at I = 30", _remedies_deep),
    _study("table5_limits", "Table 5 at the cpu profile: each configuration at, below and beyond its screened "
                            "depth limit, and at std 0.3", _table5_limits),
    _study("seed002_dead", "Seed 002 at the cpu profile: dead capsules at initialisation and after training, "
                           "dynamic, self-, EM and VB routing at depth 1, 3 and 5", _seed002_dead),
    _study("table1_pr", "Table 1 on CapsNet[16, 6, 0] to a plateau: PR 0, 0.125, 0.25, 0.5, 0.75, the pipeline's PR "
                        "0 and random channels, 5 seeds paired", _table1_pr,
           point_major=False, shared_stages=True),
    _study("fig6_depth", "Fig. 6 at the cpu profile: the rebuilt CCM + CHIP pruned CapsNet[20, 8] at PR 0.125, 0.25, "
                         "0.375 around its screened depth limit, its C' from scratch and the unpruned trained "
                         "backbone at the same depths", _fig6_depth,
           shared_stages=True),
    _study("kernel_widths", "Seed 004: CapsNet[C, 8, 0] at three widths trained to a plateau, for kernel "
                            "similarity against width", _kernel_widths),
]}


def point_key(experiment: str, cfg: RunConfig, point: Point, versioned: Optional[bool] = None) -> str:
    """Identity of one grid point's run: experiment, config (seed included), point kind/PR/depth and the
    capslib version - without the version when ``versioned`` is False (None: the experiment's own
    :attr:`~capslib.experiments.grids.Experiment.versioned`, True for an unknown name), so a finished point of
    such an experiment stays done after library edits; its rows still record ``capslib_version``."""
    if versioned is None:
        exp = EXPERIMENTS.get(experiment)
        versioned = True if exp is None else exp.versioned
    version = f"|{capslib_version()}" if versioned else "|unversioned"
    blob = f"{experiment}|{cfg.config_hash()}|{point.key_extra()}{version}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def tag_rows(rows: list[dict[str, Any]], experiment: str, cfg: RunConfig, point: Point) -> list[dict[str, Any]]:
    """Mark the result rows of one grid point with its key, experiment, kind and grid coordinates."""
    key = point_key(experiment, cfg, point)
    for r in rows:
        r.update(point_key=key, experiment=experiment, kind=point.kind, pr=point.pr,
                 I_after="" if point.I_after is None else point.I_after, label=point.label,
                 **{"grid.C": cfg.model.C, "grid.D": cfg.model.D, "grid.I": cfg.model.I})
    return rows


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]
