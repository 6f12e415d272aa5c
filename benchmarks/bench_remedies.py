"""Benchmark: what each remedy for deep CapsNets costs per training image, side by side in one run.

    python benchmarks/bench_remedies.py [--steps 2] [--out results/remedies/bench_cpu.csv] [--quick]

One training step (forward, margin loss, backward, Adam step) of CapsNet[20, 8, 11] under the ``cpu``
profile (the remedies study's model and budget: batch 64 of real Fashion-MNIST training images, Adam at
the profile's lr, one thread) for five configurations that differ in one place each:

* no remedy: the authors' std 0.5 everywhere (the collapse study's baseline);
* the length-map init: ConvCaps std 0.6, class capsules std 0.1 (the collapse study's remedy);
* each remedy of :data:`capslib.experiments.grids.REMEDIES` (squash bias 0.1, Efficient-CapsNet squash,
  residual ConvCaps), alone on the std-0.5 model.

Time is CPU time of this process (``time.process_time``) with one thread, so other programs sharing the
CPUs slow the wall clock more than this measure; the configs are still timed in turns (one step of each,
round after round, after a warm-up step each), so a change in load touches them alike, and the ratios
to the no-remedy config are what to read. The ``routing`` column says whether a config routed on the
fused kernel (:mod:`capslib.engine.fused_routing`) or on PyTorch's slower path. A run during which capslib's
sources change is refused (its version stamp would not name the timed code). ``--quick`` (tests):
CapsNet[6, 4, 2] on 8 random images, one timed step.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "results" / "remedies" / "bench_cpu.csv"
#: The configuration every ratio is taken to.
BASELINE = "no remedy (std 0.5)"


def configs(C: int = 20, D: int = 8, I: int = 11) -> dict:
    """Name -> ModelConfig of CapsNet[C, D, I] under the ``cpu`` profile, one change each: no remedy,
    the length-map init (the collapse study's remedy stds) and every remedy of ``grids.REMEDIES``."""
    from capslib.engine.config import profile
    from capslib.experiments.grids import COLLAPSE, REMEDIES

    base = profile("cpu").model.replace(C=C, D=D, I=I, init_std=COLLAPSE["std"])
    out = {BASELINE: base,
           f"length-map init (std {COLLAPSE['remedy_std']:g}, class std {COLLAPSE['remedy_class_std']:g})":
               base.replace(init_std=COLLAPSE["remedy_std"], class_init_std=COLLAPSE["remedy_class_std"])}
    out.update({name: base.replace(**over) for name, over, _ in REMEDIES})
    return out


def _batch(batch: int, random_images: bool):
    """The first ``batch`` training images of the cpu profile's first shuffled epoch (seed 0), or random
    images of the same shape (quick mode: no dataset needed)."""
    import torch

    if random_images:
        g = torch.Generator().manual_seed(0)
        return torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)
    from capslib.engine.config import profile
    from capslib.engine.data import load_splits

    return next(iter(load_splits(profile("cpu").data).batches("train", batch, shuffle=True, seed=0, epoch=0)))


def _routing_path(model) -> str:
    """"fused kernel" when every capsule layer routes on it, else "PyTorch" (a layer's ``kernel_lacks``
    names what the kernel does not implement: squash bias, the Efficient-CapsNet squash)."""
    from capslib.engine import fused_routing

    lacks = [m.kernel_lacks for m in model.modules() if hasattr(m, "kernel_lacks")]
    return "PyTorch" if any(lacks) or not fused_routing.available() else "fused kernel"


def measure(cfgs: dict, x, y, steps: int, warmup: int = 1, lr: float = 1e-3) -> dict[str, list[float]]:
    """CPU seconds per training step of each config, the configs timed in turns: ``warmup`` untimed steps
    each, then ``steps`` rounds of one timed step per config. One thread."""
    import torch

    from capslib.engine.losses import margin_loss
    from capslib.engine.model import CapsNet

    torch.set_num_threads(1)
    jobs = {}
    for name, mcfg in cfgs.items():
        torch.manual_seed(0)
        model = CapsNet(mcfg).train()
        jobs[name] = (model, torch.optim.Adam(model.parameters(), lr=lr))

    def step(model, opt) -> float:
        t = time.process_time()
        opt.zero_grad()
        margin_loss(model(x).lengths, y).backward()
        opt.step()
        return time.process_time() - t

    for _ in range(warmup):
        for model, opt in jobs.values():
            step(model, opt)
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(steps):
        for name, (model, opt) in jobs.items():
            times[name].append(step(model, opt))
    return times


def rows(cfgs: dict, times: dict[str, list[float]], batch: int, note: str, version: str) -> list[dict]:
    """One CSV row per config: ms per training image (median, min, max over the timed steps), the ratio of
    the median to :data:`BASELINE`'s, the routing path, and the machine (CPU model, torch, ``version`` of
    capslib: the sources the timed code was imported from)."""
    import torch

    from capslib.engine.model import CapsNet
    from capslib.engine.provenance import _cpu_name, numerics_info

    ms = {name: [1e3 * t / batch for t in ts] for name, ts in times.items()}
    base = statistics.median(ms[BASELINE]) if BASELINE in ms else float("nan")
    num = numerics_info()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z")
    out = []
    for name, mcfg in cfgs.items():
        med = statistics.median(ms[name])
        out.append(dict(config=name, C=mcfg.C, D=mcfg.D, I=mcfg.I, init_std=mcfg.init_std, class_std=mcfg.class_std,
                        squash_bias=mcfg.squash_bias, squash_fn=mcfg.squash_fn, residual=mcfg.residual,
                        routing=_routing_path(CapsNet(mcfg)), batch=batch, steps=len(ms[name]),
                        ms_per_img=round(med, 3), ms_per_img_min=round(min(ms[name]), 3),
                        ms_per_img_max=round(max(ms[name]), 3), ratio=round(med / base, 3),
                        timing="time.process_time, one thread, forward + backward + Adam step",
                        cpu=_cpu_name(), cpu_isa=num["cpu_isa"], kernel_march=num["kernel_march"],
                        torch_version=torch.__version__, capslib_version=version, timestamp=stamp,
                        note=note))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per config (after one warm-up step)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--note", default="", help="a remark stored in every row (e.g. what else ran on the CPUs)")
    ap.add_argument("--quick", action="store_true", help="CapsNet[6, 4, 2], 8 random images, one timed step")
    a = ap.parse_args(argv)
    if a.quick:
        cfgs, batch, steps = configs(6, 4, 2), 8, 1
    else:
        cfgs, batch, steps = configs(), a.batch, a.steps
    from capslib.engine import provenance

    version = provenance.capslib_version()  # the sources imported now are the ones timed
    x, y = _batch(batch, random_images=a.quick)
    times = measure(cfgs, x, y, steps)
    provenance.source_fingerprint.cache_clear()
    if provenance.capslib_version() != version:
        raise SystemExit(f"capslib's sources changed while the benchmark ran ({version} -> "
                         f"{provenance.capslib_version()}): run it again")
    table = pd.DataFrame(rows(cfgs, times, batch, a.note, version))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(a.out, index=False)
    shown = ["config", "routing", "ms_per_img", "ms_per_img_min", "ms_per_img_max", "ratio"]
    print(table[shown].to_string(index=False))
    print(f"\n{table['cpu'].iloc[0]}, torch {table['torch_version'].iloc[0]}, capslib "
          f"{table['capslib_version'].iloc[0]}; written to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
