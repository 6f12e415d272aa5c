"""Depth limits at initialisation for every configuration of the paper's Tables 2, 3, 5 and Figs. 3, 6.

For each (preset, C, D, PR, dtype, seed, batch) the script finds, with
:func:`capslib.experiments.init_study.depth_limit`, the first number of IntermediateCaps I at which the class
capsule lengths of a batch of 32 real Fashion-MNIST test images are exactly zero at initialisation
(BatchNorm in training mode), beside the limit the length recurrence predicts
(:func:`capslib.experiments.init_study.predicted_limit`) and the paper's maximum depth. For seed 0 / batch 0 it also
runs one backward at the limit and one just below it (the max |gradient| on the PrimaryCaps conv and
the first ConvCaps).

Rows are appended to ``results/depth_limits/fmnist.csv`` as each finishes, with provenance; rows already
there are skipped, so the script resumes where it stopped. CIFAR-10, the paper's dataset, is not
available on these machines: every row is Fashion-MNIST 28×28 (a 6×6 capsule grid instead of 7×7).

    OMP_NUM_THREADS=1 nohup .venv/bin/python scripts/depth_limits.py > /tmp/depth_limits.log 2>&1 &
    python scripts/depth_limits.py --table      # print the summary table (markdown) and exit

Pruned configs (Table 3, Fig. 6): C' and the backbone widths after a prune at ratio PR, by the preset's
prune-count rule (default: the paper's round-up, C = 20, D = 8 -> C' = 17 / 15 / 12 at PR 0.125 / 0.25 /
0.375; authors: their round-down, C' = 18 / 15 / 13), every layer freshly initialised
(:func:`capslib.experiments.init_study.pruned_model_config`). The paper's pruned models keep the trained backbone and
PrimaryCaps; an initialisation screen cannot see that.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from capslib.engine.config import PRESETS, ModelConfig  # noqa: E402
from capslib.experiments.init_study import (depth_limit, eval_batches, gradient_at, predicted_limit,  # noqa: E402
                                            primary_m2_maps, pruned_model_config)
from capslib.engine.provenance import provenance  # noqa: E402

OUT = ROOT / "results" / "depth_limits" / "fmnist.csv"

#: (C, D, PR) -> (paper's maximum trainable I as text, where it is from). ">=10": Table 2 trains at I = 10.
PAPER = {
    (20, 8, 0.0): ("6", "Table 2 (10% from I=7), Table 5, Fig. 3/6"),
    (10, 8, 0.0): (">30", "Table 5 (Table 2: trains to I=10)"),
    (16, 12, 0.0): (">=10", "Table 2"),
    (8, 12, 0.0): (">=10", "Table 2"),
    (20, 10, 0.0): ("8", "Table 5"),
    (20, 6, 0.0): ("4", "Table 5"),
    (16, 6, 0.0): ("5", "Table 5"),
    (10, 6, 0.0): ("7", "Table 5"),
    (20, 8, 0.125): ("7", "Fig. 6 (Table 3: trains at I=7)"),
    (20, 8, 0.25): ("9", "Fig. 6 (Table 3: trains at I=7)"),
    (20, 8, 0.375): ("12", "Fig. 6 (Table 3: trains at I=7)"),
}
#: Deepest model screened per config: 32 where the paper reports > 30, else 16.
I_MAX = {(10, 8, 0.0): 32}
PRESET_NAMES = ("default", "authors")
DTYPES = ("float32", "float64")
SEEDS = range(5)
BATCHES = range(2)
BATCH_SIZE = 32

COLUMNS = [
    "preset", "C", "D", "pr", "dtype", "seed", "batch", "C_eff", "backbone_widths", "prune_rule", "init_std",
    "class_std", "squash_eps", "capsule_layout", "convcaps_layout", "I_max", "limit", "max_depth",
    "first_zero_layer", "predicted_limit", "paper_max_I", "paper_source", "class_max", "layer_mean",
    "grad_I", "grad_primary", "grad_inter1", "grad_below_I", "grad_below_primary", "grad_below_inter1",
    "dataset", "batch_size", "wall_s", "time", "capslib_version", "git_sha", "git_dirty", "torch_version",
    "device_name", "threads",
]


def key_of(row: dict) -> tuple:
    return (row["preset"], int(row["C"]), int(row["D"]), float(row["pr"]), row["dtype"], int(row["seed"]),
            int(row["batch"]))


def done_keys(path: Path) -> set:
    if not path.exists():
        return set()
    with open(path, newline="") as f:
        return {key_of(r) for r in csv.DictReader(f)}


def append_row(path: Path, row: dict) -> None:
    """Append one row (header first for a new file), flushed and fsynced: a killed run loses at most it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def model_config(preset: str, C: int, D: int, pr: float) -> ModelConfig:
    cfg = ModelConfig(C=C, D=D, I=0).replace(**PRESETS[preset]["model"])
    return pruned_model_config(cfg, pr) if pr > 0 else cfg


def jobs():
    """Priority order: float32 before float64, batch 0 before 1, then preset, config, seed."""
    for dtype in DTYPES:
        for batch in BATCHES:
            for preset in PRESET_NAMES:
                for (C, D, pr) in PAPER:
                    for seed in SEEDS:
                        yield preset, C, D, pr, dtype, seed, batch


def run(path: Path, grad_check: bool = True) -> None:
    torch.set_num_threads(1)
    prov = provenance(torch.device("cpu"))
    data = eval_batches(len(BATCHES), BATCH_SIZE)
    done = done_keys(path)
    for preset, C, D, pr, dtype, seed, batch in jobs():
        key = (preset, C, D, float(pr), dtype, seed, batch)
        if key in done:
            continue
        t0 = time.perf_counter()
        cfg = model_config(preset, C, D, pr)
        x, y = data[batch]
        i_max = I_MAX.get((C, D, pr), 16)
        res = depth_limit(cfg, x, seed=seed, dtype=dtype, I_max=i_max)
        pred = predicted_limit(cfg, primary_m2_maps(cfg, x, seed, dtype), dtype, i_max)
        g, gb = {}, {}
        if grad_check and seed == 0 and batch == 0 and res.limit is not None:
            g = gradient_at(cfg, x, y, res.limit, seed, dtype)
            if res.limit > 0:
                gb = gradient_at(cfg, x, y, res.limit - 1, seed, dtype)
        paper, source = PAPER[(C, D, pr)]
        row = {
            "preset": preset, "C": C, "D": D, "pr": pr, "dtype": dtype, "seed": seed, "batch": batch,
            "C_eff": cfg.C, "backbone_widths": json.dumps(list(cfg.widths)), "prune_rule": cfg.prune_rule,
            "init_std": cfg.init_std, "class_std": cfg.class_std, "squash_eps": cfg.squash_eps,
            "capsule_layout": cfg.capsule_layout, "convcaps_layout": cfg.convcaps_layout, "I_max": i_max,
            "limit": "" if res.limit is None else res.limit,
            "max_depth": f">={i_max}" if res.limit is None else res.limit - 1,
            "first_zero_layer": "" if res.first_zero_layer is None else res.first_zero_layer,
            "predicted_limit": "" if pred is None else pred, "paper_max_I": paper, "paper_source": source,
            "class_max": json.dumps([float(f"{v:.3e}") for v in res.class_max]),
            "layer_mean": json.dumps([float(f"{v:.3e}") for v in res.layer_mean]),
            "grad_I": g.get("I", ""), "grad_primary": g.get("primary", ""), "grad_inter1": g.get("inter1", ""),
            "grad_below_I": gb.get("I", ""), "grad_below_primary": gb.get("primary", ""),
            "grad_below_inter1": gb.get("inter1", ""),
            "dataset": "fashion-mnist test", "batch_size": BATCH_SIZE, "wall_s": round(time.perf_counter() - t0, 2),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "capslib_version": prov["capslib_version"],
            "git_sha": prov["git_sha"], "git_dirty": prov["git_dirty"], "torch_version": prov["torch_version"],
            "device_name": prov["device_name"], "threads": torch.get_num_threads(),
        }
        append_row(path, row)
        print(f"{preset:8s} C{C:<2d} D{D:<2d} PR{pr:<5g} C'={cfg.C:<2d} {dtype} seed {seed} batch {batch}: "
              f"limit {row['limit'] or '>' + str(i_max)} (predicted {row['predicted_limit'] or '-'}; paper max "
              f"{paper}) {row['wall_s']}s", flush=True)


def table(path: Path) -> str:
    """Markdown summary: per (preset, config, dtype) the limits over seeds × batches beside the paper."""
    import pandas as pd

    df = pd.read_csv(path)
    out = ["| preset | C | D | PR | C' | dtype | runs | limit (first dead I): min-max | median | "
           "max trainable I (median) | predicted (median) | paper max I |", "|" + "---|" * 12]
    for (preset, C, D, pr, dtype), g in df.groupby(["preset", "C", "D", "pr", "dtype"], sort=False):
        lim = g["limit"].fillna(g["I_max"] + 1)  # alive to I_max: shown as > I_max
        fmt = lambda v, m=int(g["I_max"].iloc[0]): f">{m}" if v > m else str(int(v))  # noqa: E731
        pred = g["predicted_limit"].fillna(g["I_max"] + 1)
        out.append(f"| {preset} | {C} | {D} | {pr:g} | {int(g['C_eff'].iloc[0])} | {dtype} | {len(g)} | "
                   f"{fmt(lim.min())}-{fmt(lim.max())} | {fmt(lim.median())} | "
                   f"{fmt(lim.median() - 1) if lim.median() <= g['I_max'].iloc[0] else '>=' + str(int(g['I_max'].iloc[0]))} | "
                   f"{fmt(pred.median())} | {g['paper_max_I'].iloc[0]} |")
    return "\n".join(out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--table", action="store_true", help="print the markdown summary of the CSV and exit")
    p.add_argument("--no-grad", action="store_true", help="skip the gradient checks")
    a = p.parse_args()
    if a.table:
        print(table(a.out))
    else:
        run(a.out, grad_check=not a.no_grad)
