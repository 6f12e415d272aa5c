"""Cost of seed 002's depth study per routing and depth, measured before sizing its grid.

    python benchmarks/bench_seed002.py [--depths 1 3 5] [--steps 2] [--batch 64] [--out results/seed002_depth/bench_cpu.csv]

For every routing of :data:`capslib.experiments.grids.STUDY_ROUTINGS` (dynamic, EM, self, VB) and depth, the model
of the ``seed002_depth`` grid at a non-smoke profile (16 capsule types, 4×4 poses, ``depth`` ConvCaps layers) is
built and one training step (forward, margin loss, backward, Adam step) on a batch of real Fashion-MNIST images
is timed ``steps`` times after one warm-up step, one configuration after another in one run. It prints ms per
image, the projected CPU-minutes of one epoch of 3,000 images (the ``cpu`` profile's training split, plus its
validation and test passes at a third of a step's cost per image) and the peak resident memory growth. A
configuration that fails (memory) is recorded with its error. Timings are of this machine under its load at the
time: read the ratios between routings, not the absolute numbers.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from capslib.engine.data import load_splits  # noqa: E402
from capslib.engine.losses import margin_loss  # noqa: E402
from capslib.engine.model import CapsNet  # noqa: E402
from capslib.engine.provenance import provenance  # noqa: E402
from capslib.engine.routing import routing_dtype  # noqa: E402
from capslib.experiments.grids import STUDY_ROUTINGS, seed002_point  # noqa: E402

TRAIN, EVAL = 3000, 1500  # the cpu profile's training images and its validation + test images


def time_step(model: CapsNet, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Median seconds of one training step over ``steps`` timed steps after one warm-up."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = margin_loss(routing_dtype(model(x).lengths), y)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--routings", nargs="+", default=list(STUDY_ROUTINGS))
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = []
    for routing in args.routings:
        for depth in args.depths:
            cfg = seed002_point(routing, depth, args.profile).config(args.profile, 0)
            data = load_splits(cfg.data)
            x, y = next(data.batches("train", args.batch, shuffle=True, seed=0))
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            row = dict(routing=routing, I=depth, C=cfg.model.C, D=cfg.model.D, batch=args.batch)
            try:
                torch.manual_seed(0)
                sec = time_step(CapsNet(cfg.model).train(), x, y, args.steps)
                per_img = sec / args.batch
                row.update(ms_per_img=round(1000 * per_img, 2),
                           cpu_min_per_epoch=round((TRAIN + EVAL / 3) * per_img / 60, 1), error="")
            except (RuntimeError, MemoryError) as err:
                row.update(ms_per_img=float("nan"), cpu_min_per_epoch=float("nan"), error=str(err).splitlines()[0])
            row["peak_rss_growth_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
            rows.append(row)
            print(row, flush=True)
    df = pd.DataFrame(rows)
    base = df[df["routing"] == "dynamic"].set_index("I")["ms_per_img"]
    df["× dynamic"] = [round(r.ms_per_img / base.get(r.I, float("nan")), 2) for r in df.itertuples()]
    prov = provenance(torch.device("cpu"))
    df["machine"] = prov.get("device_name", "")
    df["threads"] = torch.get_num_threads()
    print(df.to_string(index=False))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
