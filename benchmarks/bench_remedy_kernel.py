"""Benchmark: the remedies on the fused routing kernel against their PyTorch path, side by side in one run.

    python benchmarks/bench_remedy_kernel.py [--batch 64] [--steps 5] [--json out.json] [--quick]

The routing layers of CapsNet[20, 8, 11] on 28 x 28 inputs (a 6 x 6 capsule grid): one ConvCaps(20 -> 20,
D 8; K = 9 x 20 children, J = 20 parents at each of 36 locations) and the ClassCaps (K = 6 x 6 x 20
children, 10 classes of 16 dims), 3 routing iterations, init std 0.5, random input capsules. One training
step of them = forward of ClassCaps(ConvCaps(u)) and backward of a random linear loss into the input and
every parameter (weights, and the biases of ``squash_bias``). Configurations:

* default (no remedy) on the fused kernel, and on the PyTorch path (the path the remedies took before
  the kernel implemented them);
* ``squash_bias=0.1`` on the fused kernel and on the PyTorch path;
* ``squash_fn="efficient"`` on the fused kernel and on the PyTorch path.

Time is CPU time of this process (``time.process_time``), one thread, per image (batch ``--batch``): the
configurations are timed in turns (one step of each, round after round, after a warm-up step each), so a
change in the machine's load touches them alike; the median of ``--steps`` rounds is reported. Read the
ratios: "x default" (to the default's fused time: the cost of the remedy in the kernel) and "PyTorch/fused"
(the speed-up the kernel gives the remedy). The ConvCaps column times one of the model's 11 ConvCaps layers;
"CapsNet[20,8,11] routing" = 11 x ConvCaps + ClassCaps. ``--quick``: batch 2, one round (a check of the
script, not a measurement).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

C, D, GRID, CLASSES, CLASS_D, LAYERS = 20, 8, 6, 10, 16, 11
#: name -> (layer keyword arguments, fused)
CONFIGS = {
    "default, fused": ({}, True),
    "default, PyTorch": ({}, False),
    "squash_bias, fused": (dict(squash_bias=0.1), True),
    "squash_bias, PyTorch": (dict(squash_bias=0.1), False),
    "efficient, fused": (dict(squash_fn="efficient"), True),
    "efficient, PyTorch": (dict(squash_fn="efficient"), False),
}


def _layers(kw: dict, fused: bool):
    import torch

    from capslib.engine.capsules import ClassCaps, ConvCaps

    torch.manual_seed(0)
    conv = ConvCaps(C, D, C, D, init_std=0.5, **kw)
    cls = ClassCaps(GRID * GRID * C, D, CLASSES, CLASS_D, init_std=0.5, **kw)
    conv.fused = cls.fused = fused
    return conv, cls


def _step(layer, x, g) -> float:
    """CPU seconds of forward + backward of ``layer`` on ``x`` (gradient ``g`` of the output)."""
    import torch

    t = time.process_time()
    x = x.detach().requires_grad_()
    y = layer(x)
    torch.autograd.backward(y, g)
    return time.process_time() - t


def measure(batch: int, steps: int) -> dict[str, dict[str, list[float]]]:
    """config -> {"conv": [s, ...], "class": [s, ...]}: CPU seconds per step, one thread, in turns."""
    import torch

    from capslib.engine import fused_routing

    if not fused_routing.available():
        raise SystemExit(f"the fused kernel is unavailable: {fused_routing.status()}")
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(batch, GRID, GRID, C, D, generator=gen) * 0.5
    g_conv = torch.randn(batch, GRID, GRID, C, D, generator=gen)
    g_cls = torch.randn(batch, CLASSES, CLASS_D, generator=gen)
    jobs = {name: _layers(kw, fused) for name, (kw, fused) in CONFIGS.items()}
    with torch.no_grad():  # ClassCaps' input: the ConvCaps output (default config) of the same capsules
        u_cls = jobs["default, fused"][0](u)
    times = {name: {"conv": [], "class": []} for name in jobs}
    for r in range(1 + steps):  # round 0: warm-up
        for name, (conv, cls) in jobs.items():
            tc, tk = _step(conv, u, g_conv), _step(cls, u_cls, g_cls)
            if r:
                times[name]["conv"].append(tc)
                times[name]["class"].append(tk)
    return times


def table(times: dict, batch: int) -> list[dict]:
    """One row per config: ms per image (median) of ConvCaps, ClassCaps, and CapsNet[20, 8, 11]'s routing
    (11 ConvCaps + ClassCaps); its ratio to the default's fused time and PyTorch/fused for its remedy."""
    rows = {}
    for name, t in times.items():
        conv, cls = (1e3 * statistics.median(t[k]) / batch for k in ("conv", "class"))
        rows[name] = dict(config=name, conv_ms=conv, class_ms=cls, step_ms=conv + cls, model_ms=LAYERS * conv + cls)
    base = rows["default, fused"]
    for name, row in rows.items():
        fused = rows[name.replace("PyTorch", "fused")]
        row["x_default"] = {k: row[k] / base[k] for k in ("conv_ms", "class_ms", "model_ms")}
        row["pytorch_over_fused"] = {k: row[k] / fused[k] for k in ("conv_ms", "class_ms", "model_ms")}
    return list(rows.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed rounds (after one warm-up round)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="batch 2, one round: a check of the script")
    a = ap.parse_args(argv)
    batch, steps = (2, 1) if a.quick else (a.batch, a.steps)
    import torch

    from capslib.engine import fused_routing

    t0 = time.perf_counter()
    rows = table(measure(batch, steps), batch)
    wall = time.perf_counter() - t0
    print(f"CapsNet[{C}, {D}, {LAYERS}] routing layers, batch {batch}, one thread, time.process_time, median of "
          f"{steps} round(s) after a warm-up{' (QUICK: not a measurement)' if a.quick else ''}")
    print(f"ms per image, forward + backward; kernel {fused_routing.kernel_path().name} "
          f"({fused_routing.build_target()}), torch {torch.__version__}\n")
    print(f"{'config':22s} {'ConvCaps':>9s} {'ClassCaps':>9s} {'11 Conv+Class':>13s} {'x default':>10s} "
          f"{'PyTorch/fused':>14s}  (per layer: ConvCaps, ClassCaps)")
    for r in rows:
        pf = r["pytorch_over_fused"]
        ratio = ""
        if "PyTorch" in r["config"]:
            ratio = f"{pf['model_ms']:13.2f}x  ({pf['conv_ms']:.2f}x, {pf['class_ms']:.2f}x)"
        print(f"{r['config']:22s} {r['conv_ms']:9.2f} {r['class_ms']:9.2f} {r['model_ms']:13.1f} "
              f"{r['x_default']['model_ms']:9.2f}x {ratio}".rstrip())
    print("\nx default: to the default's fused time; PyTorch/fused: to the same remedy's fused time (11 ConvCaps +"
          " ClassCaps)")
    print(f"wall time {wall:.0f} s")
    if a.json:
        a.json.write_text(json.dumps(dict(batch=batch, steps=steps, threads=1, timing="time.process_time",
                                          kernel=str(fused_routing.kernel_path()), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
