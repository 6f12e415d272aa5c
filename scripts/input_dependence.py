"""How much the class capsules depend on the input at initialisation, for every from-scratch point of
the given experiments: on the first training batch of seed 0's run (the run's own split, batch size and
shuffle; the model ``fit`` builds), the std over the batch's images of each class capsule's length divided
by its mean, averaged over the classes. 0 means every image gets the same output: lengths that a bias or
saturation keeps away from 0 can still carry nothing of the input.

    python scripts/input_dependence.py collapse collapse_h remedies remedies_deep \
        --out results/remedies/input_dependence_cpu.csv
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd
import torch

from capslib.engine.data import load_splits
from capslib.engine.provenance import provenance
from capslib.experiments.grids import get_experiment
from capslib.experiments.init_study import build_model


def input_spread(lengths: torch.Tensor) -> float:
    """Mean over classes of std/mean over images of the class lengths (B, N); 0 for all-zero lengths."""
    L = lengths.double()
    return float((L.std(0) / L.mean(0).clamp_min(1e-300)).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiments", nargs="+")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for exp in args.experiments:
        for point in get_experiment(exp).grid(args.profile):
            if point.kind != "train":
                continue
            cfg = point.config(args.profile, 0)
            x, _ = next(iter(load_splits(cfg.data).batches("train", cfg.train.batch_size, shuffle=True,
                                                           seed=cfg.train.seed, epoch=0)))
            with torch.no_grad():
                out = build_model(cfg.model, cfg.train.seed, cfg.train.dtype).train()(x)
            rows.append(dict(experiment=exp, label=point.label, config_hash=cfg.config_hash(), seed=cfg.train.seed,
                             dtype=cfg.train.dtype, class_mean=float(out.lengths.double().mean()),
                             input_spread=input_spread(out.lengths), **provenance(torch.device("cpu"))))
            print(f"{point.label}: class length mean {rows[-1]['class_mean']:.3g}, "
                  f"relative spread over images {rows[-1]['input_spread']:.3g}", flush=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
